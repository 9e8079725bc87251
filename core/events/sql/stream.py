"""The stream half of the SQL store: appends in position order, reads and history.

One writer at a time (an asyncio lock, plus an advisory lock on PostgreSQL) assigns
positions, so a position is committed before any later one: a reader that has seen
position N has seen everything before it.
"""

from __future__ import annotations

import asyncio
import functools
import sqlite3
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from core.data.database import Database
from core.errors import UnavailableError
from core.events.model import Appended, AppendListener, Event, HistoryQuery, Page, Selector
from core.events.sql.tables import HEAD, as_event, as_text, events, start_of, where

_WRITE_LOCK = 0x6D657376  # "mesv": PostgreSQL advisory lock serialising appends
_ONE_STATEMENT = 1000  # most rows in one INSERT (5 parameters each, within SQLite's limit)
_ROW_COLUMNS = ("event_id", "type", "subject", "time_us", "body")


class SqlStream:
    """Appends and reads of the `mesh_events` table."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self.read_ahead = db.dialect != "sqlite"
        self._write = asyncio.Lock()
        self._on_append: AppendListener | None = None
        self._writer: AsyncConnection | None = None  # SQLite: held for appends
        self._raw: Any = None  # its aiosqlite connection

    async def append(self, batch: Sequence[Event]) -> list[Appended]:
        first: dict[str, Event] = {}  # the first event of each id, in batch order
        for event in batch:
            first.setdefault(event.id, event)
        candidates = list(first.values())
        async with self._write:
            if self._db.dialect == "sqlite" and len(candidates) <= _ONE_STATEMENT:
                stored = await self._insert_at_once(candidates)
            else:
                stored = await self._insert_locked(candidates)
            fresh = [e for e in candidates if e.id not in stored]
            if fresh and self._on_append is not None:
                self._on_append(fresh)  # after the commit, in position order
        results = []
        for event in batch:
            if event.id in stored:
                results.append(Appended(event.id, str(stored[event.id]), True))
            else:
                original = first[event.id]
                results.append(Appended(event.id, original.position, original is not event))
        return results

    async def _insert_at_once(self, candidates: list[Event]) -> dict[str, int]:
        """SQLite: one autocommit INSERT of every new event, atomic as any one statement.

        It runs on a connection held for appends, straight on aiosqlite: one hop to the
        driver's thread, where SQLAlchemy's checkout, cursor, fetch and return take five
        (about 1 ms of CPU per append on this machine, most of a publish). Ids already
        stored are skipped and looked up afterwards (rare). Returns them with their
        positions; sets the position of each new event.
        """
        params = [value for e in candidates for value in _row(e).values()]
        try:
            rows = await self._raw.execute_fetchall(_insert_new_sql(len(candidates)), params)
        except sqlite3.Error as exc:
            raise UnavailableError(
                "the event store could not store the events", reason="EVENTS_UNAVAILABLE"
            ) from exc
        inserted: dict[str, int] = dict(rows)
        missing = [e.id for e in candidates if e.id not in inserted]
        stored: dict[str, int] = {}
        if missing:
            async with self._db.connect(autocommit=True) as conn:
                stored = await _positions(conn, missing)
        for event in candidates:
            if event.id in inserted:
                event.position = str(inserted[event.id])
        return stored

    async def _insert_locked(self, candidates: list[Event]) -> dict[str, int]:
        """One transaction; on PostgreSQL an advisory lock orders commits by position."""
        async with self._db.transaction() as tx:
            if self._db.dialect == "postgresql":
                await tx.conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_WRITE_LOCK)))
            stored = await _positions(tx.conn, [e.id for e in candidates])
            fresh = [e for e in candidates if e.id not in stored]
            if fresh:
                insert = events.insert().returning(events.c.position, sort_by_parameter_order=True)
                positions = (await tx.conn.execute(insert, [_row(e) for e in fresh])).scalars()
                for event, position in zip(fresh, positions.all(), strict=True):
                    event.position = str(position)
        return stored

    async def head(self) -> str:
        async with self._db.connect(autocommit=True) as conn:
            return as_text(await conn.scalar(HEAD))

    async def read(self, after: str, selector: Selector, limit: int) -> Page:
        start = start_of(after)
        async with self._db.connect(autocommit=True) as conn:
            head = await conn.scalar(HEAD) or 0
            query = (
                sa.select(events.c.position, events.c.body)
                .where(events.c.position > start, events.c.position <= head, *where(selector))
                .order_by(events.c.position)
                .limit(limit)
            )
            rows = (await conn.execute(query)).all()
        found = [as_event(r.body, r.position) for r in rows]
        covered = rows[-1].position if len(rows) == limit else max(head, start)
        return Page(found, as_text(covered), covered >= head)

    async def get(self, event_id: str) -> Event | None:
        async with self._db.connect(autocommit=True) as conn:
            query = sa.select(events.c.position, events.c.body).where(events.c.event_id == event_id)
            row = (await conn.execute(query)).first()
        return None if row is None else as_event(row.body, row.position)

    async def history(self, query: HistoryQuery, after: str, limit: int) -> list[Event]:
        conditions = [events.c.position > start_of(after), *where(query.selector)]
        if query.start_time is not None:
            conditions.append(events.c.time_us >= int(query.start_time * 1_000_000))
        if query.end_time is not None:
            conditions.append(events.c.time_us < int(query.end_time * 1_000_000))
        statement = (
            sa.select(events.c.position, events.c.body)
            .where(*conditions)
            .order_by(events.c.position)
            .limit(limit)
        )
        async with self._db.connect(autocommit=True) as conn:
            rows = (await conn.execute(statement)).all()
        return [as_event(r.body, r.position) for r in rows]


@functools.cache
def _insert_new_sql(rows: int) -> str:
    """SQLite's INSERT of `rows` events that skips stored ids and returns the new positions.

    Written out rather than compiled per call: it runs on the raw aiosqlite connection
    (see `_insert_at_once`); the columns are those of `_row`, in its order.
    """
    columns = ", ".join(_ROW_COLUMNS)
    values = ", ".join(["(" + ", ".join("?" * len(_ROW_COLUMNS)) + ")"] * rows)
    return (
        f"INSERT INTO {events.name} ({columns}) VALUES {values} "
        "ON CONFLICT (event_id) DO NOTHING RETURNING event_id, position"
    )


async def _positions(conn: Any, event_ids: Sequence[str]) -> dict[str, int]:
    """The positions of those of `event_ids` that are stored."""
    query = sa.select(events.c.event_id, events.c.position).where(
        events.c.event_id.in_(set(event_ids))
    )
    return dict((await conn.execute(query)).all())


def _row(event: Event) -> dict[str, Any]:
    return {
        "event_id": event.id,
        "type": event.type,
        "subject": event.subject,
        "time_us": event.time.seconds * 1_000_000 + event.time.nanos // 1000,
        "body": event.SerializeToString(),
    }
