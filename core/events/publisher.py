"""Publishing: validates batches of events and stores them, concurrent publishes together.

One writer task takes the publishes queued while the last append ran and stores them in
one append (one transaction, or one Redis script), so under load an append carries many
calls instead of one each. Subscribers learn of the stored events from the store's
listener (see `core.events.feed`), not from here.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterable, Sequence

from google.protobuf.timestamp_pb2 import Timestamp
from opentelemetry import metrics

from core.errors import InvalidArgumentError, UnavailableError
from core.events.model import Appended, Event, EventStream, prepare
from core.events.tracing import stamp
from core.runtime.tasks import BackgroundTask

GROUP_EVENTS = 1000  # most events the writer stores in one append

# Process-wide totals behind mesh.events.published, read when metrics are collected: an
# append pays a dict increment, not the SDK's Counter.add.
_PUBLISHED: Counter[str] = Counter()  # backend -> events


def _observe_published(_: metrics.CallbackOptions) -> Iterable[metrics.Observation]:
    return [metrics.Observation(n, {"backend": b}) for b, n in list(_PUBLISHED.items())]


metrics.get_meter("meshkit.events").create_observable_counter(
    "mesh.events.published",
    callbacks=[_observe_published],
    unit="{event}",
    description="Events stored (duplicates not counted)",
)

_Queued = tuple[Sequence[Event], asyncio.Future[list[Appended]]]


class Publisher:
    """Validates and stores batches of events through one writer task.

    Args:
        store: Where events are appended.
        max_batch: Most events one publish may carry.
        max_event_bytes: Largest serialized event.
    """

    def __init__(self, store: EventStream, *, max_batch: int, max_event_bytes: int) -> None:
        self.store = store
        self.max_batch = max_batch
        self.max_event_bytes = max_event_bytes
        self.published = 0  # events stored by this publisher, duplicates not counted
        self._queue: list[_Queued] = []
        self._queued = asyncio.Event()
        self._writer = BackgroundTask("event-bus-writer")

    def start(self) -> None:
        """Starts the writer; publishes fail with UNAVAILABLE until then."""
        self._writer.start(self._write_queued())

    async def stop(self) -> None:
        """Stops the writer; publishes still queued fail with UNAVAILABLE."""
        await self._writer.stop()
        _fail(self._queue, UnavailableError("the event bus stopped"))
        self._queue.clear()

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
        if not self._writer.running:
            raise UnavailableError("the event bus is not running", reason="EVENTS_UNAVAILABLE")
        waiter: asyncio.Future[list[Appended]] = asyncio.get_running_loop().create_future()
        self._queue.append((batch, waiter))
        self._queued.set()
        return await waiter

    async def _write_queued(self) -> None:
        """Stores queued publishes, the concurrent ones together in one append.

        A publish stays all or none, and an id repeated across grouped publishes is a
        duplicate of its first, exactly as if they had come one after another.
        """
        while True:
            await self._queued.wait()
            self._queued.clear()
            while self._queue:
                group: list[_Queued] = []
                size = 0
                while self._queue and (not group or size + len(self._queue[0][0]) <= GROUP_EVENTS):
                    batch, waiter = self._queue.pop(0)
                    group.append((batch, waiter))
                    size += len(batch)
                try:
                    results = await self.store.append([e for batch, _ in group for e in batch])
                except asyncio.CancelledError:
                    # Stopped mid-append: the publishers of this group are answered too (the
                    # append may have stored their events; a retry with the same ids dedupes).
                    _fail(group, UnavailableError("the event bus stopped"))
                    raise
                except Exception as exc:
                    _fail(group, exc)
                    continue
                stored = sum(not r.duplicate for r in results)
                self.published += stored
                _PUBLISHED[self.store.name] += stored
                start = 0
                for batch, waiter in group:
                    if not waiter.done():
                        waiter.set_result(results[start : start + len(batch)])
                    start += len(batch)


def _fail(queued: Sequence[_Queued], error: Exception) -> None:
    for _, waiter in queued:
        if not waiter.done():
            waiter.set_exception(error)
