"""The database component and its unit of work, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError
from structlog.testing import capture_logs

from core.data.database import Database
from core.data.migrate import require_current
from core.data.revisions import CORE_MIGRATIONS, at_heads
from core.data.transaction import Transaction
from core.errors import DeadlineExceededError, NotFoundError, UnavailableError
from core.runtime.container import StartError
from core.runtime.health import HealthState
from core.runtime.lifecycle import FatalStartError
from servers.projects import MIGRATIONS
from tests.conftest import make_container

Work = Callable[[Transaction], Awaitable[None]]

counters = sa.Table(
    "counters",
    sa.MetaData(),
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("value", sa.Integer, nullable=False),
)


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    database = Database(database_url, migrations=[CORE_MIGRATIONS, MIGRATIONS], migrate=True)
    await database.start()
    async with database.engine.begin() as conn:
        await conn.run_sync(counters.metadata.create_all)
        await conn.execute(counters.insert(), [{"id": 1, "value": 0}])
    try:
        yield database
    finally:
        await database.stop()


async def _value(db: Database) -> int:
    async with db.engine.connect() as conn:
        return int((await conn.execute(sa.select(counters.c.value))).scalar_one())


async def test_commit_keeps_the_work_and_runs_hooks(db: Database) -> None:
    ran: list[str] = []
    async with db.transaction() as tx:
        await tx.conn.execute(counters.update().values(value=1))
        tx.after_commit(lambda: ran.append("sync"))

        async def async_hook() -> None:
            ran.append("async")

        tx.after_commit(async_hook)
        assert ran == []  # not before the commit
    assert ran == ["sync", "async"]
    assert await _value(db) == 1


async def test_an_error_rolls_back_and_skips_hooks(db: Database) -> None:
    ran: list[str] = []

    async def fail_after_writing() -> None:
        async with db.transaction() as tx:
            await tx.conn.execute(counters.update().values(value=5))
            tx.after_commit(lambda: ran.append("hook"))
            raise NotFoundError("nope")

    with pytest.raises(NotFoundError):
        await fail_after_writing()
    assert ran == []
    assert await _value(db) == 0


async def test_a_failing_hook_does_not_undo_the_commit(db: Database) -> None:
    def broken() -> None:
        raise RuntimeError("cache down")

    async with db.transaction() as tx:
        await tx.conn.execute(counters.update().values(value=2))
        tx.after_commit(broken)
    assert await _value(db) == 2


async def test_the_timeout_rolls_back(db: Database) -> None:
    async def write_slowly() -> None:
        async with db.transaction(timeout=0.1) as tx:
            await tx.conn.execute(counters.update().values(value=9))
            await asyncio.sleep(1)

    with pytest.raises(DeadlineExceededError) as caught:
        await write_slowly()
    assert caught.value.reason == "DATABASE_TIMEOUT"
    assert await _value(db) == 0


async def test_concurrent_serializable_increments_are_retried_not_lost(db: Database) -> None:
    async def increment(tx: Transaction) -> None:
        value = (await tx.conn.execute(sa.select(counters.c.value))).scalar_one()
        await asyncio.sleep(0.01)  # widen the window in which the transactions overlap
        await tx.conn.execute(counters.update().values(value=value + 1))

    await asyncio.gather(
        *(db.run(increment, isolation="SERIALIZABLE", attempts=20) for _ in range(5))
    )
    assert await _value(db) == 5


def _conflicting(db: Database, conflicts: int) -> tuple[list[int], Work]:
    """An increment that another writer overtakes in its first `conflicts` tries."""
    tries: list[int] = []

    async def increment(tx: Transaction) -> None:
        tries.append(len(tries) + 1)
        value = (await tx.conn.execute(sa.select(counters.c.value))).scalar_one()
        if len(tries) <= conflicts:  # committed after our read: we cannot serialize
            async with db.transaction() as other:
                await other.conn.execute(counters.update().values(value=counters.c.value + 10))
        await tx.conn.execute(counters.update().values(value=value + 1))

    return tries, increment


async def test_a_serialization_failure_is_retried_and_logged(db: Database) -> None:
    if db.dialect != "postgresql":
        pytest.skip("SQLite takes the write lock at BEGIN: its writers never conflict")
    tries, increment = _conflicting(db, conflicts=1)

    with capture_logs() as logs:
        await db.run(increment, isolation="SERIALIZABLE")

    assert tries == [1, 2]
    assert await _value(db) == 11
    scheduled = [e for e in logs if e["event"] == "retry.scheduled"]
    assert [(e["operation"], e["attempt"]) for e in scheduled] == [("database.transaction", 1)]


async def test_a_conflict_on_every_try_is_unavailable_with_the_driver_error_as_cause(
    db: Database,
) -> None:
    if db.dialect != "postgresql":
        pytest.skip("SQLite takes the write lock at BEGIN: its writers never conflict")
    tries, increment = _conflicting(db, conflicts=99)

    with pytest.raises(UnavailableError) as raised:
        await db.run(increment, isolation="SERIALIZABLE", attempts=2)

    assert raised.value.reason == "TRANSACTION_CONFLICT"
    assert isinstance(raised.value.__cause__, DBAPIError)
    assert tries == [1, 2]
    assert await _value(db) == 20


async def test_health_details_name_the_pool_figures(database_url: str) -> None:
    database = Database(database_url, pool_size=3)
    await database.start()
    try:
        async with database.connect():
            health = await database.check_health()
    finally:
        await database.stop()
    assert health.state is HealthState.HEALTHY
    assert health.details["checked_out"] == "1"  # the one held above; the check's is back
    assert health.details["waiting"] == "0"
    if database_url.startswith("postgresql"):
        assert health.details["size"] == "3"
        assert health.details["open"] == "2"  # the one held and the check's own
        assert health.details["overflow"] == "0"
    assert not any("Current Overflow" in value for value in health.details.values())


async def test_health_is_unhealthy_when_the_database_is_gone(database_url: str) -> None:
    if not database_url.startswith("postgresql"):
        pytest.skip("dropping a live SQLite file does not make it unreachable")
    database = Database(database_url)
    await database.start()
    try:
        assert (await database.check_health()).state is HealthState.HEALTHY
        admin = Database(database_url.rsplit("/", 1)[0] + "/test")
        await admin.start()
        name = database_url.rsplit("/", 1)[1]
        async with admin.engine.connect() as conn:
            await conn.execution_options(isolation_level="AUTOCOMMIT")
            await conn.execute(sa.text(f'DROP DATABASE "{name}" WITH (FORCE)'))
        await admin.stop()
        health = await database.check_health()
        assert health.state is HealthState.UNHEALTHY
        assert health.reason.startswith("database unreachable")
    finally:
        await database.stop()


async def test_an_unmigrated_shared_database_stops_the_start_naming_the_fix(
    database_url: str,
) -> None:
    database = Database(database_url, migrations=[CORE_MIGRATIONS, MIGRATIONS], migrate=False)
    container = make_container(database)
    with pytest.raises(StartError, match="mesh db upgrade"):
        await container.start()


async def test_migrations_run_once_and_are_idempotent(database_url: str) -> None:
    for _ in range(2):
        database = Database(database_url, migrations=[CORE_MIGRATIONS, MIGRATIONS], migrate=True)
        await database.start()
        await database.stop()
    checked = Database(database_url, migrations=[CORE_MIGRATIONS, MIGRATIONS], migrate=False)
    await checked.start()  # the schema is current: no error
    await checked.stop()


# core_0002 and core_0003 undone: projects' head (its branch depends on core_0001) is then
# the only row.
BACK_TO_CORE_0001 = "delete from alembic_version where version_num = 'core_0003'"
# core_0003 (the audit log) undone.
BACK_TO_CORE_0002 = (
    "update alembic_version set version_num = 'core_0002' where version_num = 'core_0003'"
)


async def test_the_schema_check_without_alembic_agrees_with_alembic(database_url: str) -> None:
    folders = [CORE_MIGRATIONS, MIGRATIONS]
    database = Database(database_url, migrations=folders, migrate=True)
    await database.start()
    try:
        assert await at_heads(database.engine, folders)
        await require_current(database.engine, folders)  # Alembic says the same
        async with database.engine.begin() as conn:  # as if the last core revision were new
            await conn.execute(sa.text(BACK_TO_CORE_0002))
        assert not await at_heads(database.engine, folders)
        with pytest.raises(FatalStartError, match="mesh db upgrade"):
            await require_current(database.engine, folders)
    finally:
        await database.stop()


async def test_a_database_behind_a_revision_is_upgraded_at_start(database_url: str) -> None:
    database = Database(database_url, migrations=[CORE_MIGRATIONS, MIGRATIONS], migrate=True)
    await database.start()
    async with database.engine.begin() as conn:  # back to before core_0002 (the events tables)
        for table in (
            "mesh_audit_records",
            "mesh_leases",
            "mesh_event_deliveries",
            "mesh_event_groups",
            "mesh_events",
        ):
            await conn.execute(sa.text(f"drop table {table}"))
        await conn.execute(sa.text(BACK_TO_CORE_0001))
    await database.stop()
    await database.start()
    try:
        assert await at_heads(database.engine, [CORE_MIGRATIONS, MIGRATIONS])
        async with database.engine.connect() as conn:
            await conn.execute(sa.text("select count(*) from mesh_events"))
    finally:
        await database.stop()


async def test_sqlite_commits_reach_the_database_file_in_the_background(tmp_path: Path) -> None:
    path = tmp_path / "mesh.db"
    database = Database(f"sqlite+aiosqlite:///{path}")
    await database.start()
    try:
        async with database.engine.begin() as conn:
            await conn.run_sync(counters.metadata.create_all)
            await conn.execute(counters.insert(), [{"id": i, "value": i} for i in range(10)])
        await asyncio.sleep(0.6)  # far below the autocheckpoint threshold: only ours ran
        shutil.copy(path, tmp_path / "alone.db")  # the database file, without its WAL
    finally:
        await database.stop()
    with sqlite3.connect(tmp_path / "alone.db") as copy:
        assert copy.execute("select count(*) from counters").fetchone() == (10,)


async def test_sqlite_a_connection_dropped_mid_transaction_releases_the_write_lock(
    tmp_path: Path,
) -> None:
    """What a cancelled call leaves: a connection invalidated inside a write transaction
    while its statement's cursor lives on. Closed as it is, SQLite would keep the lock
    until that cursor is garbage collected, and every writer would wait out the busy
    timeout (the project-purger's stop did, once in a few hundred quick restarts)."""
    path = tmp_path / "mesh.db"
    database = Database(f"sqlite+aiosqlite:///{path}")
    await database.start()
    try:
        conn = await database.engine.connect()
        driver = (await conn.get_raw_connection()).driver_connection
        await driver.execute("BEGIN IMMEDIATE")
        cursor = await driver.execute("select 1 union all select 2")
        await cursor.fetchone()  # the statement is still running, as a cancelled one is
        await conn.invalidate()
        await conn.close()
        other = sqlite3.connect(path, timeout=0.05)
        try:
            other.execute("BEGIN IMMEDIATE")  # "database is locked" while the lock is held
            other.execute("ROLLBACK")
        finally:
            other.close()
        del cursor
    finally:
        await database.stop()


async def test_sqlite_stop_ends_the_thread_of_every_connection(tmp_path: Path) -> None:
    """Each aiosqlite connection is a thread that hands its results to the event loop. One
    still running after stop, like one invalidated by a cancelled call and closed without
    anyone awaiting it, dies with "Event loop is closed" once the loop has gone (a CI
    failure, once in a full run). Stop ends them all while the loop still runs."""

    def connection_threads() -> set[threading.Thread]:
        return {t for t in threading.enumerate() if "_connection_worker" in t.name}

    before = connection_threads()
    database = Database(f"sqlite+aiosqlite:///{tmp_path / 'mesh.db'}")
    await database.start()
    left_open = await database.engine.connect()  # as a call abandoned mid-way leaves it
    await left_open.execute(sa.text("select 1"))
    await database.stop()

    assert connection_threads() - before == set()
    await left_open.close()  # back to a pool that is gone: only SQLAlchemy's records go


async def test_a_service_starts_on_a_database_that_also_holds_another_services_tables(
    database_url: str,
) -> None:
    upgraded = Database(database_url, migrations=[CORE_MIGRATIONS, MIGRATIONS], migrate=True)
    await upgraded.start()  # as `mesh db upgrade` does for every installed service
    await upgraded.stop()
    # A process that serves only core's tables (the events service) reads projects' head
    # in alembic_version as another service's, both without Alembic and with it.
    events_only = Database(database_url, migrations=[CORE_MIGRATIONS], migrate=False)
    events_only.share_with([MIGRATIONS])  # as `mesh serve` does with every installed service
    await events_only.start()
    try:
        assert await at_heads(events_only.engine, [CORE_MIGRATIONS], known=[MIGRATIONS])
        assert not await at_heads(events_only.engine, [CORE_MIGRATIONS])  # unknown: refused
        await require_current(events_only.engine, [CORE_MIGRATIONS], known=[MIGRATIONS])
    finally:
        await events_only.stop()


async def test_an_upgrade_leaves_other_services_tables_alone(database_url: str) -> None:
    database = Database(database_url, migrations=[CORE_MIGRATIONS], migrate=True)
    await database.start()
    try:
        assert await at_heads(database.engine, [CORE_MIGRATIONS])
        assert not await at_heads(database.engine, [CORE_MIGRATIONS, MIGRATIONS])
    finally:
        await database.stop()
