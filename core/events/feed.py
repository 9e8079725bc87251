"""The live feed: plain subscriptions, served from a ring of recent events or the store.

Subscriptions pull: each reads at its own pace, from the ring when its position is in
it, from the store when it has fallen behind. Nothing is pushed into per-subscriber
buffers, so a slow subscriber holds no memory and never slows a fast one; gRPC flow
control paces the stream. A new event wakes every waiter through the bus's one change
signal (`core.events._shared.Streams`).
"""

from __future__ import annotations

import bisect
import itertools
import time
import weakref
from collections import deque
from collections.abc import AsyncGenerator, Iterable, Sequence

from opentelemetry import metrics

from core.errors import FieldViolation, InvalidArgumentError, OutOfRangeError
from core.events._shared import DELIVERED, Streams, stopping
from core.events.model import (
    Appended,
    CaughtUp,
    Checkpoint,
    Event,
    EventStream,
    Gap,
    GapCause,
    Lost,
    Page,
    Selector,
)
from core.events.reads import READ_BATCH, SharedReads
from core.runtime.tasks import ShieldedWork

CHECKPOINT_SECONDS = 1.0
LOSSES_KEPT = 64  # losses remembered for subscriptions that have not looked since

_feeds: weakref.WeakSet[LiveFeed] = weakref.WeakSet()  # running feeds, for the lag gauge


def _observe_lag(_: metrics.CallbackOptions) -> Iterable[metrics.Observation]:
    """The most events any live subscription of this process is behind the head."""
    try:
        lags = [feed.lag() for feed in list(_feeds)]
    except RuntimeError:  # the loop changed a subscription meanwhile: skip this reading
        return []
    return [metrics.Observation(max(lags))] if lags else []


metrics.get_meter("meshkit.events").create_observable_gauge(
    "mesh.events.subscriber.lag",
    callbacks=[_observe_lag],
    unit="{event}",
    description="Most events a live subscription is behind the newest (at least; max)",
)


