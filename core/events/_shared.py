"""What the live feed and the consumer groups of one bus share.

One change signal (a new event, an ack, the bus closing: every waiting stream re-reads),
the closing flag, store work that must run to its end even when its stream is cancelled,
and the count of delivered events behind the metric `mesh.events.delivered`.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Iterable
from typing import Any, TypeVar

from opentelemetry import metrics

from core.errors import UnavailableError
from core.runtime.monitor import ChangeFeed

T = TypeVar("T")

# Process-wide totals behind mesh.events.delivered, read when metrics are collected (as
# core.resources.cache does): a delivered page pays a dict increment, not the SDK's
# Counter.add (7 us, once per subscriber for every live event).
DELIVERED: Counter[tuple[str, str]] = Counter()  # backend, mode


def _observe_delivered(_: metrics.CallbackOptions) -> Iterable[metrics.Observation]:
    return [
        metrics.Observation(n, {"backend": b, "mode": mode})
        for (b, mode), n in list(DELIVERED.items())
    ]


metrics.get_meter("meshkit.events").create_observable_counter(
    "mesh.events.delivered",
    callbacks=[_observe_delivered],
    unit="{event}",
    description="Events handed to subscribers",
)


class Streams:
    """What every subscription and group member of one bus shares: the signal it waits on.

    Take `changes.waiter()` before reading the store or the ring, then `wait` when the
    read found nothing: a change made in between has already set that waiter.
    """

    def __init__(self) -> None:
        self.changes = ChangeFeed()
        self.closing = asyncio.Event()
        self.delivered = 0  # events handed to this bus's subscriptions and group members

    def reopen(self) -> None:
        """Lets streams run again after `close` (a restarted bus)."""
        self.closing = asyncio.Event()

    def close(self) -> None:
        """Every stream ends at its next step, waiting ones at once."""
        self.closing.set()
        self.changes.notify()

    async def wait(self, timeout: float | None) -> None:
        """Until something is published or acked, the bus closes, or `timeout` passes."""
        changed = self.changes.waiter()
        if self.closing.is_set():
            return
        try:
            async with asyncio.timeout(timeout):
                await changed.wait()
        except TimeoutError:
            pass


class StoreWork:
    """Store calls that run to their end even when the stream that made them is cancelled.

    A database call cut off mid-statement invalidates its connection and leaves it
    unclosed, and a claim cut off after its commit would strand what it handed out. The
    bus waits for such work (`drain`) before its store closes.
    """

    def __init__(self) -> None:
        self._tasks: set[asyncio.Future[Any]] = set()

    def owned(self, work: Awaitable[T]) -> asyncio.Future[T]:
        """`work` as a task that `drain` waits for."""
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def settled(self, work: Awaitable[T]) -> T:
        """The result of `work`, which runs on if the caller is cancelled meanwhile."""
        return await asyncio.shield(self.owned(work))

    async def drain(self, timeout: float) -> None:
        """Waits up to `timeout` seconds for the work under way."""
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=timeout)


def stopping(position: str) -> UnavailableError:
    """The error that ends a stream when the bus closes; it says where to resume."""
    return UnavailableError(
        "the server is stopping; resume after the last checkpoint",
        reason="SERVER_STOPPING",
        metadata={"position": position} if position else None,
    )
