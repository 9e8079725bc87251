"""Once per database: which instance does the work, handed over at once when its holder dies.

The outbox relay must run in one instance per database. The right to do so is a lock that
the operating system or PostgreSQL releases the moment the holding process is gone, so a
crashed holder (SIGKILL, OOM kill, a segfault) is replaced as soon as a follower next
tries, every `follow_interval` seconds (0.5 by default): no lease has to run out first.

- PostgreSQL: a session-level advisory lock (`pg_try_advisory_lock`) held on a connection
  of its own, outside the pool, which every instance keeps open. When a process dies its
  socket closes and PostgreSQL ends the session, releasing the lock. When the host dies
  or the network parts, no socket closes: the session sets TCP keepalives (5 s idle, then
  3 probes 2 s apart), so PostgreSQL drops it within about 11 s. The holder checks its
  connection at least every `CHECK_SECONDS`; one that lost it stops leading. The lock
  needs a real session: behind PgBouncer, use session pooling for this database.
- SQLite (one host): an exclusive `flock` on `<database file>-<name>.lock`, which the kernel
  releases when the process exits however it exits. An in-memory database has one
  process: it always leads.

For a moment two instances may both believe they lead (the old holder between losing its
connection and its next check). The relay is built for that: the event store dedupes by
event id, and both publish the oldest unsent rows first, so nothing is lost or reordered.

The `mesh_leases` table (migration 0002) is no longer used by the relay.

Usage::

    leadership = leadership_for(db, "outbox-relay")
    if await leadership.hold():  # take it, or confirm it is still ours
        ...
    await leadership.release()   # at stop: the next instance takes over at once
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import time
import zlib
from pathlib import Path
from typing import Protocol

import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from core.data.database import Database

CHECK_SECONDS = 1.0  # the holder confirms its PostgreSQL session at least this often
_STATEMENT_SECONDS = 2.0  # bound on each statement on the lock's connection
# Applied to the lock's session: PostgreSQL notices a vanished client (host down, network
# parted) after 5 s of silence and 3 unanswered probes 2 s apart.
_KEEPALIVES = sa.select(
    sa.func.set_config("tcp_keepalives_idle", "5", False),
    sa.func.set_config("tcp_keepalives_interval", "2", False),
    sa.func.set_config("tcp_keepalives_count", "3", False),
)


class Leadership(Protocol):
    """The right to do once-per-database work."""

    async def hold(self) -> bool:
        """Takes the right, or confirms it is still held; True while this instance has it.

        Raises when the database cannot be asked; the right is then no longer held.
        """
        ...

    async def release(self) -> None:
        """Gives the right up (another instance may take it at once); never raises."""
        ...


def leadership_for(db: Database, name: str) -> Leadership:
    """The lock named `name` in `db`: an advisory lock on PostgreSQL, a file lock on SQLite."""
    if db.dialect == "postgresql":
        return AdvisoryLock(db, zlib.crc32(name.encode()))
    file = make_url(db.url).database
    if db.dialect == "sqlite" and file and file != ":memory:":
        return FileLock(Path(f"{file}-{name}.lock"))
    return Sole()


class AdvisoryLock:
    """A PostgreSQL session-level advisory lock on a connection this instance keeps."""

    def __init__(self, db: Database, key: int) -> None:
        self._db = db
        self._key = key
        self._engine: AsyncEngine | None = None
        self._conn: AsyncConnection | None = None
        self._held = False
        self._checked = 0.0  # time.monotonic() when the session last answered

    async def hold(self) -> bool:
        if self._held and time.monotonic() - self._checked < CHECK_SECONDS:
            return True
        try:
            async with asyncio.timeout(_STATEMENT_SECONDS):
                conn = await self._connection()
                if self._held:  # the session answers, so the lock is still ours
                    await conn.execute(sa.select(1))
                else:
                    take = sa.select(sa.func.pg_try_advisory_lock(self._key))
                    self._held = bool(await conn.scalar(take))
        except BaseException:  # the session (and the lock with it) may be gone
            await self.release()
            raise
        self._checked = time.monotonic()
        return self._held

    async def release(self) -> None:
        """Ends the session, which releases the lock."""
        conn, self._conn, self._held = self._conn, None, False
        engine, self._engine = self._engine, None
        with contextlib.suppress(Exception):
            async with asyncio.timeout(_STATEMENT_SECONDS):
                if conn is not None:
                    await conn.invalidate()  # closed at once, without a reset first
                if engine is not None:
                    await engine.dispose()

    async def _connection(self) -> AsyncConnection:
        """The lock's own session: a connection outside the pool, so the lock neither takes
        a pooled connection for good nor goes back to the pool with the session."""
        if self._conn is None:
            if self._engine is None:
                self._engine = create_async_engine(
                    self._db.url, poolclass=NullPool, isolation_level="AUTOCOMMIT"
                )
            self._conn = await self._engine.connect()
            await self._conn.execute(_KEEPALIVES)  # on failure, `hold` releases it all
        return self._conn


class FileLock:
    """An exclusive, non-blocking `flock` on a file beside the SQLite database."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._fd: int | None = None

    async def hold(self) -> bool:
        if self._fd is not None:
            return True
        # Local-file system calls that never wait: LOCK_NB fails at once when it is taken.
        fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return True

    async def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # closing the only descriptor releases the lock


class Sole:
    """One process owns the database (SQLite in memory): it always holds the right."""

    async def hold(self) -> bool:
        return True

    async def release(self) -> None:
        return None
