"""The outbox relay: moves committed outbox rows into the event system, in commit order.

One relay per database does the work: the instances compete for a lock that PostgreSQL
(or, on SQLite, the kernel) releases the moment its holder's process is gone
(`core.events.leadership`). Only the holder relays; followers try for the lock every
`follow_interval` seconds (0.5), so a stopped or crashed holder — SIGKILL included — is
replaced within about that long, not after a lease runs out. When the holder's host dies
without closing its socket, PostgreSQL notices through TCP keepalives within about 11 s.

The holder reads unsent rows in position order, publishes them, then marks them sent. A
crash between the two publishes them again under the same event ids: delivery is at
least once. The event store dedupes by event id, so no event is lost, none is stored
twice, and none overtakes an earlier one; a subscriber that could still see one twice
(a redelivery to a group) dedupes by the event's id.

Each batch is published inside a PRODUCER span (`publish`, see
`core.events.tracing.publish_span`) that continues the writers' trace when the whole
batch came from one, so the publish call carries it on to the events service. The
leader reports its last known backlog as the gauge `mesh.outbox.backlog`, and counts
`mesh.outbox.relayed`.

Usage::

    relay = OutboxRelay(db, bus.publish, depends_on=("database", "event-bus"))
    container.register(relay)
"""

from __future__ import annotations

import asyncio
import time
import uuid
import weakref
from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
import structlog
from google.protobuf import any_pb2
from google.protobuf.timestamp_pb2 import Timestamp
from opentelemetry import metrics

from core import faults
from core.data.database import Database
from core.errors import InvalidArgumentError
from core.events.leadership import leadership_for
from core.events.model import Event
from core.events.outbox import outbox
from core.events.tracing import publish_span
from core.retries import Retry
from core.runtime.health import PROBE_TIMEOUT, Health
from core.runtime.lifecycle import Component
from core.runtime.tasks import BackgroundTask

log = structlog.get_logger()

Publish = Callable[[Sequence[Event]], Awaitable[Any]]

PUBLISH_SECONDS = 5.0  # bound on one publish call
FOLLOW_SECONDS = 0.5  # how often a follower tries to take over
SENT_RETENTION_SECONDS = 3600.0  # sent rows are kept this long for inspection, then deleted
BACKLOG_SECONDS = 5.0  # how often a leader that is behind or failing counts its backlog
# A failed round is tried again after 0.2 s, doubling up to 5 s, until one succeeds.
_ROUNDS = Retry(
    "outbox.relay",
    on=Exception,
    attempts=None,
    timeout=None,
    wait_initial=0.2,
    wait_max=5.0,
    wait_jitter=0.0,
)

_meter = metrics.get_meter("meshkit.events")
_relayed = _meter.create_counter(
    "mesh.outbox.relayed", unit="{event}", description="Outbox events published and marked sent"
)
_relays: weakref.WeakSet[OutboxRelay] = weakref.WeakSet()  # running relays, for the gauge


def _observe_backlog(_: metrics.CallbackOptions) -> Iterable[metrics.Observation]:
    """The leader's last known count of unsent outbox rows (followers report none)."""
    known = [r.last_backlog for r in list(_relays) if r.leader and r.last_backlog is not None]
    return [metrics.Observation(max(known))] if known else []


_meter.create_observable_gauge(
    "mesh.outbox.backlog",
    callbacks=[_observe_backlog],
    unit="{event}",
    description="Committed outbox events not yet relayed, as the relay last counted them",
)


