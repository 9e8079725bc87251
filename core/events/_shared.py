"""What the live feed and the consumer groups of one bus share.

One change signal (a new event, an ack, the bus closing: every waiting stream re-reads),
the closing flag, and the count of delivered events behind the metric
`mesh.events.delivered`. Store work that must run to its end even when its stream is
cancelled goes through one `core.runtime.tasks.ShieldedWork` per bus.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterable

from opentelemetry import metrics

from core.errors import UnavailableError
from core.runtime.monitor import ChangeFeed

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


def stopping(position: str) -> UnavailableError:
    """The error that ends a stream when the bus closes; it says where to resume."""
    return UnavailableError(
        "the server is stopping; resume after the last checkpoint",
        reason="SERVER_STOPPING",
        metadata={"position": position} if position else None,
    )
