"""The event bus component: validates and publishes, and feeds subscriptions and groups.

Subscriptions pull: each reads at its own pace, from a ring of recent events in memory
when its position is in it, from the store when it has fallen behind. Nothing is pushed
into per-subscriber buffers, so a slow subscriber holds no memory and never slows a fast
one; gRPC flow control paces the stream. A new event wakes every waiter through one
shared signal.

Usage::

    bus = EventBus(SqlEventStore(db), depends_on=("database",))
    await bus.publish([Event(type="mesh.demo.v1.thing.done", source="demo")])
    async for item in bus.subscribe(Selector(("mesh.demo.v1.*",)), start=""):
        ...  # Event, CaughtUp or Checkpoint
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import time
import uuid
import weakref
from collections import Counter, OrderedDict
from collections.abc import AsyncGenerator, Awaitable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import structlog
from google.protobuf.timestamp_pb2 import Timestamp
from opentelemetry import metrics

from core.errors import (
    DomainError,
    FieldViolation,
    InvalidArgumentError,
    OutOfRangeError,
    UnavailableError,
)
from core.events.model import (
    Appended,
    Delivery,
    Event,
    EventStore,
    GroupStatus,
    HistoryQuery,
    Page,
    Policy,
    Selector,
    State,
    check_group,
    prepare,
)
from core.events.tracing import stamp
from core.runtime.health import Health
from core.runtime.lifecycle import Component

log = structlog.get_logger()
T = TypeVar("T")

READ_BATCH = 500
SHARED_PAGES = 8  # full pages of stored events kept for subscribers reading the same ones
GROUP_EVENTS = 1000  # most events the writer stores in one append
CHECKPOINT_SECONDS = 1.0
IDLE_POLL_SECONDS = 1.0

# Process-wide totals behind mesh.events.published and .delivered, read when metrics are
# collected (as core.resources.cache does): an append or a delivered page pays a dict increment,
# not the SDK's Counter.add (7 us, once per subscriber for every live event).
_PUBLISHED: Counter[str] = Counter()  # backend -> events
_DELIVERED: Counter[tuple[str, str]] = Counter()  # backend, mode


def _observe_published(_: metrics.CallbackOptions) -> Iterable[metrics.Observation]:
    return [metrics.Observation(n, {"backend": b}) for b, n in list(_PUBLISHED.items())]


def _observe_delivered(_: metrics.CallbackOptions) -> Iterable[metrics.Observation]:
    return [
        metrics.Observation(n, {"backend": b, "mode": mode})
        for (b, mode), n in list(_DELIVERED.items())
    ]


_meter = metrics.get_meter("meshkit.events")
_meter.create_observable_counter(
    "mesh.events.published",
    callbacks=[_observe_published],
    unit="{event}",
    description="Events stored (duplicates not counted)",
)
_meter.create_observable_counter(
    "mesh.events.delivered",
    callbacks=[_observe_delivered],
    unit="{event}",
    description="Events handed to subscribers",
)
_buses: weakref.WeakSet[EventBus] = weakref.WeakSet()  # running buses, for the lag gauge


def _observe_lag(_: metrics.CallbackOptions) -> Iterable[metrics.Observation]:
    """The most events any live subscription of this process is behind the head."""
    try:
        lags = [bus.lag() for bus in list(_buses)]
    except RuntimeError:  # the loop changed a subscription meanwhile: skip this reading
        return []
    return [metrics.Observation(max(lags))] if lags else []


_meter.create_observable_gauge(
    "mesh.events.subscriber.lag",
    callbacks=[_observe_lag],
    unit="{event}",
    description="Most events a live subscription is behind the newest (at least; max)",
)


@dataclass(frozen=True, slots=True)
class CaughtUp:
    position: str


@dataclass(frozen=True, slots=True)
class Checkpoint:
    position: str


class EventBus(Component):
    """Events over an `EventStore`, as a component.

    Args:
        store: The backend (SQL or Redis Streams).
        depends_on: Components the store needs, e.g. ("database",).
        max_batch: Most events one publish may carry.
        max_event_bytes: Largest serialized event.
        policy: Visibility timeout and attempts of consumer groups.
        ring_size: Recent events kept in memory for subscribers that keep up.
    """

    name = "event-bus"

    def __init__(
        self,
        store: EventStore,
        *,
        depends_on: tuple[str, ...] = (),
        max_batch: int = 500,
        max_event_bytes: int = 256 * 1024,
        policy: Policy | None = None,
        ring_size: int = 2_000,
    ) -> None:
        self.store = store
        self.depends_on = depends_on
        self.max_batch = max_batch
        self.max_event_bytes = max_event_bytes
        self.policy = policy or Policy()
        self._ring_size = ring_size
        self._ring: list[Event] = []
        self._keys: list[tuple[int, ...]] = []
        self._floor: tuple[int, ...] = ()  # the ring holds every event after this key
        self._floor_known = False
        self._head = ""  # the newest position this process has seen
        self._changed = asyncio.Event()
        self._closing = asyncio.Event()
        self._work: set[asyncio.Future[Any]] = set()
        self._pages: OrderedDict[tuple[str, Selector], asyncio.Future[Page]] = OrderedDict()
        self._queue: list[tuple[Sequence[Event], asyncio.Future[list[Appended]]]] = []
        self._queued = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self.published = 0
        self.delivered = 0
        self.serving = False  # EventService is served from this bus (see core.events)
        self._positions: dict[int, str] = {}  # each live subscription's position, for lag
        self._subscription_ids = itertools.count()

    async def start(self) -> None:
        self._closing = asyncio.Event()
        self._ring, self._keys, self._floor_known = [], [], False
        self._pages.clear()
        await self.store.open(self._appended, self._lost)
        self._head = await self.store.head()
        self._floor = self.store.order_key(self._head)
        self._floor_known = True
        self._writer = asyncio.create_task(self._write_queued(), name="event-bus-writer")
        _buses.add(self)

    async def stop(self) -> None:
        _buses.discard(self)
        self.close_streams()
        if self._writer is not None:
            self._writer.cancel()
            await asyncio.gather(self._writer, return_exceptions=True)
            self._writer = None
        for _, waiter in self._queue:
            if not waiter.done():
                waiter.set_exception(UnavailableError("the event bus stopped"))
        self._queue.clear()
        if self._work:
            await asyncio.wait(self._work, timeout=5.0)
        await self.store.close()

    async def check_health(self) -> Health:
        details = {
            "backend": self.store.name,
            "published": str(self.published),
            "delivered": str(self.delivered),
        }
        try:
            problem = await self.store.check()
        except DomainError as exc:  # unreachable: the store says which and why
            if self.serving:
                return Health.unhealthy(exc.message, **details)
            return Health.degraded(f"{exc.message}; events wait in the outbox", **details)
        if problem:
            return Health.degraded(problem, **details)
        return Health.healthy(**details)

    async def _settled(self, work: Awaitable[T]) -> T:
        """Runs store work to its end even when the stream is cancelled meanwhile.

        A database call cut off mid-statement invalidates its connection and leaves it
        unclosed, and a claim cut off after its commit would strand what it handed out.
        `stop` waits for such work before the store closes.
        """
        return await asyncio.shield(self._owned(work))

    def _owned(self, work: Awaitable[T]) -> asyncio.Future[T]:
        """`work` as a task that `stop` waits for."""
        task = asyncio.ensure_future(work)
        self._work.add(task)
        task.add_done_callback(self._work.discard)
        return task

    async def _read(self, after: str, selector: Selector) -> Page:
        """A page of stored events, read once for every subscription that wants it.

        Subscriptions catching up from one position (after a deploy, or a fan-out) read
        the same pages: one store read serves those that ask while it runs, and the last
        SHARED_PAGES full pages are kept, since stored events never change (one trimmed
        by retention meanwhile may still be served from here, which loses nothing). A
        page that reached the head, or failed, is not kept: the next read may find more.
        After a full page the next one is read ahead while this one is delivered, when the
        store's reads run elsewhere (`read_ahead`).
        """
        page = await asyncio.shield(self._page(after, selector))
        if self.store.read_ahead and len(page.events) == READ_BATCH and not page.at_head:
            self._page(page.covered, selector)
        return page

    def _page(self, after: str, selector: Selector) -> asyncio.Future[Page]:
        """The shared read of the page after `after`: under way, kept, or started now."""
        key = (after, selector)
        shared = self._pages.get(key)
        if shared is not None:
            self._pages.move_to_end(key)
            return shared
        shared = self._pages[key] = self._owned(self.store.read(after, selector, READ_BATCH))
        shared.add_done_callback(lambda done: self._keep(key, done))
        while len(self._pages) > SHARED_PAGES:
            self._pages.popitem(last=False)
        return shared

    def _keep(self, key: tuple[str, Selector], done: asyncio.Future[Page]) -> None:
        full = not done.cancelled() and done.exception() is None
        if full:
            page = done.result()
            full = len(page.events) == READ_BATCH and not page.at_head
        if not full and self._pages.get(key) is done:
            del self._pages[key]

    def close_streams(self) -> None:
        """Ends every subscription with UNAVAILABLE (SERVER_STOPPING) so a drain need not wait."""
        self._closing.set()
        self._wake()

    # -- publishing ---------------------------------------------------------------------

    async def publish(self, batch: Sequence[Event], names: Sequence[str] = ()) -> list[Appended]:
        """Validates and stores `batch`, all or none; InvalidArgumentError names each bad event.

        `names` are the events' field paths in errors; default `events[i]`.
        """
        if not batch:
            return []
        if len(batch) > self.max_batch:
            raise InvalidArgumentError(
                f"at most {self.max_batch} events per batch", reason="BATCH_TOO_LARGE"
            )
        now = Timestamp()
        now.FromNanoseconds(time.time_ns())
        bad = []
        for i, event in enumerate(batch):
            name = names[i] if names else f"events[{i}]"
            bad += prepare(event, name, self.max_event_bytes, now)
        if bad:
            raise InvalidArgumentError("invalid event", violations=bad, reason="INVALID_EVENT")
        stamp(batch)  # after validation: the trace context is ours, not the caller's
        if self._writer is None:
            raise UnavailableError("the event bus is not running", reason="EVENTS_UNAVAILABLE")
        waiter: asyncio.Future[list[Appended]] = asyncio.get_running_loop().create_future()
        self._queue.append((batch, waiter))
        self._queued.set()
        return await waiter

    async def _write_queued(self) -> None:
        """Stores queued publishes, the concurrent ones together in one append.

        One transaction (or one Redis script) per group of publishes instead of one per
        publish: under load each append carries the calls that arrived while the last one
        ran. A publish stays all or none, and an id repeated across grouped publishes is
        a duplicate of its first, exactly as if they had come one after another.
        """
        while True:
            await self._queued.wait()
            self._queued.clear()
            while self._queue:
                group: list[tuple[Sequence[Event], asyncio.Future[list[Appended]]]] = []
                size = 0
                while self._queue and (not group or size + len(self._queue[0][0]) <= GROUP_EVENTS):
                    batch, waiter = self._queue.pop(0)
                    group.append((batch, waiter))
                    size += len(batch)
                try:
                    results = await self.store.append([e for batch, _ in group for e in batch])
                except Exception as exc:
                    for _, waiter in group:
                        if not waiter.done():
                            waiter.set_exception(exc)
                    continue
                stored = sum(not r.duplicate for r in results)
                self.published += stored
                _PUBLISHED[self.store.name] += stored
                start = 0
                for batch, waiter in group:
                    if not waiter.done():
                        waiter.set_result(results[start : start + len(batch)])
                    start += len(batch)

    def _appended(self, batch: Sequence[Event]) -> None:
        """The store's listener: new events, in order, from this or another process."""
        if not self._floor_known:
            return  # start() reads the head after opening; these are before it or in it
        for event in batch:
            key = self.store.order_key(event.position)
            if key <= self._floor or (self._keys and key <= self._keys[-1]):
                continue  # seen already (a reader may deliver an event twice)
            self._ring.append(event)
            self._keys.append(key)
            self._head = event.position
        if len(self._ring) > 2 * self._ring_size:
            drop = len(self._ring) - self._ring_size
            self._floor = self._keys[drop - 1]
            del self._ring[:drop], self._keys[:drop]
        self._wake()

    def _lost(self, position: str) -> None:
        """The store lost every event up to `position`: forget them too.

        Subscribers behind it then read from the store, which says POSITION_EXPIRED,
        instead of being served events nobody else can see any more.
        """
        key = self.store.order_key(position)
        self._ring, self._keys = [], []
        self._pages.clear()
        self._floor = max(self._floor, key)
        if key > self.store.order_key(self._head):
            self._head = position
        self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def _wait(self, timeout: float | None) -> None:
        """Until something is published or acked, the bus closes, or `timeout` passes."""
        changed = self._changed
        if self._closing.is_set():
            return
        try:
            async with asyncio.timeout(timeout):
                await changed.wait()
        except TimeoutError:
            pass

    # -- plain subscriptions ------------------------------------------------------------

    async def resolve(self, *, after: str = "", beginning: bool = False) -> str:
        """The position a subscription starts after: given, "" for the beginning, or now.

        A position past the newest stored event is OUT_OF_RANGE: it belongs to another
        store (or one that lost its data), and waiting for it would deliver nothing.
        """
        if not after:
            return "" if beginning else self._head
        try:
            key = self.store.order_key(after)
        except InvalidArgumentError:
            raise InvalidArgumentError(
                "malformed start position",
                reason="INVALID_POSITION",
                violations=[FieldViolation("start.after", "not a position of this event store")],
            ) from None
        if key > self.store.order_key(await self.store.head()):
            raise OutOfRangeError(
                f"position {after} is past the newest event",
                reason="POSITION_AHEAD",
                metadata={"position": after},
            )
        return after

    async def subscribe(
        self, selector: Selector, after: str
    ) -> AsyncGenerator[Event | CaughtUp | Checkpoint, None]:
        """Stored events after `after`, a CaughtUp once, then live ones, with checkpoints."""
        caught_up = False
        checkpointed, last_checkpoint = after, time.monotonic()
        me = next(self._subscription_ids)
        self._positions[me] = after
        try:
            while True:
                changed = self._changed  # taken before reading, so no wake-up is missed
                page = self._from_ring(after, selector)
                if page is None:
                    page = await self._read(after, selector)
                for event in page.events:
                    yield event
                if page.events:
                    self.delivered += len(page.events)
                    _DELIVERED[self.store.name, "subscription"] += len(page.events)
                after = page.covered or after
                self._positions[me] = after
                if page.at_head and not caught_up:
                    caught_up, checkpointed = True, after  # the marker carries the position
                    yield CaughtUp(after)
                now = time.monotonic()
                if after != checkpointed and now - last_checkpoint >= CHECKPOINT_SECONDS:
                    checkpointed, last_checkpoint = after, now
                    yield Checkpoint(after)
                if self._closing.is_set():
                    yield Checkpoint(after)
                    raise _stopping(after)
                if page.at_head and not changed.is_set():
                    # An idle subscription sleeps until the next event; one with a position
                    # not yet checkpointed wakes once more to send it.
                    await self._wait(CHECKPOINT_SECONDS if after != checkpointed else None)
        finally:
            del self._positions[me]

    def lag(self) -> int:
        """The most events a live subscription is behind this process's newest event.

        Counted in the ring of recent events: a subscription behind the ring is at least
        the whole ring behind. Consumer groups are not counted (their backlog is in the store).
        """
        worst = 0
        for after in list(self._positions.values()):
            key = self.store.order_key(after)
            behind = len(self._keys)
            if key >= self._floor:
                behind -= bisect.bisect_right(self._keys, key)
            worst = max(worst, behind)
        return worst

    def _from_ring(self, after: str, selector: Selector) -> Page | None:
        key = self.store.order_key(after)
        if not self._floor_known or key < self._floor:
            return None
        start = bisect.bisect_right(self._keys, key)
        end, found = start, list[Event]()
        while end < len(self._ring) and len(found) < READ_BATCH:
            event = self._ring[end]
            end += 1
            if selector.matches(event):
                found.append(event)
        covered = self._ring[end - 1].position if end > start else after
        return Page(found, covered, end == len(self._ring))

    # -- consumer groups ----------------------------------------------------------------

    async def consume(
        self, group: str, consumer: str, selector: Selector, start: str, max_unacked: int
    ) -> AsyncGenerator[Delivery | CaughtUp, None]:
        """Joins `group` (created at `start` if new) and yields this member's share of events.

        Events stay unacked until `ack`; when the member leaves, they become due again.
        """
        check_group(group)
        await self.store.join(group, selector, start)
        member = f"{consumer or 'member'}.{uuid.uuid4().hex[:8]}"
        log.info("group.joined", group=group, consumer=member)
        held, caught_up = 0, False
        try:
            while True:
                changed = self._changed
                if held >= max_unacked:  # acks may have arrived here or at another instance
                    held = await self._settled(self.store.unacked(group, member))
                batch = []
                if held < max_unacked:
                    claim = self.store.claim(group, member, max_unacked - held, self.policy)
                    batch = await self._settled(claim)
                for delivery in batch:
                    yield delivery
                held += len(batch)
                if batch:
                    self.delivered += len(batch)
                    _DELIVERED[self.store.name, "group"] += len(batch)
                if not batch and not caught_up:
                    caught_up = True
                    yield CaughtUp("")
                if self._closing.is_set():
                    raise _stopping("")
                if not batch and not changed.is_set():
                    due = await self._settled(self.store.next_due(group))
                    wait = IDLE_POLL_SECONDS if due is None else due - time.time()
                    await self._wait(min(max(wait, 0.01), IDLE_POLL_SECONDS))
        finally:
            # Bounded and shielded: a cancelled stream must still give its events back.
            try:
                async with asyncio.timeout(5.0):
                    await self._settled(self.store.release(group, member))
            except Exception:
                log.warning("group.release_failed", group=group, consumer=member)
            log.info("group.left", group=group, consumer=member)

    async def ack(self, group: str, event_ids: Sequence[str]) -> int:
        acked = await self.store.ack(check_group(group), event_ids)
        self._wake()  # members waiting for credit
        return acked

    async def nack(
        self, group: str, event_id: str, *, delay: float, park: bool, error: str
    ) -> State:
        state = await self.store.nack(
            check_group(group), event_id, delay=delay, park=park, error=error, policy=self.policy
        )
        self._wake()
        return state

    async def replay(self, group: str, event_ids: Sequence[str]) -> int:
        replayed = await self.store.replay(check_group(group), event_ids)
        self._wake()
        return replayed

    async def event_status(self, event_id: str) -> tuple[Event | None, list[GroupStatus]]:
        event = await self.store.get(event_id)
        return event, [] if event is None else await self.store.status(event_id)

    async def history(self, query: HistoryQuery, after: str, limit: int) -> list[Event]:
        return await self.store.history(query, after, limit)

    async def dead_letters(
        self, group: str, after: str, limit: int
    ) -> list[tuple[Event, GroupStatus]]:
        return await self.store.dead_letters(check_group(group), after, limit)


def _stopping(position: str) -> UnavailableError:
    return UnavailableError(
        "the server is stopping; resume after the last checkpoint",
        reason="SERVER_STOPPING",
        metadata={"position": position} if position else None,
    )
