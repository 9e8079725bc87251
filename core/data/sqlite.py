"""SQLite tuned for a server: real transactions, WAL, and checkpoints off the commit path.

`tune(engine)` sets each new connection up; `keep_wal_checkpointed` is the loop that the
database component runs in the background for a SQLite file; `dispose(engine)` closes the
engine and waits for the threads of its connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
import weakref
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import structlog
from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext import asyncio as sqlalchemy_asyncio
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

log = structlog.get_logger()

# SQLite copies its WAL into the database file inside the commit that takes the WAL past
# wal_autocheckpoint pages: two fsyncs and the copy, 6-10 ms on this machine, every ~200
# one-event commits at the default 1000 pages. A PASSIVE checkpoint in the background
# does that copying without blocking readers or writers; the commit that crosses the
# raised threshold then only finishes what is left, which lets the next write restart the
# WAL (so it stays bounded: 16 MB).
WAL_AUTOCHECKPOINT_PAGES = 4000
WAL_CHECKPOINT_SECONDS = 0.2


async def keep_wal_checkpointed(
    wal: Path, connect: Callable[[], AbstractAsyncContextManager[AsyncConnection]]
) -> None:
    """A PASSIVE checkpoint whenever the WAL changed (see WAL_AUTOCHECKPOINT_PAGES), until
    cancelled; `connect` gives an autocommit connection."""
    seen = 0
    while True:
        await asyncio.sleep(WAL_CHECKPOINT_SECONDS)
        try:
            changed = os.stat(wal).st_mtime_ns  # one local syscall: no thread needed
            if changed != seen:
                async with connect() as conn:
                    await conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)")
                seen = changed
        except Exception as exc:  # the next round tries again; commits checkpoint anyway
            log.debug("database.checkpoint_failed", error=type(exc).__name__)


# Connections to a SQLite file. Each is a thread of aiosqlite's, and a write's several hops
# between the event loop and its thread each wait for the GIL behind every busy reader
# thread: with SQLAlchemy's default of up to 15, a write beside 16 concurrent lists took
# 2-3 s at p99 (tests/bench/sqlite_mixed.py); with 4 the others wait their turn in the
# pool's queue instead, and the p99 was 0.1-0.5 s at 25-200 writes/s.
POOL_SIZE = 4


def create_engine(url: str) -> AsyncEngine:
    """An engine on the SQLite file at `url` (its folder made if missing), tuned."""
    database = make_url(url).database
    if database and database != ":memory:":
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    engine = sqlalchemy_asyncio.create_async_engine(
        url, hide_parameters=True, pool_size=POOL_SIZE, max_overflow=0
    )
    tune(engine)
    return engine


# The aiosqlite connections each engine opened, so that `dispose` can wait for their threads.
_opened: weakref.WeakKeyDictionary[Any, weakref.WeakSet[Any]] = weakref.WeakKeyDictionary()

THREADS_STOP_SECONDS = 10.0


async def dispose(engine: AsyncEngine) -> None:
    """Closes the engine's pool, then waits (bounded) for every connection thread to end.

    A connection that SQLAlchemy invalidates while its task is cancelled is closed with
    aiosqlite's `stop()`, which nobody awaits; its thread later hands the result to the
    event loop with `call_soon_threadsafe`, and if the loop has closed by then the thread
    dies with "Event loop is closed". Waiting here, while the loop still runs, lets every
    such hand-over land; it stops connections still checked out too.
    """
    await engine.dispose()
    threads = []
    for connection in list(_opened.get(engine.sync_engine, ())):
        thread: threading.Thread = connection._thread  # aiosqlite 0.22 keeps it here
        if thread.is_alive():
            if connection._connection is not None:  # not closed nor being stopped yet
                connection.stop()
            threads.append(thread)
    if threads:
        await asyncio.to_thread(_join, threads, time.monotonic() + THREADS_STOP_SECONDS)


def _join(threads: list[threading.Thread], deadline: float) -> None:
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))


def tune(engine: AsyncEngine) -> None:
    """Makes SQLite transactions real: WAL, a busy timeout, and BEGIN issued by us.

    The sqlite3 driver otherwise delays BEGIN until the first write, so a read-then-write
    unit of work is not isolated (SQLAlchemy's documented recipe for aiosqlite).
    """

    opened = _opened.setdefault(engine.sync_engine, weakref.WeakSet())

    @event.listens_for(engine.sync_engine, "connect")
    def on_connect(dbapi_connection: Any, record: Any) -> None:
        opened.add(record.driver_connection)
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        for pragma in (
            "journal_mode=WAL",
            "synchronous=NORMAL",
            "busy_timeout=5000",
            f"wal_autocheckpoint={WAL_AUTOCHECKPOINT_PAGES}",
            "foreign_keys=ON",
        ):
            cursor.execute(f"PRAGMA {pragma}")
        cursor.close()

    @event.listens_for(engine.sync_engine, "close")
    def on_close(dbapi_connection: Any, _: Any) -> None:
        # A connection closed inside a write transaction while the cursor of a cancelled
        # statement is still alive becomes a zombie (sqlite3_close_v2) that keeps the
        # write lock until that cursor is garbage collected; every other writer then
        # waits out the busy timeout. Cancelled calls invalidate, hence close, their
        # connection just so; rolling back first releases the lock at once.
        with contextlib.suppress(Exception):  # closed already, or outside the event loop
            dbapi_connection.rollback()

    @event.listens_for(engine.sync_engine, "begin")
    def on_begin(conn: Any) -> None:
        mode = conn.get_execution_options().get("mesh_begin", "DEFERRED")
        if mode is not None:  # None: a read-only connection, each statement on its own
            conn.exec_driver_sql(f"BEGIN {mode}")
