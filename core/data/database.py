"""The database component and its unit of work, over SQLAlchemy 2 async.

The embedded default is SQLite (aiosqlite, WAL mode) in the data folder; PostgreSQL is
reached through asyncpg with a pool and a statement timeout.

Usage::

    db = Database(settings.database_url, migrations=[PROJECT_MIGRATIONS])
    async with db.transaction() as tx:                  # commits, or rolls back on error
        await tx.conn.execute(insert(projects).values(...))
        tx.after_commit(lambda: cache.invalidate(key))  # runs only if the commit succeeded

    project = await db.run(create_project, isolation="SERIALIZABLE")  # retried on conflicts
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import structlog
from sqlalchemy import event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext import asyncio as sqlalchemy_asyncio
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql import Executable

from core import faults
from core.config import Settings
from core.data import sqlite
from core.data.pool import (
    STATEMENT_TIMEOUT,
    Checkouts,
    figures,
    measure_pool,
    statement_timed_out,
    stop_measuring_pool,
    unavailable,
)
from core.data.revisions import CORE_MIGRATIONS, at_heads
from core.data.transaction import Transaction
from core.errors import DeadlineExceededError, UnavailableError
from core.retries import Retry
from core.runtime.health import Health
from core.runtime.lifecycle import Component
from core.runtime.tasks import BackgroundTask, ShieldedWork

if TYPE_CHECKING:
    from core.data.statements import AsyncpgStatements

log = structlog.get_logger()

T = TypeVar("T")

# PostgreSQL serialization failure and deadlock; both mean "run the transaction again".
_RETRYABLE_SQLSTATES = frozenset({"40001", "40P01"})


def redacted(url: str) -> str:
    """The URL with its password hidden, for logs and errors."""
    return make_url(url).render_as_string(hide_password=True)


class Database(Component):
    """A SQLAlchemy async engine as a component; UNHEALTHY when the database is unreachable.

    Args:
        url: A SQLAlchemy URL: `sqlite+aiosqlite:///...` or `postgresql+asyncpg://...`.
        migrations: Alembic version folders of the tables this process uses; core's own
            (the outbox, request ids, secrets) are always included.
        migrate: Upgrade them to head at start; otherwise only check that the schema is
            current and fail the start, naming `mesh db upgrade`, when it is not.
        statement_timeout: Seconds before PostgreSQL cancels a statement.
        pool_size: Connections kept open (PostgreSQL).
        pool_timeout: Seconds a checkout waits for a free connection (then DATABASE_BUSY).
        connect_timeout: Seconds a new connection may take to open (PostgreSQL), so a
            checkout from a hung server or network fails (DATABASE_UNAVAILABLE) in time.
    """

    name = "database"

    def __init__(
        self,
        url: str,
        *,
        migrations: Sequence[Path] = (),
        migrate: bool = False,
        statement_timeout: float = 10.0,
        pool_size: int = 20,
        max_overflow: int = 0,
        pool_timeout: float = 5.0,
        connect_timeout: float = 5.0,
    ) -> None:
        self.url = url
        self.migrations = list(migrations)
        self.known: list[Path] = []  # other services' folders: see `share_with`
        self.migrate = migrate
        self.dialect = make_url(url).get_backend_name()
        self._statement_timeout = statement_timeout
        self._connect_timeout = connect_timeout
        self._pool = {
            "pool_size": pool_size,
            "max_overflow": max_overflow,
            "pool_timeout": pool_timeout,
        }
        self._engine: AsyncEngine | None = None
        self._checkouts = Checkouts()
        self._returning = ShieldedWork()  # connections on their way back to the pool
        self._checkpoints = BackgroundTask("wal-checkpoints")
        self._asyncpg: AsyncpgStatements | None = None
        self._connections: weakref.WeakSet[Any] = weakref.WeakSet()  # asyncpg's, for interrupt
        self._variants: dict[tuple[tuple[str, Any], ...], AsyncEngine] = {}
        # SQLite: our begin hook skips BEGIN; PostgreSQL: the driver's autocommit.
        self._autocommit: dict[str, Any] = (
            {"mesh_begin": None} if self.dialect == "sqlite" else {"isolation_level": "AUTOCOMMIT"}
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> Database:
        """The database of MESH_DATABASE_URL (or the embedded SQLite file), core tables only."""
        return cls(
            settings.database(),
            migrations=[CORE_MIGRATIONS],
            migrate=settings.migrates_on_start(),
            pool_size=settings.database_pool_size,
        )

    def share_with(self, migrations: Sequence[Path]) -> None:
        """Names the migration folders of other services that may use this database too:
        their revisions found in it are understood, and their tables left to them."""
        self.known = [m for m in migrations if m not in self.migrations]

    def include(self, migrations: Path) -> None:
        """Adds a service's Alembic folder, before start; a folder already added is skipped."""
        if migrations not in self.migrations:
            self.migrations.append(migrations)

    @property
    def engine(self) -> AsyncEngine:
        if self._engine is None:
            raise RuntimeError("the database component is not running")
        return self._engine

    async def start(self) -> None:
        engine = self._create_engine()
        try:
            async with engine.connect() as conn:  # fail at start, not at the first request
                await conn.execute(text("select 1"))
            folders = [CORE_MIGRATIONS, *self.migrations]  # core.data.migrate adds core's too
            known = self.known
            if self.migrations and not await at_heads(engine, folders, known):
                from core.data.migrate import require_current, upgrade  # loads Alembic: ~8 MB

                if self.migrate:
                    await upgrade(engine, self.migrations, known)
                else:
                    await require_current(engine, self.migrations, known)
        except BaseException:
            await self._dispose(engine)
            raise
        self._engine = engine
        file = make_url(self.url).database if self.dialect == "sqlite" else None
        if file and file != ":memory:":
            wal = Path(f"{file}-wal")
            self._checkpoints.start(
                sqlite.keep_wal_checkpointed(wal, lambda: self.connect(autocommit=True))
            )
        if self.dialect == "postgresql":
            # Imported here because it loads asyncpg, which only PostgreSQL needs.
            from core.data.statements import AsyncpgStatements

            self._asyncpg = AsyncpgStatements(engine, self._checkouts)
        measure_pool(self)
        log.info("database.connected", url=redacted(self.url))

    async def stop(self) -> None:
        stop_measuring_pool(self)
        await self._checkpoints.stop()
        await self._returning.drain(timeout=5.0)  # returned connections reach the pool first
        if self._engine is not None:
            await self._dispose(self._engine)
            self._engine = None
            self._asyncpg = None
            self._variants.clear()

    async def _dispose(self, engine: AsyncEngine) -> None:
        await (sqlite.dispose(engine) if self.dialect == "sqlite" else engine.dispose())

    def pool_counts(self) -> tuple[int, int]:
        """Connections checked out of the pool now, and callers waiting for one."""
        engine = self._engine
        if engine is None:
            return 0, 0
        checked_out: int = getattr(engine.pool, "checkedout", lambda: 0)()
        return checked_out, self._checkouts.waiting

    def pool_figures(self) -> dict[str, str]:
        """The pool as named figures for health details (core.data.pool.figures)."""
        return figures(self.engine.pool, *self.pool_counts())

    async def check_health(self) -> Health:
        pool = self.engine.pool
        checked_out = getattr(pool, "checkedout", lambda: 0)()
        if checked_out >= getattr(pool, "size", lambda: checked_out + 1)():
            # Busy, not broken: waiting for a connection would time out and read as down.
            return Health.degraded("connection pool saturated", **self.pool_figures())
        try:
            async with self.engine.connect() as conn:
                await conn.execute(text("select 1"))
        except Exception as exc:  # whatever the driver raises, the answer is the same
            return Health.unhealthy(f"database unreachable: {type(exc).__name__}")
        return Health.healthy(dialect=self.dialect, **self.pool_figures())

    def interrupt(self, health: Health) -> None:
        """Found UNHEALTHY: ends every PostgreSQL connection at once, so calls waiting on a
        hung server fail UNAVAILABLE now instead of at their deadlines, and starts a new
        pool, so none of those connections is handed out again."""
        if self._engine is None or self.dialect != "postgresql":
            return
        for conn in list(self._connections):
            conn.terminate()  # closes the socket without a word to the server
        self._engine.sync_engine.dispose(close=False)
        log.warning("database.connections_dropped", reason=health.reason)

    @asynccontextmanager
    async def connect(
        self, *, autocommit: bool = False, **options: Any
    ) -> AsyncIterator[AsyncConnection]:
        """A pooled connection; an unreachable or lost database is UNAVAILABLE, not INTERNAL.

        With `autocommit`, each statement is its own transaction: a single-statement read
        or write needs no BEGIN, COMMIT or ROLLBACK round trips. `options` are SQLAlchemy
        execution options such as `isolation_level`.
        """
        engine = self._variant(**(self._autocommit if autocommit else options))
        await faults.hit("database.statement")  # tests only (core.faults)
        conn = await self._checkouts.take(engine.connect().start)
        try:
            yield conn
        except DBAPIError as exc:
            if exc.connection_invalidated:
                raise unavailable() from exc
            if getattr(exc.orig, "sqlstate", None) == STATEMENT_TIMEOUT:
                raise statement_timed_out() from None
            raise
        finally:
            await self._give_back(conn)

    async def _give_back(self, conn: AsyncConnection) -> None:
        """Returns `conn` to the pool even if the caller is cancelled meanwhile.

        A cancelled return would drop the connection unclosed (its rollback is an await);
        shielded, the return finishes in a task that `stop` waits for.
        """
        await self._returning.settled(conn.close())

    async def fetch_one(self, statement: Executable, params: Mapping[str, Any]) -> Any:
        """The first row of a single-statement read on its own (autocommit), or None.

        The row is read by column name (`row["id"]`). On PostgreSQL the statement runs on
        the driver directly (see core.data.statements); errors map as in `connect`. Pass statements
        built once: each is compiled once.
        """
        if self._asyncpg is not None:
            await faults.hit("database.statement")
            return await self._asyncpg.fetch_one(statement, params)
        async with self.connect(autocommit=True) as conn:
            row = (await conn.execute(statement, params)).first()
        return None if row is None else row._mapping

    async def execute_one(self, statement: Executable, params: Mapping[str, Any]) -> None:
        """Runs one statement on its own (autocommit), like `fetch_one` without a result.

        A constraint violation raises SQLAlchemy's IntegrityError on every dialect.
        """
        if self._asyncpg is not None:
            await faults.hit("database.statement")
            return await self._asyncpg.execute(statement, params)
        async with self.connect(autocommit=True) as conn:
            await conn.execute(statement, params)

    @asynccontextmanager
    async def transaction(
        self, *, isolation: str | None = None, timeout: float = 10.0, write: bool = True
    ) -> AsyncIterator[Transaction]:
        """A unit of work that commits at the end of the block or rolls back on any error.

        Args:
            isolation: e.g. "SERIALIZABLE" or "REPEATABLE READ"; the dialect's default if None.
                SQLite transactions are always serializable.
            timeout: Bound on the whole unit of work; on expiry it rolls back and raises
                TimeoutError.
            write: On SQLite, take the write lock at BEGIN (IMMEDIATE) so two writers queue
                instead of failing when one upgrades a read lock.
        """
        options: dict[str, Any] = {}
        if self.dialect == "sqlite":
            options["mesh_begin"] = "IMMEDIATE" if write else "DEFERRED"
        elif isolation:
            options["isolation_level"] = isolation
        committed = False
        try:
            async with asyncio.timeout(timeout), self.connect(**options) as conn:
                tx = Transaction(conn)
                async with conn.begin():
                    yield tx
                    await faults.hit("database.commit")  # tests only (core.faults)
                committed = True
        except TimeoutError:
            if committed:  # the bound ran out while the connection was being returned
                return
            raise DeadlineExceededError(
                f"the database work took longer than {timeout:g}s and was rolled back",
                reason="DATABASE_TIMEOUT",
            ) from None
        finally:
            if committed:  # even if cancelled while the connection was being returned
                await tx.run_hooks()

    def _variant(self, **options: Any) -> AsyncEngine:
        """The engine with these execution options, made once: it shares the one pool."""
        if not options:
            return self.engine
        key = tuple(sorted(options.items()))
        variant = self._variants.get(key)
        if variant is None:
            variant = self._variants[key] = self.engine.execution_options(**options)
        return variant

    async def run(
        self,
        work: Callable[[Transaction], Awaitable[T]],
        *,
        isolation: str | None = None,
        timeout: float = 10.0,
        attempts: int = 4,
        write: bool = True,
    ) -> T:
        """Runs `work` in a transaction, again (with backoff) after a serialization failure
        or deadlock, up to `attempts` times. Other errors propagate at once.

        Retry n waits 0.01 * 2**(n-1) seconds plus up to 0.01 of jitter, at most 1 second
        (core.retries: each logs `retry.scheduled` as `database.transaction`).

        Raises:
            UnavailableError: TRANSACTION_CONFLICT, when the last try still conflicted.
        """

        async def once() -> T:
            async with self.transaction(isolation=isolation, timeout=timeout, write=write) as tx:
                return await work(tx)

        conflicts = Retry(
            "database.transaction",
            on=self._retryable,
            attempts=attempts,
            timeout=None,
            wait_initial=0.01,
            wait_max=1.0,
            wait_jitter=0.01,
        )
        try:
            return await conflicts.call(once)
        except DBAPIError as exc:
            if self._retryable(exc):
                raise UnavailableError(
                    "the database is busy; try again", reason="TRANSACTION_CONFLICT"
                ) from exc
            raise

    def _retryable(self, exc: Exception) -> bool:
        """A serialization failure or deadlock (PostgreSQL), or a locked database (SQLite)."""
        if not isinstance(exc, DBAPIError):
            return False
        sqlstate = getattr(exc.orig, "sqlstate", None)
        if sqlstate in _RETRYABLE_SQLSTATES:
            return True
        return self.dialect == "sqlite" and "database is locked" in str(exc.orig)

    def _create_engine(self) -> AsyncEngine:
        if self.dialect == "sqlite":
            return sqlite.create_engine(self.url)
        connect_args: dict[str, Any] = {}
        if self.dialect == "postgresql":
            ms = str(int(self._statement_timeout * 1000))
            connect_args["server_settings"] = {"statement_timeout": ms}
            connect_args["timeout"] = self._connect_timeout  # asyncpg's default is 60 s
        # No pre-ping: it costs three round trips per checkout. A dropped connection is
        # invalidated when it fails (the call gets UNAVAILABLE), and recycled before servers
        # or proxies time it out. Looked up on the module at each call, so the SQLAlchemy
        # instrumentation (core.telemetry, when tracing) wraps it whenever it was imported.
        engine = sqlalchemy_asyncio.create_async_engine(
            self.url,
            pool_recycle=1800,
            hide_parameters=True,  # error texts must not carry request data
            connect_args=connect_args,
            **self._pool,
        )
        if self.dialect == "postgresql":
            event.listen(engine.sync_engine, "connect", self._opened)
        return engine

    def _opened(self, connection: Any, record: Any) -> None:
        self._connections.add(connection.driver_connection)
