"""The consumer-group half of the SQL store: groups, their deliveries and dead letters.

A group's row keeps its cursor (every position up to it is handed out); each event handed
to it has a `mesh_event_deliveries` row with its state, attempts, holder, when it falls
due again and its last errors. Every change of state is one transaction.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from core.data.database import Database
from core.errors import FailedPreconditionError, NotFoundError
from core.events.failures import (
    DISCONNECTED_MESSAGE,
    MAX_ERRORS_KEPT,
    TIMED_OUT_MESSAGE,
    DeadLetter,
    DeadLetterListener,
    DeliveryError,
    EndReason,
    Failure,
    ignore_dead_letter,
)
from core.events.model import Delivery, Event, GroupStatus, Policy, Selector, State
from core.events.sql.tables import (
    HEAD,
    as_event,
    deliveries,
    events,
    group_query,
    groups,
    no_group,
    selector_of,
    start_of,
    where,
)

_OPEN = (int(State.DELIVERED), int(State.RETRYING))


class SqlGroups:
    """Consumer groups over the `mesh_event_groups` and `mesh_event_deliveries` tables."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self.on_dead_letter: DeadLetterListener = ignore_dead_letter

    async def join(self, group: str, selector: Selector, start: str) -> None:
        cursor = start_of(start)
        row = {"name": group, "types": list(selector.types), "subject": selector.subject}
        try:
            async with self._db.transaction() as tx:
                existing = (await tx.conn.execute(group_query(group))).first()
                if existing is None:
                    await tx.conn.execute(groups.insert(), {**row, "cursor": cursor})
                    return
        except IntegrityError:  # another member created it first
            async with self._db.connect(autocommit=True) as conn:
                existing = (await conn.execute(group_query(group))).first()
        if existing is not None and selector_of(existing) != selector:
            raise FailedPreconditionError(
                f"group {group!r} exists with another selector",
                reason="GROUP_SELECTOR_MISMATCH",
                metadata={"group": group},
            )

    async def claim(self, group: str, consumer: str, limit: int, policy: Policy) -> list[Delivery]:
        now = time.time()
        async with self._db.transaction() as tx:
            row = (await tx.conn.execute(group_query(group, lock=True))).first()
            if row is None:
                raise no_group(group)
            dead: list[DeadLetter] = []
            out = await self._redeliver(tx.conn, group, consumer, limit, policy, now, dead)
            if len(out) < limit:
                out += await self._hand_new(tx.conn, row, consumer, limit - len(out), policy, now)
        for letter in dead:  # announced once stored
            self.on_dead_letter(letter)
        return out

    async def _redeliver(
        self,
        conn: Any,
        group: str,
        consumer: str,
        limit: int,
        policy: Policy,
        now: float,
        dead: list[DeadLetter],
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
                failure = Failure(TIMED_OUT_MESSAGE % row.consumer)
                errors = _append_error(errors, failure, now, row, EndReason.TIMED_OUT)
            values: dict[str, Any] = {"errors": errors, "update_time": now}
            if row.attempts >= policy.max_attempts:
                values |= {"state": int(State.DEAD_LETTERED), "due": None}
                dead.append(_dead_letter(group, as_event(row.body, row.position), row, errors))
            else:
                values |= {
                    "state": int(State.DELIVERED),
                    "attempts": row.attempts + 1,
                    "consumer": consumer,
                    "due": now + policy.visibility,
                }
                out.append(Delivery(as_event(row.body, row.position), row.attempts + 1))
            await conn.execute(_update(group, row.event_id).values(values))
        return out

    async def _hand_new(
        self, conn: Any, group: Any, consumer: str, limit: int, policy: Policy, now: float
    ) -> list[Delivery]:
        head = await conn.scalar(HEAD) or 0
        if head <= group.cursor:
            return []
        query = (
            sa.select(events.c.position, events.c.event_id, events.c.body)
            .where(
                events.c.position > group.cursor,
                events.c.position <= head,
                *where(selector_of(group)),
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
        return [Delivery(as_event(r.body, r.position), 1) for r in rows]

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
        now = time.time()
        failure = Failure(DISCONNECTED_MESSAGE % consumer)
        query = sa.select(
            deliveries.c.event_id, deliveries.c.attempts, deliveries.c.consumer, deliveries.c.errors
        ).where(
            deliveries.c.group_name == group,
            deliveries.c.consumer == consumer,
            deliveries.c.state == int(State.DELIVERED),
        )
        async with self._db.transaction() as tx:
            await tx.conn.execute(group_query(group, lock=True))  # one change at a time, as claim
            for row in (await tx.conn.execute(query)).all():
                errors = _append_error(list(row.errors), failure, now, row, EndReason.DISCONNECTED)
                values = {"state": int(State.RETRYING), "due": now, "update_time": now}
                await tx.conn.execute(
                    _update(group, row.event_id).values(values | {"errors": errors})
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
        self,
        group: str,
        event_id: str,
        *,
        delay: float,
        park: bool,
        error: str,
        policy: Policy,
        reason: EndReason = EndReason.NACKED,
        failure: Failure | None = None,
    ) -> State:
        now = time.time()
        given = failure or Failure("")
        given = Failure(error or "nacked", given.error_type, given.stack)
        letter = None
        async with self._db.transaction() as tx:
            row = (await self._deliveries(tx.conn, group, [event_id]))[event_id]
            if row.state == State.ACKED:
                raise FailedPreconditionError(
                    "the event is already acked", reason="ALREADY_ACKED", metadata={"id": event_id}
                )
            if row.state == State.DEAD_LETTERED:
                return State.DEAD_LETTERED
            errors = _append_error(list(row.errors), given, now, row, reason)
            values: dict[str, Any] = {"errors": errors, "update_time": now}
            if park or row.attempts >= policy.max_attempts:
                values |= {"state": int(State.DEAD_LETTERED), "due": None}
                query = sa.select(events.c.body, events.c.position)
                found = (await tx.conn.execute(query.where(events.c.event_id == event_id))).one()
                letter = _dead_letter(group, as_event(found.body, found.position), row, errors)
            else:
                values |= {"state": int(State.RETRYING), "due": now + delay}
            await tx.conn.execute(_update(group, event_id).values(values))
        if letter is not None:
            self.on_dead_letter(letter)
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
        parsed = as_event(event.body, event.position)
        out += [
            GroupStatus(g.name, State.PENDING) for g in pending if selector_of(g).matches(parsed)
        ]
        return sorted(out, key=lambda s: s.group)

    async def dead_letters(
        self, group: str, after: str, limit: int
    ) -> list[tuple[Event, GroupStatus]]:
        start = start_of(after)
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
            if (await conn.execute(group_query(group))).first() is None:
                raise no_group(group)
            rows = (await conn.execute(query)).all()
        now = time.time()
        return [(as_event(r.body, r.position), _status(r, now)) for r in rows]

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
            if (await tx.conn.execute(group_query(group))).first() is None:
                raise no_group(group)
            result = await tx.conn.execute(deliveries.update().where(*where).values(values))
        return int(result.rowcount)


def _update(group: str, event_id: str) -> sa.Update:
    return deliveries.update().where(
        deliveries.c.group_name == group, deliveries.c.event_id == event_id
    )


def _append_error(
    errors: list[Any], failure: Failure, now: float, row: Any, reason: EndReason
) -> list[Any]:
    """`errors` with one more entry, for the attempt of delivery `row` that ended now."""
    kept = failure.bounded()
    entry = {"message": kept.message, "time": now, "attempt": row.attempts, "reason": int(reason)}
    entry |= {"type": kept.error_type, "stack": kept.stack, "consumer": row.consumer}
    return [*errors, entry][-MAX_ERRORS_KEPT:]


def _error(entry: dict[str, Any]) -> DeliveryError:
    return DeliveryError(
        entry["message"],
        entry["time"],
        entry["attempt"],
        EndReason(entry.get("reason", 0)),
        entry.get("type", ""),
        entry.get("stack", ""),
        entry.get("consumer", ""),
    )


def _dead_letter(group: str, event: Event, row: Any, errors: list[Any]) -> DeadLetter:
    last = _error(errors[-1]) if errors else None
    return DeadLetter(group, row.event_id, event.type, event.subject, row.attempts, last)


def _status(row: Any, now: float) -> GroupStatus:
    state = State(row.state)
    if state == State.DELIVERED and row.due is not None and row.due <= now:
        state = State.RETRYING  # its visibility timeout ran out: it will be handed out again
    errors = [_error(e) for e in row.errors]
    return GroupStatus(row.group_name, state, row.attempts, row.consumer, row.update_time, errors)