class OutboxRelay(Component):
    """Relays `mesh_outbox` through `publish` (the local bus, or the events client).

    Args:
        db: The database holding the outbox.
        publish: Stores a batch of events, all or none; must dedupe by event id.
        batch: Rows per round.
        interval: Seconds between rounds when the outbox is empty.
        publish_timeout: Bound on one publish call.
        follow_interval: Seconds between a follower's tries to take over; a stopped or
            dead leader is replaced within about this time.
    """

    name = "outbox-relay"

    def __init__(
        self,
        db: Database,
        publish: Publish,
        *,
        depends_on: tuple[str, ...] = ("database",),
        batch: int = 200,
        interval: float = 0.05,
        publish_timeout: float = PUBLISH_SECONDS,
        follow_interval: float = FOLLOW_SECONDS,
    ) -> None:
        self.depends_on = depends_on
        self._db = db
        self._publish = publish
        self._batch = batch
        self._interval = interval
        self._publish_timeout = publish_timeout
        self._follow_interval = follow_interval
        self._leadership = leadership_for(db, self.name)
        self._holder = f"relay-{uuid.uuid4().hex[:12]}"
        self._task = BackgroundTask(self.name)
        self._last_error = ""
        self.leader = False
        self.relayed = 0
        self.rejected = 0  # rows the event service refused on their own (logged)
        self.last_backlog: int | None = None  # unsent rows when last known; None: unknown
        self._counted = 0.0  # time.monotonic() of the last count
        self._cleaned = 0.0  # time.monotonic() of the last deletion of old sent rows

    async def start(self) -> None:
        self._task.start(self._run())
        _relays.add(self)

    async def stop(self) -> None:
        _relays.discard(self)
        await self._task.stop()
        await self._leadership.release()  # another instance takes over at its next try
        self.leader = False

    async def check_health(self) -> Health:
        details = {
            "leader": str(self.leader),
            "relayed": str(self.relayed),
            "rejected": str(self.rejected),
        }
        if self._last_error:
            try:
                async with asyncio.timeout(PROBE_TIMEOUT):  # DEGRADED, even if the database hangs
                    backlog = str(await self.backlog())
            except Exception:  # the database is what fails: its own health says so
                backlog = "an unknown number of"
            return Health.degraded(
                f"outbox delivery failing ({self._last_error}); {backlog} events wait",
                backlog=backlog,
                **details,
            )
        if self.rejected:
            return Health.degraded(f"{self.rejected} outbox events were refused", **details)
        return Health.healthy(**details)

    async def backlog(self) -> int:
        """Committed events not yet relayed."""
        async with self._db.connect(autocommit=True) as conn:
            query = sa.select(sa.func.count()).where(outbox.c.sent_time.is_(None))
            return int(await conn.scalar(query) or 0)

    async def _run(self) -> None:
        """Rounds until stopped; a failed round is retried with backoff, never given up."""
        while True:
            try:
                moved = await _ROUNDS.call(self._round)
            except Exception:  # only when stamina's test mode or off switch caps the tries
                await asyncio.sleep(_ROUNDS.wait_max)
                continue
            if moved < self._batch:  # a full batch means more may wait: go on at once
                await asyncio.sleep(self._interval if self.leader else self._follow_interval)

    async def _round(self) -> int:
        """Takes or keeps the lock and, as the leader, relays one batch; returns how many."""
        try:
            moved = 0
            if await self._lead():
                moved = await self.relay_once()
                if moved < self._batch:
                    self.last_backlog = 0  # as of the read: it found them all
                else:
                    await self._count_backlog()
                if time.monotonic() - self._cleaned > 60:
                    self._cleaned = time.monotonic()
                    await self._delete_sent()
        except Exception as exc:
            self._last_error = type(exc).__name__  # health says so until a round succeeds
            await self._count_backlog()
            raise
        self._last_error = ""
        return moved

    async def _count_backlog(self) -> None:
        """Counts unsent rows for the gauge, at most every BACKLOG_SECONDS; never raises."""
        if not self.leader or time.monotonic() - self._counted < BACKLOG_SECONDS:
            return
        self._counted = time.monotonic()
        try:
            async with asyncio.timeout(1.0):
                self.last_backlog = await self.backlog()
        except Exception:  # the database is what fails: its own health says so
            self.last_backlog = None

    async def relay_once(self) -> int:
        """Publishes the oldest unsent rows, then marks them sent; returns how many."""
        query = (
            sa.select(outbox)
            .where(outbox.c.sent_time.is_(None))
            .order_by(outbox.c.position)
            .limit(self._batch)
        )
        async with self._db.connect(autocommit=True) as conn:
            rows = (await conn.execute(query)).all()
        if not rows:
            return 0
        events = [_event(r) for r in rows]
        async with asyncio.timeout(self._publish_timeout):
            try:
                with publish_span(events):
                    await self._publish(events)
            except InvalidArgumentError as exc:
                if exc.reason == "BATCH_TOO_LARGE" and len(rows) > 1:
                    self._batch = max(1, len(rows) // 2)  # the event service takes fewer
                    return 0
                await self._publish_one_by_one(rows)
        await faults.hit("relay.published")  # tests: a crash before the rows are marked
        positions = [r.position for r in rows]
        async with self._db.transaction() as tx:
            sent = outbox.update().where(outbox.c.position.in_(positions))
            await tx.conn.execute(sent.values(sent_time=datetime.now(UTC)))
        self.relayed += len(rows)
        _relayed.add(len(rows))
        return len(rows)

    async def _publish_one_by_one(self, rows: Sequence[Any]) -> None:
        """Publishes rows singly after the event service refused their batch.

        A row it refuses on its own (too large, say) would block every row after it
        forever; it is logged with its id, counted in health and passed over.
        """
        for row in rows:
            event = _event(row)
            try:
                with publish_span([event]):
                    await self._publish([event])
            except InvalidArgumentError as exc:
                self.rejected += 1
                log.error("relay.rejected", id=row.event_id, type=row.type, error=exc.message)

    async def _lead(self) -> bool:
        """Takes or keeps the relay lock; True while this instance holds it."""
        held = False
        try:
            held = await self._leadership.hold()
        finally:
            if held != self.leader:
                log.info("relay.leader" if held else "relay.follower", holder=self._holder)
                self.leader = held
        return held

    async def _delete_sent(self) -> None:
        cutoff = datetime.now(UTC) - timedelta(seconds=SENT_RETENTION_SECONDS)
        async with self._db.transaction() as tx:
            await tx.conn.execute(outbox.delete().where(outbox.c.sent_time < cutoff))


def _event(row: Any) -> Event:
    data = any_pb2.Any.FromString(row.data)
    stamp = Timestamp()
    stamp.FromDatetime(row.time)
    return Event(
        id=row.event_id,
        type=row.type,
        source=row.source,
        subject=row.subject,
        time=stamp,
        version=row.data_version,
        data=data,
        attributes=dict(row.attributes or {}),
    )
