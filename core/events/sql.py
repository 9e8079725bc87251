"""The embedded event store: events, groups and deliveries in the service's SQL database.

One writer at a time (an asyncio lock, plus an advisory lock on PostgreSQL) assigns
positions, so a position is committed before any later one: a reader that has seen
position N has seen everything before it. Events reach this process's subscribers
through `on_append`; the backend is meant for one instance. Several instances that must
share streams use the Redis backend.
"""

from __future__ import annotations

import asyncio
import functools
import sqlite3
import time
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from core.data.database import Database
from core.errors import (
    FailedPreconditionError,
    FieldViolation,
    InvalidArgumentError,
    NotFoundError,
    UnavailableError,
)
from core.events.model import (
    MAX_ERROR_CHARS,
    MAX_ERRORS_KEPT,
    Appended,
    AppendListener,
    Delivery,
    DeliveryError,
    Event,
    GroupStatus,
    HistoryQuery,
    LossListener,
    Page,
    Policy,
    Selector,
    State,
)

metadata = sa.MetaData()
_Position = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

# Mirrors core/data/migrations/versions/0002_events.py; queries use these, migrations own the DDL.
events = sa.Table(
    "mesh_events",
    metadata,
    sa.Column("position", _Position, primary_key=True),
    sa.Column("event_id", sa.String(64), nullable=False, unique=True),
    sa.Column("type", sa.String(200), nullable=False),
    sa.Column("subject", sa.String(500), nullable=False),
    sa.Column("time_us", sa.BigInteger(), nullable=False),  # the event's time, for history
    sa.Column("body", sa.LargeBinary(), nullable=False),  # the serialized Event, no position
)
groups = sa.Table(
    "mesh_event_groups",
    metadata,
    sa.Column("name", sa.String(100), primary_key=True),
    sa.Column("types", sa.JSON(), nullable=False),
    sa.Column("subject", sa.String(500), nullable=False),
    sa.Column("cursor", sa.BigInteger(), nullable=False),  # every position up to it is handed
)
deliveries = sa.Table(
    "mesh_event_deliveries",
    metadata,
    sa.Column("group_name", sa.String(100), primary_key=True),
    sa.Column("event_id", sa.String(64), primary_key=True),
    sa.Column("position", sa.BigInteger(), nullable=False),
    sa.Column("state", sa.SmallInteger(), nullable=False),
    sa.Column("consumer", sa.String(200), nullable=False),
    sa.Column("attempts", sa.Integer(), nullable=False),
    sa.Column("due", sa.Float(), nullable=True),  # when it is handed out (again); epoch seconds
    sa.Column("update_time", sa.Float(), nullable=False),
    sa.Column("errors", sa.JSON(), nullable=False),
)

_WRITE_LOCK = 0x6D657376  # "mesv": PostgreSQL advisory lock serialising appends
_OPEN = (int(State.DELIVERED), int(State.RETRYING))


