"""In-process event handlers: a service consumes a consumer group's events itself.

Subclass `EventHandler`, name the group and the types, and write `process`; register
the handler like any component. It starts after the bus (and whatever else it names)
and stops before them, finishing the events it is working on.

Usage::

    class ProjectIndexer(EventHandler):
        group = "project-indexer"
        types = ("mesh.projects.v1.*",)

        async def process(self, event: Event) -> None:
            await self._index.update(event.subject)

    container.register(ProjectIndexer(bus, depends_on=("database",)))

Each event goes through `validate` (raising rejects it: it is dead-lettered at once),
`process` (retried in-process with backoff, each try bounded by `timeout`; after
`attempts` tries the event is dead-lettered with the last error: its type, message and
stack are logged and kept in the event's status) and `cleanup` (always, with the error
or None). Events of one subject are processed one after another in
stream order; different subjects run concurrently, up to `concurrency` at a time.
Delivery is at least once: after a crash, unacked events come back (to this or another
member), so `process` must tolerate an event it has seen before.

Each event is handled inside a CONSUMER span (`process <type>`, see
`core.events.tracing.consumer_span`) linked to the span that published it; the counter
`mesh.events.handled` counts outcomes by group: processed, failed (a try that raised) and
dead_lettered.
"""

from __future__ import annotations

import asyncio
from collections import deque
from contextlib import aclosing

import structlog
from opentelemetry import metrics, trace

from core.events.bus import EventBus
from core.events.failures import EndReason, Failure
from core.events.model import Delivery, Event, Selector
from core.events.tracing import consumer_span
from core.retries import Retry
from core.runtime.health import Health
from core.runtime.lifecycle import Component
from core.runtime.tasks import cancel_and_wait

log = structlog.get_logger()

_handled = metrics.get_meter("meshkit.events").create_counter(
    "mesh.events.handled",
    unit="{event}",
    description="Events of in-process handlers by outcome: processed, failed, dead_lettered",
)


class EventHandler(Component):
    group: str = ""
    types: tuple[str, ...] = ()
    subject: str = ""
    timeout: float = 10.0  # seconds per try of `process`
    attempts: int = 3  # tries before the event is dead-lettered
    backoff: float = 0.1  # first wait between tries; doubles up to max_backoff
    max_backoff: float = 5.0
    concurrency: int = 8  # subjects processed at once
    from_beginning: bool = True  # where a new group starts: the first event, or now
    stop_timeout: float | None = 15.0  # two thirds of it go to finishing running events

    def __init__(self, bus: EventBus, *, depends_on: tuple[str, ...] = ()) -> None:
        if not self.group:
            raise ValueError(f"{type(self).__name__} must set `group`")
        self.name = f"handler:{self.group}"
        self.depends_on = (bus.name, *depends_on)
        self._bus = bus
        self._reader: asyncio.Task[None] | None = None
        self._lanes: dict[str, deque[Delivery]] = {}  # per subject, in stream order
        self._workers: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(self.concurrency)
        self.processed = 0
        self.dead_lettered = 0
        self._outcomes = {
            outcome: {"messaging.consumer.group.name": self.group, "outcome": outcome}
            for outcome in ("processed", "failed", "dead_lettered")
        }

    # -- what a subclass writes ---------------------------------------------------------

    async def validate(self, event: Event) -> None:
        """Raises to reject an event that can never be processed (it is dead-lettered)."""

    async def process(self, event: Event) -> None:
        raise NotImplementedError

    async def cleanup(self, event: Event, error: BaseException | None) -> None:
        """Runs after every event, processed or not."""

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        self._reader = asyncio.create_task(self._read(), name=self.name)

    async def stop(self) -> None:
        """Takes no more events, lets running ones finish, then gives the rest back."""
        for lane in self._lanes.values():
            lane.clear()  # not started: the group hands them out again
        if self._workers:
            await asyncio.wait(self._workers, timeout=(self.stop_timeout or 15.0) * 2 / 3)
        reader, self._reader = self._reader, None
        await cancel_and_wait(*self._workers, *([reader] if reader is not None else []))

    async def check_health(self) -> Health:
        details = {"processed": str(self.processed), "dead_lettered": str(self.dead_lettered)}
        if self._reader is not None and self._reader.done():
            return Health.unhealthy("the handler stopped reading events", **details)
        return Health.healthy(**details)

    # -- the work -----------------------------------------------------------------------

    async def _read(self) -> None:
        selector = Selector.parse(self.types, self.subject)
        start = "" if self.from_beginning else await self._bus.resolve()
        stream = self._bus.consume(
            self.group, self.name, selector, start, max_unacked=self.concurrency * 4
        )
        async with aclosing(stream):
            async for item in stream:
                if not isinstance(item, Delivery):
                    continue  # the caught-up marker
                subject = item.event.subject
                lane = self._lanes.setdefault(subject, deque())
                lane.append(item)
                if len(lane) == 1:  # no worker on this subject yet
                    worker = asyncio.create_task(self._drain(subject), name=f"{self.name}:lane")
                    self._workers.add(worker)
                    worker.add_done_callback(self._workers.discard)

    async def _drain(self, subject: str) -> None:
        """Processes one subject's events in order until its lane is empty."""
        lane = self._lanes[subject]
        async with self._slots:
            while lane:
                await self._handle(lane[0].event)
                if lane:  # stop() may have cleared it meanwhile
                    lane.popleft()
            del self._lanes[subject]  # empty, and no await since the loop's last check

    async def _handle(self, event: Event) -> None:
        with consumer_span(event, group=self.group) as span:
            error = await self._settle(event, span)
        try:
            await self.cleanup(event, error)
        except Exception:
            log.exception("event.cleanup_failed", group=self.group, id=event.id)

    async def _settle(self, event: Event, span: trace.Span) -> BaseException | None:
        """Validates and processes `event`, then acks it or dead-letters it; returns the error."""
        error: BaseException | None = None
        try:
            await self.validate(event)
        except Exception as exc:
            error, prefix = exc, "rejected: "
        else:
            error, prefix = await self._process(event), ""
        if error is None:
            await self._bus.ack(self.group, [event.id])
            self.processed += 1
            _handled.add(1, self._outcomes["processed"])
            return None
        failure = Failure.of(error, prefix)
        log.warning(
            "event.handler_failed",
            group=self.group,
            id=event.id,
            error_type=failure.error_type,
            error=failure.message,
            exc_info=error,
        )
        span.set_status(trace.StatusCode.ERROR, failure.message)
        span.record_exception(error)
        await self._bus.nack(
            self.group,
            event.id,
            delay=0.0,
            park=True,
            error=failure.message,
            reason=EndReason.HANDLER_FAILED,
            failure=failure,
        )
        self.dead_lettered += 1
        _handled.add(1, self._outcomes["dead_lettered"])
        return error

    async def _process(self, event: Event) -> BaseException | None:
        """Tries `process` up to `attempts` times; returns the last error, or None.

        Try n+1 follows try n after `backoff * 2**(n-1)` seconds, at most `max_backoff`
        (core.retries: each logs `retry.scheduled` as `event.process`).
        """

        async def once() -> None:
            try:
                async with asyncio.timeout(self.timeout):
                    await self.process(event)
            except Exception:
                _handled.add(1, self._outcomes["failed"])
                raise

        tries = Retry(
            "event.process",
            on=Exception,
            attempts=self.attempts,
            timeout=None,
            wait_initial=self.backoff,
            wait_max=self.max_backoff,
            wait_jitter=0.0,
        )
        try:
            await tries.call(once, group=self.group, id=event.id)
        except Exception as exc:
            return exc
        return None
