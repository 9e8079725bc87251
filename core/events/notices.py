"""System events: what operators act on, published as events any service can subscribe to.

`SystemNotices` turns three kinds of transitions into `mesh.system.v1.*` events, one
event per transition (a component flapping between checks, or a breaker failing its
trial calls, publishes nothing more until the state really changes back):

| type                                    | data (mesh.events.v1)  | subject                   |
| --------------------------------------- | ---------------------- | ------------------------- |
| `mesh.system.v1.event_dead_lettered`    | DeadLetterNotice       | `groups/<group>/events/<id>` |
| `mesh.system.v1.component_unhealthy`    | ComponentHealthNotice  | `components/<name>`       |
| `mesh.system.v1.component_recovered`    | ComponentHealthNotice  | `components/<name>`       |
| `mesh.system.v1.breaker_opened`         | BreakerNotice          | `breakers/<target>`       |
| `mesh.system.v1.breaker_closed`         | BreakerNotice          | `breakers/<target>`       |

Publishing never holds up what failed: the hooks only queue the event (at most
`capacity`; beyond that new ones are dropped, logged and counted), and one background
task publishes the queue, each try bounded by `publish_timeout`, retrying with backoff
while the store is unreachable (the event keeps its id, so a retry is never stored twice).
A dead-lettered system event is logged but not announced, so a failing subscriber of
`mesh.system.v1.*` cannot feed itself.

Usage (what `core.events.event_bus` does)::

    notices = SystemNotices(bus.publish, source=settings.service_name, depends_on=(bus.name,))
    notices.follow(container.monitor)
    bus.watch_dead_letters(notices.dead_lettered)
    container.register(notices)
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import structlog
from google.protobuf.message import Message
from opentelemetry import metrics

from core.calls.breaker import BreakerState, CircuitBreaker, watch_breakers
from core.events.failures import DeadLetter
from core.events.model import MAX_SUBJECT, Event
from core.runtime.health import Health, HealthState
from core.runtime.lifecycle import Component
from core.runtime.monitor import HealthMonitor
from core.runtime.tasks import BackgroundTask
from mesh.events.v1 import events_pb2 as pb

log = structlog.get_logger()

PREFIX = "mesh.system.v1."
DEAD_LETTERED = PREFIX + "event_dead_lettered"
COMPONENT_UNHEALTHY = PREFIX + "component_unhealthy"
COMPONENT_RECOVERED = PREFIX + "component_recovered"
BREAKER_OPENED = PREFIX + "breaker_opened"
BREAKER_CLOSED = PREFIX + "breaker_closed"

Publish = Callable[[Sequence[Event]], Awaitable[Any]]

_dropped = metrics.get_meter("meshkit.events").create_counter(
    "mesh.events.notices_dropped",
    unit="{event}",
    description="System events dropped because the queue of unpublished ones was full",
)


class SystemNotices(Component):
    """Publishes the process's system events through `publish`, best effort.

    Args:
        publish: Stores a batch of events (`EventBus.publish` or an events client's).
        source: The events' source: the process's service name.
        depends_on: What `publish` needs running.
        capacity: Most events waiting to be published; newer ones are dropped.
        publish_timeout: Bound of one publish try, in seconds.
    """

    name = "system-notices"

    def __init__(
        self,
        publish: Publish,
        *,
        source: str,
        depends_on: tuple[str, ...] = (),
        capacity: int = 1_000,
        publish_timeout: float = 5.0,
    ) -> None:
        self.depends_on = depends_on
        self.published = 0
        self.dropped = 0
        self._publish = publish
        self._source = source
        self._capacity = capacity
        self._timeout = publish_timeout
        self._queue: deque[Event] = deque()
        self._wake = asyncio.Event()
        self._task = BackgroundTask(self.name)
        self._unwatch: Callable[[], None] | None = None

    @property
    def waiting(self) -> int:
        """Events queued and not published yet."""
        return len(self._queue)

    # -- the hooks: each queues at most one event and returns at once ---------------------

    def follow(self, monitor: HealthMonitor) -> None:
        """Announces the components of `monitor` turning UNHEALTHY and recovering."""
        monitor.watch(self.health_changed)

    def dead_lettered(self, letter: DeadLetter) -> None:
        """Announces an event a group gave up on (not a system event: see the module)."""
        if letter.event_type.startswith(PREFIX):
            return  # logged by the bus; announcing it could feed a failing subscriber
        last = letter.last
        data = pb.DeadLetterNotice(
            group=letter.group,
            event_id=letter.event_id,
            event_type=letter.event_type,
            event_subject=letter.subject,
            attempts=letter.attempts,
            reason=pb.DeliveryEndReason.ValueType(int(last.reason) if last else 0),
            error_type=last.error_type if last else "",
            message=last.message if last else "",
        )
        self._offer(DEAD_LETTERED, f"groups/{letter.group}/events/{letter.event_id}", data)

    def health_changed(self, component: str, previous: Health | None, health: Health) -> None:
        """Announces a running component turning UNHEALTHY, or serving again after that."""
        kind = COMPONENT_RECOVERED if health.state.serving else COMPONENT_UNHEALTHY
        data = pb.ComponentHealthNotice(
            component=component,
            state=health.state.value,
            previous_state=previous.state.value if previous else "",
            reason=health.reason,
        )
        self._offer(kind, f"components/{component}", data)

    def breaker_changed(self, breaker: CircuitBreaker, state: BreakerState) -> None:
        """Announces a breaker opening (from closed) or closing."""
        opened = state is BreakerState.OPEN
        data = pb.BreakerNotice(
            target=breaker.target, state=state.value, failures=breaker.failures if opened else 0
        )
        self._offer(
            BREAKER_OPENED if opened else BREAKER_CLOSED, f"breakers/{breaker.target}", data
        )

    def _offer(self, kind: str, subject: str, data: Message) -> None:
        if len(self._queue) >= self._capacity:
            self.dropped += 1
            _dropped.add(1, {"type": kind})
            log.warning("notice.dropped", type=kind, subject=subject, waiting=len(self._queue))
            return
        event = Event(id=str(uuid.uuid4()), type=kind, source=self._source)
        event.subject = subject[:MAX_SUBJECT]
        event.time.FromNanoseconds(time.time_ns())
        event.data.Pack(data)
        self._queue.append(event)
        self._wake.set()

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        self._unwatch = watch_breakers(self.breaker_changed)
        self._task.start(self._run())

    async def stop(self) -> None:
        """Stops following breakers; gives queued events one bounded last try."""
        if self._unwatch is not None:
            self._unwatch()
            self._unwatch = None
        await self._task.stop()
        if self._queue:
            await self._publish_some()

    async def check_health(self) -> Health:
        details = {
            "published": str(self.published),
            "waiting": str(len(self._queue)),
            "dropped": str(self.dropped),
        }
        return Health(HealthState.HEALTHY, "", details)

    async def _run(self) -> None:
        backoff = 0.5
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                if await self._publish_some():
                    backoff = 0.5
                    continue
                await asyncio.sleep(backoff)  # the store is down: retry what is queued
                backoff = min(backoff * 2, 10.0)

    async def _publish_some(self) -> bool:
        """Publishes up to 100 queued events, oldest first; False if that failed."""
        batch = list(self._queue)[:100]
        try:
            async with asyncio.timeout(self._timeout):
                await self._publish(batch)
        except Exception as exc:  # best effort: logged, kept queued, never raised
            log.warning(
                "notice.publish_failed",
                waiting=len(self._queue),
                error_type=type(exc).__name__,
                error=str(exc)[:200],
            )
            return False
        for _ in batch:
            self._queue.popleft()
        self.published += len(batch)
        return True