class SqlEventStore:
    """`core.events.model.EventStore` over a `core.data.database.Database`."""

    name = "sql"

    def __init__(self, db: Database) -> None:
        self._db = db
        self.read_ahead = db.dialect != "sqlite"
        self._write = asyncio.Lock()
        self._on_append: AppendListener | None = None
        self._writer: AsyncConnection | None = None  # SQLite: held for appends
        self._raw: Any = None  # its aiosqlite connection

    async def open(self, on_append: AppendListener, on_lost: LossListener) -> None:
        self._on_append = on_append  # a SQL database loses nothing: on_lost is never called
        if self._db.dialect == "sqlite":
            self._writer = await self._db.engine.connect()
            self._raw = (await self._writer.get_raw_connection()).driver_connection

    async def close(self) -> None:
        self._on_append = None
        if self._writer is not None:
            await self._writer.close()
            self._writer = self._raw = None

    async def check(self) -> str:
        return ""  # the database component reports the database's own health

    def order_key(self, position: str) -> tuple[int, ...]:
        if not position:
            return ()
        if not position.isdigit() or len(position) > 19:
            raise InvalidArgumentError(
                "malformed position",
                reason="INVALID_POSITION",
                violations=[FieldViolation("position", "not a position of this event store")],
            )
        return (int(position),)

    # -- the stream ---------------------------------------------------------------------

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
            return _text(await conn.scalar(_HEAD))

    async def read(self, after: str, selector: Selector, limit: int) -> Page:
        start = self.order_key(after)[0] if after else 0
        async with self._db.connect(autocommit=True) as conn:
            head = await conn.scalar(_HEAD) or 0
            query = (
                sa.select(events.c.position, events.c.body)
                .where(events.c.position > start, events.c.position <= head, *_where(selector))
                .order_by(events.c.position)
                .limit(limit)
            )
            rows = (await conn.execute(query)).all()
        found = [_event(r.body, r.position) for r in rows]
        covered = rows[-1].position if len(rows) == limit else max(head, start)
        return Page(found, _text(covered), covered >= head)

    async def get(self, event_id: str) -> Event | None:
        async with self._db.connect(autocommit=True) as conn:
            query = sa.select(events.c.position, events.c.body).where(events.c.event_id == event_id)
            row = (await conn.execute(query)).first()
        return None if row is None else _event(row.body, row.position)

    async def history(self, query: HistoryQuery, after: str, limit: int) -> list[Event]:
        start = self.order_key(after)[0] if after else 0
        where = [events.c.position > start, *_where(query.selector)]
        if query.start_time is not None:
            where.append(events.c.time_us >= int(query.start_time * 1_000_000))
        if query.end_time is not None:
            where.append(events.c.time_us < int(query.end_time * 1_000_000))
        statement = (
            sa.select(events.c.position, events.c.body)
            .where(*where)
            .order_by(events.c.position)
            .limit(limit)
        )
        async with self._db.connect(autocommit=True) as conn:
            rows = (await conn.execute(statement)).all()
        return [_event(r.body, r.position) for r in rows]

    # -- consumer groups ----------------------------------------------------------------

    async def join(self, group: str, selector: Selector, start: str) -> None:
        cursor = self.order_key(start)[0] if start else 0
        row = {"name": group, "types": list(selector.types), "subject": selector.subject}
        try:
            async with self._db.transaction() as tx:
                existing = (await tx.conn.execute(_group_query(group))).first()
                if existing is None:
                    await tx.conn.execute(groups.insert(), {**row, "cursor": cursor})
                    return
        except IntegrityError:  # another member created it first
            async with self._db.connect(autocommit=True) as conn:
                existing = (await conn.execute(_group_query(group))).first()
        if existing is not None and _selector_of(existing) != selector:
            raise FailedPreconditionError(
                f"group {group!r} exists with another selector",
                reason="GROUP_SELECTOR_MISMATCH",
                metadata={"group": group},
            )

    async def claim(self, group: str, consumer: str, limit: int, policy: Policy) -> list[Delivery]:
        now = time.time()
        async with self._db.transaction() as tx:
            row = (await tx.conn.execute(_group_query(group, lock=True))).first()
            if row is None:
                raise _no_group(group)
            out = await self._redeliver(tx.conn, group, consumer, limit, policy, now)
            if len(out) < limit:
                out += await self._hand_new(tx.conn, row, consumer, limit - len(out), policy, now)
        return out

    async def _redeliver(
        self, conn: Any, group: str, consumer: str, limit: int, policy: Policy, now: float
    ) -> list[Delivery]:
        query = (
            sa.select(deliveries, events.c.body)
            .join(events, events.c.event_id == deliveries.c.event_id)
            .where(
                deliveries.c.group_name == group,
                deliveries.c.state.in_(_OPEN),
                deliveries.c.due <= now,
            )
            .order_by(deliveries.c.due, deliveries.c.position)
            .limit(limit)
        )
        out = []
        for row in (await conn.execute(query)).all():
            errors = list(row.errors)
            if row.state == State.DELIVERED:  # handed out, never acked nor nacked in time
                message = f"not acked by {row.consumer} within the visibility timeout"
                errors = _append_error(errors, message, now, row.attempts)
            values: dict[str, Any] = {"errors": errors, "update_time": now}
            if row.attempts >= policy.max_attempts:
                values |= {"state": int(State.DEAD_LETTERED), "due": None}
            else:
                values |= {
                    "state": int(State.DELIVERED),
                    "attempts": row.attempts + 1,
                    "consumer": consumer,
                    "due": now + policy.visibility,
                }
                out.append(Delivery(_event(row.body, row.position), row.attempts + 1))
            await conn.execute(_update(group, row.event_id).values(values))
        return out

    async def _hand_new(
        self, conn: Any, group: Any, consumer: str, limit: int, policy: Policy, now: float
    ) -> list[Delivery]:
        head = await conn.scalar(_HEAD) or 0
        if head <= group.cursor:
            return []
        query = (
            sa.select(events.c.position, events.c.event_id, events.c.body)
            .where(
                events.c.position > group.cursor,
                events.c.position <= head,
                *_where(_selector_of(group)),
            )
            .order_by(events.c.position)
            .limit(limit)
        )
        rows = (await conn.execute(query)).all()
        cursor = rows[-1].position if len(rows) == limit else head
        if rows:
            base = {"group_name": group.name, "state": int(State.DELIVERED), "consumer": consumer}
            due = now + policy.visibility
            values = [
                {**base, "event_id": r.event_id, "position": r.position, "attempts": 1}
                | {"due": due, "update_time": now, "errors": []}
                for r in rows
            ]
            await conn.execute(deliveries.insert(), values)
        await conn.execute(groups.update().where(groups.c.name == group.name).values(cursor=cursor))
        return [Delivery(_event(r.body, r.position), 1) for r in rows]

    async def next_due(self, group: str) -> float | None:
        query = sa.select(sa.func.min(deliveries.c.due)).where(
            deliveries.c.group_name == group, deliveries.c.state.in_(_OPEN)
        )
        async with self._db.connect(autocommit=True) as conn:
            due = await conn.scalar(query)
        return None if due is None else float(due)

    async def unacked(self, group: str, consumer: str) -> int:
        query = sa.select(sa.func.count()).where(
            deliveries.c.group_name == group,
            deliveries.c.consumer == consumer,
            deliveries.c.state == int(State.DELIVERED),
        )
        async with self._db.connect(autocommit=True) as conn:
            return int(await conn.scalar(query) or 0)

    async def release(self, group: str, consumer: str) -> None:
        async with self._db.transaction() as tx:
            await tx.conn.execute(
                deliveries.update()
                .where(
                    deliveries.c.group_name == group,
                    deliveries.c.consumer == consumer,
                    deliveries.c.state == int(State.DELIVERED),
                )
                .values(due=time.time())
            )

    async def ack(self, group: str, event_ids: Sequence[str]) -> int:
        now = time.time()
        async with self._db.transaction() as tx:
            found = await self._deliveries(tx.conn, group, event_ids)
            done = [i for i in dict.fromkeys(event_ids) if found[i].state != State.ACKED]
            if done:
                where = [deliveries.c.group_name == group, deliveries.c.event_id.in_(done)]
                values = {"state": int(State.ACKED), "due": None, "update_time": now}
                await tx.conn.execute(deliveries.update().where(*where).values(values))
        return len(done)

    async def nack(
        self, group: str, event_id: str, *, delay: float, park: bool, error: str, policy: Policy
    ) -> State:
        now = time.time()
        async with self._db.transaction() as tx:
            row = (await self._deliveries(tx.conn, group, [event_id]))[event_id]
            if row.state == State.ACKED:
                raise FailedPreconditionError(
                    "the event is already acked", reason="ALREADY_ACKED", metadata={"id": event_id}
                )
            if row.state == State.DEAD_LETTERED:
                return State.DEAD_LETTERED
            errors = _append_error(list(row.errors), error or "nacked", now, row.attempts)
            values: dict[str, Any] = {"errors": errors, "update_time": now}
            if park or row.attempts >= policy.max_attempts:
                values |= {"state": int(State.DEAD_LETTERED), "due": None}
            else:
                values |= {"state": int(State.RETRYING), "due": now + delay}
            await tx.conn.execute(_update(group, event_id).values(values))
        return State(values["state"])

    async def _deliveries(self, conn: Any, group: str, event_ids: Sequence[str]) -> dict[str, Any]:
        query = sa.select(deliveries).where(
            deliveries.c.group_name == group, deliveries.c.event_id.in_(set(event_ids))
        )
        found = {r.event_id: r for r in (await conn.execute(query)).all()}
        for event_id in event_ids:
            if event_id not in found:
                raise NotFoundError(
                    f"event {event_id!r} was never delivered to group {group!r}",
                    reason="DELIVERY_NOT_FOUND",
                    metadata={"id": event_id, "group": group},
                )
        return found

    # -- status and dead letters -----------------------------------------------------------

    async def status(self, event_id: str) -> list[GroupStatus]:
        async with self._db.connect(autocommit=True) as conn:
            query = sa.select(events.c.position, events.c.body).where(events.c.event_id == event_id)
            event = (await conn.execute(query)).first()
            if event is None:
                return []
            found = (
                await conn.execute(sa.select(deliveries).where(deliveries.c.event_id == event_id))
            ).all()
            pending = (
                await conn.execute(sa.select(groups).where(groups.c.cursor < event.position))
            ).all()
        now = time.time()
        out = [_status(r, now) for r in found]
        parsed = _event(event.body, event.position)
        out += [
            GroupStatus(g.name, State.PENDING) for g in pending if _selector_of(g).matches(parsed)
        ]
        return sorted(out, key=lambda s: s.group)

    async def dead_letters(
        self, group: str, after: str, limit: int
    ) -> list[tuple[Event, GroupStatus]]:
        start = self.order_key(after)[0] if after else 0
        query = (
            sa.select(deliveries, events.c.body)
            .join(events, events.c.event_id == deliveries.c.event_id)
            .where(
                deliveries.c.group_name == group,
                deliveries.c.state == int(State.DEAD_LETTERED),
                deliveries.c.position > start,
            )
            .order_by(deliveries.c.position)
            .limit(limit)
        )
        async with self._db.connect(autocommit=True) as conn:
            if (await conn.execute(_group_query(group))).first() is None:
                raise _no_group(group)
            rows = (await conn.execute(query)).all()
        now = time.time()
        return [(_event(r.body, r.position), _status(r, now)) for r in rows]

    async def replay(self, group: str, event_ids: Sequence[str]) -> int:
        where = [
            deliveries.c.group_name == group,
            deliveries.c.state == int(State.DEAD_LETTERED),
        ]
        if event_ids:
            where.append(deliveries.c.event_id.in_(set(event_ids)))
        now = time.time()
        values = {"state": int(State.RETRYING), "attempts": 0, "due": now, "update_time": now}
        async with self._db.transaction() as tx:
            if (await tx.conn.execute(_group_query(group))).first() is None:
                raise _no_group(group)
            result = await tx.conn.execute(deliveries.update().where(*where).values(values))
        return int(result.rowcount)