class LiveFeed:
    """Recent events in order, and the subscriptions reading them.

    Args:
        store: The stream the events are stored in.
        streams: The bus's change signal and closing flag.
        work: The bus's store work, which its stop waits for.
        ring_size: Recent events kept in memory for subscribers that keep up.
    """

    def __init__(
        self, store: EventStream, streams: Streams, work: ShieldedWork, *, ring_size: int
    ) -> None:
        self.store = store
        self._streams = streams
        self._reads = SharedReads(store, work)
        self._ring_size = ring_size
        self._ring: list[Event] = []
        self._keys: list[tuple[int, ...]] = []
        self._floor: tuple[int, ...] = ()  # the ring holds every event after this key
        self._floor_known = False
        # The newest event this process stored: until the store's reader has handed it to
        # the ring, the ring is not the head (Redis Streams read it back asynchronously).
        self._stored: tuple[int, ...] = ()
        self._head = ""  # the newest position this process has seen
        self._positions: dict[int, str] = {}  # each live subscription's position, for lag
        self._subscription_ids = itertools.count()
        self._losses: deque[tuple[int, Lost]] = deque(maxlen=LOSSES_KEPT)  # numbered
        self._loss_count = 0

    def reset(self) -> None:
        """Forgets what it held; `begin` starts it again."""
        self._ring, self._keys, self._floor_known, self._stored = [], [], False, ()
        self._reads.clear()

    async def begin(self) -> None:
        """Starts from the store's newest event (the store is open and calls `appended`)."""
        self._head = await self.store.head()
        self._floor = self.store.order_key(self._head)
        self._floor_known = True
        _feeds.add(self)

    def end(self) -> None:
        """Leaves the lag gauge (the bus stops)."""
        _feeds.discard(self)

    def appended(self, batch: Sequence[Event]) -> None:
        """The store's listener: new events, in order, from this or another process."""
        if not self._floor_known:
            return  # begin() reads the head after opening; these are before it or in it
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
        self._streams.changes.notify()

    def stored(self, results: Sequence[Appended]) -> None:
        """This process stored these events (the publisher's results, in order)."""
        for result in reversed(results):
            if not result.duplicate:
                self._stored = max(self._stored, self.store.order_key(result.position))
                return

    def lost(self, lost: Lost) -> None:
        """The store lost every event up to `lost.position`: forget them too, and tell
        every running subscription (each sends a Gap where it stands).

        Subscribers behind it are not served events nobody else can see any more.
        """
        position = lost.position
        key = self.store.order_key(position)
        self._ring, self._keys, self._stored = [], [], ()
        self._reads.clear()
        self._floor = max(self._floor, key)
        if key > self.store.order_key(self._head):
            self._head = position
        self._loss_count += 1
        self._losses.append((self._loss_count, lost))
        self._streams.changes.notify()

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
        head = await self.store.head()
        if key > self.store.order_key(head):
            raise OutOfRangeError(
                f"position {after} is past the newest event",
                reason="POSITION_AHEAD",
                metadata={"position": after, "resume_after": head},
            )
        # Still stored? (The ring may hold events the store trimmed; a resume is judged
        # by the store.) Raises POSITION_EXPIRED or POSITION_LOST if not.
        await self.store.read(after, Selector(), 1)
        return after

    async def subscribe(
        self, selector: Selector, after: str
    ) -> AsyncGenerator[Event | CaughtUp | Checkpoint | Gap, None]:
        """Stored events after `after`, a CaughtUp once, then live ones, with checkpoints.

        When events it should have had are gone (the store lost them, or trimmed them
        before this subscription read them), a Gap says so and the stream goes on.
        """
        streams, changes = self._streams, self._streams.changes
        caught_up = False
        checkpointed, last_checkpoint = after, time.monotonic()
        me = next(self._subscription_ids)
        self._positions[me] = after
        losses = self._loss_count
        try:
            while True:
                changed = changes.waiter()  # taken before reading, so no wake-up is missed
                page, losses = await self._next(after, selector, losses)
                if isinstance(page, Gap):
                    yield page
                    after = checkpointed = page.resume_after
                    self._positions[me] = after
                    continue
                for event in page.events:
                    yield event
                if page.events:
                    streams.delivered += len(page.events)
                    DELIVERED[self.store.name, "subscription"] += len(page.events)
                after = page.covered or after
                self._positions[me] = after
                if page.at_head and not caught_up:
                    caught_up, checkpointed = True, after  # the marker carries the position
                    yield CaughtUp(after)
                now = time.monotonic()
                if after != checkpointed and now - last_checkpoint >= CHECKPOINT_SECONDS:
                    checkpointed, last_checkpoint = after, now
                    yield Checkpoint(after)
                if streams.closing.is_set():
                    yield Checkpoint(after)
                    raise stopping(after)
                if page.at_head and not changed.is_set():
                    # An idle subscription sleeps until the next event; one with a position
                    # not yet checkpointed wakes once more to send it.
                    await streams.wait(CHECKPOINT_SECONDS if after != checkpointed else None)
        finally:
            del self._positions[me]

    async def _next(self, after: str, selector: Selector, seen: int) -> tuple[Page | Gap, int]:
        """What a subscription at `after` that knew of `seen` losses gets next: a Gap if
        events it was due are gone, else a page from the ring or the store; and the losses
        it knows of now."""
        gap, seen = self._gap(after, seen)
        if gap is not None:
            return gap, seen
        page = self._from_ring(after, selector)
        if page is not None:
            return page, seen
        try:
            return await self._reads.read(after, selector), seen
        except OutOfRangeError as exc:  # gone while this subscription ran
            gap, seen = self._gap(after, seen, exc)
            if gap is None:
                raise
            return gap, seen

    def _gap(
        self, after: str, seen: int, expired: OutOfRangeError | None = None
    ) -> tuple[Gap | None, int]:
        """The Gap a subscription at `after` that knew of `seen` losses must send now, if
        any (from the losses since, and a read that found its position gone); and the
        losses it knows of now."""
        key = self.store.order_key
        resume, causes = after, set[GapCause]()
        for number, lost in self._losses:
            if number <= seen:
                continue
            # Lost data may include events stored after what was read: always a Gap.
            if lost.cause == GapCause.STORE_LOST or key(after) < key(lost.position):
                causes.add(lost.cause)
                resume = max(resume, lost.position, key=key)
        if expired is not None:
            lost_data = expired.reason == "POSITION_LOST"
            causes.add(GapCause.STORE_LOST if lost_data else GapCause.RETENTION)
            resume = max(resume, expired.metadata.get("resume_after", ""), key=key)
        if not causes:
            return None, self._loss_count
        return Gap(after, resume, *_why(after, resume, causes)), self._loss_count

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
        at_head = end == len(self._ring)
        if at_head and self._stored > (self._keys[-1] if self._keys else self._floor):
            # The store holds events of ours that its reader has not handed over yet: what
            # the ring lacks is read from the store, so no CaughtUp comes before them.
            if not found:
                return None
            at_head = False
        return Page(found, covered, at_head)


def _why(after: str, resume: str, causes: set[GapCause]) -> tuple[GapCause, str]:
    """A Gap's cause (a loss of data outweighs trimming) and its message."""
    start = after or "the start"
    if GapCause.STORE_LOST not in causes:
        trimmed = f"the events after {start} up to {resume} were trimmed by the retention"
        return GapCause.RETENTION, f"{trimmed} before this subscription read them"
    lost = "the event store lost its data: "
    if resume == after:
        return GapCause.STORE_LOST, f"{lost}any events after {start} not yet received are gone"
    return GapCause.STORE_LOST, (
        f"{lost}the events after {start} up to {resume} are gone, and any after them not "
        "yet received"
    )
