"""Single statements on their own (`Database.fetch_one`, `execute_one`), on SQLite and
PostgreSQL; on PostgreSQL they run on the driver directly (core.data.statements)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from core.data.database import Database
from core.errors import DeadlineExceededError, UnavailableError

notes = sa.Table(
    "notes",
    sa.MetaData(),
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("body", sa.JSON, nullable=False),
    sa.Column("written", sa.DateTime(timezone=True), nullable=True),
)
BY_ID = sa.select(notes).where(notes.c.id == sa.bindparam("id"))
INSERT = notes.insert()


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    database = Database(database_url, pool_size=1)
    await database.start()
    async with database.engine.begin() as conn:
        await conn.run_sync(notes.metadata.create_all)
    try:
        yield database
    finally:
        async with database.engine.begin() as conn:
            await conn.run_sync(notes.metadata.drop_all)
        await database.stop()


def postgres_only(database_url: str) -> None:
    if not database_url.startswith("postgresql"):
        pytest.skip("a PostgreSQL behaviour")


async def test_a_written_row_reads_back_by_column_name(db: Database) -> None:
    await db.execute_one(INSERT, {"id": 1, "body": {"tags": ["a", "b"]}, "written": None})
    row = await db.fetch_one(BY_ID, {"id": 1})
    assert (row["id"], row["body"], row["written"]) == (1, {"tags": ["a", "b"]}, None)


async def test_a_missing_row_is_none(db: Database) -> None:
    assert await db.fetch_one(BY_ID, {"id": 404}) is None


async def test_a_duplicate_key_is_an_integrity_error_and_the_connection_stays_usable(
    db: Database,
) -> None:
    await db.execute_one(INSERT, {"id": 1, "body": {}, "written": None})
    with pytest.raises(IntegrityError):
        await db.execute_one(INSERT, {"id": 1, "body": {}, "written": None})
    assert (await db.fetch_one(BY_ID, {"id": 1}))["id"] == 1


async def test_a_statement_past_the_timeout_is_deadline_exceeded(database_url: str) -> None:
    postgres_only(database_url)
    database = Database(database_url, pool_size=1, statement_timeout=0.05)
    await database.start()
    try:
        with pytest.raises(DeadlineExceededError) as caught:
            await database.fetch_one(sa.select(sa.func.pg_sleep(5)), {})
        assert caught.value.reason == "DATABASE_TIMEOUT"
        assert (await database.fetch_one(sa.select(sa.literal(1).label("one")), {}))["one"] == 1
    finally:
        await database.stop()


async def test_a_connection_the_server_ended_is_unavailable_once_then_replaced(
    db: Database, database_url: str
) -> None:
    postgres_only(database_url)
    pid = (await db.fetch_one(sa.select(sa.func.pg_backend_pid().label("pid")), {}))["pid"]
    other = Database(database_url)  # its own pool: ours holds just the one to end
    # With a timeout, pg_terminate_backend returns once the backend has exited.
    await other.start()
    try:
        await other.fetch_one(sa.select(sa.func.pg_terminate_backend(pid, 5000).label("ended")), {})
    finally:
        await other.stop()
    with pytest.raises(UnavailableError) as caught:
        await db.fetch_one(BY_ID, {"id": 1})
    assert caught.value.reason == "DATABASE_UNAVAILABLE"
    assert await db.fetch_one(BY_ID, {"id": 1}) is None  # a fresh connection