_HEAD = sa.select(sa.func.max(events.c.position))
_ONE_STATEMENT = 1000  # most rows in one INSERT (5 parameters each, within SQLite's limit)


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


_ROW_COLUMNS = ("event_id", "type", "subject", "time_us", "body")


def _row(event: Event) -> dict[str, Any]:
    return {
        "event_id": event.id,
        "type": event.type,
        "subject": event.subject,
        "time_us": event.time.seconds * 1_000_000 + event.time.nanos // 1000,
        "body": event.SerializeToString(),
    }


def _event(body: bytes, position: int) -> Event:
    event = Event.FromString(body)
    event.position = str(position)
    return event


def _text(position: int | None) -> str:
    return str(position) if position else ""


def _where(selector: Selector) -> list[sa.ColumnElement[bool]]:
    where = []
    if selector.types:
        kinds = [events.c.type.startswith(p, autoescape=True) for p in selector.prefixes]
        if selector.exact:
            kinds.append(events.c.type.in_(selector.exact))
        where.append(sa.or_(*kinds))
    if selector.subject:
        where.append(events.c.subject == selector.subject)
    return where


def _group_query(group: str, lock: bool = False) -> sa.Select[Any]:
    query = sa.select(groups).where(groups.c.name == group)
    return query.with_for_update() if lock else query


def _selector_of(group: Any) -> Selector:
    return Selector(tuple(group.types), group.subject)


def _update(group: str, event_id: str) -> sa.Update:
    return deliveries.update().where(
        deliveries.c.group_name == group, deliveries.c.event_id == event_id
    )


def _append_error(errors: list[Any], message: str, now: float, attempt: int) -> list[Any]:
    entry = {"message": message[:MAX_ERROR_CHARS], "time": now, "attempt": attempt}
    return [*errors, entry][-MAX_ERRORS_KEPT:]


def _status(row: Any, now: float) -> GroupStatus:
    state = State(row.state)
    if state == State.DELIVERED and row.due is not None and row.due <= now:
        state = State.RETRYING  # its visibility timeout ran out: it will be handed out again
    errors = [DeliveryError(e["message"], e["time"], e["attempt"]) for e in row.errors]
    return GroupStatus(row.group_name, state, row.attempts, row.consumer, row.update_time, errors)


def _no_group(group: str) -> NotFoundError:
    return NotFoundError(f"no group {group!r}", reason="GROUP_NOT_FOUND", metadata={"group": group})
