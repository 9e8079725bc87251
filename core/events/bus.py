"""The event bus component: one store, and the parts that publish, feed and share its events.

The bus starts and stops its store and holds three parts that share one change signal
(`core.events._shared.Streams`): publishing with write batching (`core.events.publisher`),
the live feed of plain subscriptions (`core.events.feed`), and consumer groups
(`core.events.groups`). Its methods are theirs; the bus adds lifecycle and health.

Usage::

    bus = EventBus(SqlEventStore(db), depends_on=("database",))
    await bus.publish([Event(type="mesh.demo.v1.thing.done", source="demo")])
    async for item in bus.subscribe(Selector(("mesh.demo.v1.*",)), start=""):
        ...  # Event, CaughtUp, Checkpoint or Gap
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Sequence

import structlog

from core.errors import DomainError
from core.events._shared import Streams
from core.events.failures import DeadLetter, DeadLetterListener, EndReason, Failure
from core.events.feed import LiveFeed
from core.events.groups import ConsumerGroups
from core.events.model import (
    Appended,
    CaughtUp,
    Checkpoint,
    Delivery,
    Event,
    EventStore,
    Gap,
    GroupStatus,
    HistoryQuery,
    Policy,
    Selector,
    State,
)
from core.events.publisher import Publisher
from core.runtime.health import PROBE_TIMEOUT, Health
from core.runtime.lifecycle import Component
from core.runtime.tasks import ShieldedWork

__all__ = ["EventBus"]

log = structlog.get_logger()


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
        self.serving = False  # EventService is served from this bus (see core.events)
        self._streams = Streams()
        self._work = ShieldedWork()
        self._publisher = Publisher(store, max_batch=max_batch, max_event_bytes=max_event_bytes)
        self._feed = LiveFeed(store, self._streams, self._work, ring_size=ring_size)
        self._groups = ConsumerGroups(store, self._streams, self._work, policy or Policy())
        self._dead_listeners: list[DeadLetterListener] = []
        store.on_dead_letter = self._dead_lettered

    @property
    def max_batch(self) -> int:
        """Most events one publish may carry."""
        return self._publisher.max_batch

    @property
    def max_event_bytes(self) -> int:
        """Largest serialized event."""
        return self._publisher.max_event_bytes

    @property
    def policy(self) -> Policy:
        """Visibility timeout and attempts of consumer groups."""
        return self._groups.policy

    @property
    def published(self) -> int:
        """Events this bus stored, duplicates not counted."""
        return self._publisher.published

    @property
    def delivered(self) -> int:
        """Events this bus handed to subscriptions and group members."""
        return self._streams.delivered

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Opens the store and starts the feed at its newest event, then the writer."""
        self._streams.reopen()
        self._feed.reset()
        await self.store.open(self._feed.appended, self._feed.lost)
        await self._feed.begin()
        self._publisher.start()

    async def stop(self) -> None:
        """Ends the streams, fails queued publishes, lets store work finish, closes the store."""
        self._feed.end()
        self.close_streams()
        await self._publisher.stop()
        await self._work.drain(timeout=5.0)
        await self.store.close()

    async def check_health(self) -> Health:
        """The store's health; DEGRADED, not UNHEALTHY, when unreachable and not serving."""
        details = {
            "backend": self.store.name,
            "published": str(self.published),
            "delivered": str(self.delivered),
        }
        try:
            async with asyncio.timeout(PROBE_TIMEOUT):
                problem = await self.store.check()
        except (DomainError, TimeoutError) as exc:  # unreachable: the store says which and why
            why = (
                exc.message
                if isinstance(exc, DomainError)
                else f"the event store did not answer within {PROBE_TIMEOUT:g}s"
            )
            if self.serving:
                return Health.unhealthy(why, **details)
            return Health.degraded(f"{why}; events wait in the outbox", **details)
        if problem:
            return Health.degraded(problem, **details)
        return Health.healthy(**details)

    def close_streams(self) -> None:
        """Ends every subscription with UNAVAILABLE (SERVER_STOPPING) so a drain need not wait."""
        self._streams.close()

    # -- publishing and reading -------------------------------------------------------------

    async def publish(self, batch: Sequence[Event], names: Sequence[str] = ()) -> list[Appended]:
        """Validates and stores `batch`, all or none; InvalidArgumentError names each bad event.

        `names` are the events' field paths in errors; default `events[i]`.
        """
        results = await self._publisher.publish(batch, names)
        self._feed.stored(results)
        return results

    async def resolve(self, *, after: str = "", beginning: bool = False) -> str:
        """The position a subscription starts after: given, "" for the beginning, or now."""
        return await self._feed.resolve(after=after, beginning=beginning)

    def subscribe(
        self, selector: Selector, after: str
    ) -> AsyncGenerator[Event | CaughtUp | Checkpoint | Gap, None]:
        """Stored events after `after`, a CaughtUp once, then live ones, with checkpoints;
        a Gap where events it should have had are gone (trimmed or lost), then on."""
        return self._feed.subscribe(selector, after)

    def lag(self) -> int:
        """The most events a live subscription is behind this process's newest event."""
        return self._feed.lag()

    async def history(self, query: HistoryQuery, after: str, limit: int) -> list[Event]:
        """Up to `limit` stored events after `after` that `query` matches, oldest first."""
        return await self.store.history(query, after, limit)

    # -- consumer groups ------------------------------------------------------------------

    def consume(
        self, group: str, consumer: str, selector: Selector, start: str, max_unacked: int
    ) -> AsyncGenerator[Delivery | CaughtUp, None]:
        """Joins `group` (created at `start` if new) and yields this member's share of events.

        Events stay unacked until `ack`; when the member leaves, they become due again.
        """
        return self._groups.consume(group, consumer, selector, start, max_unacked)

    async def ack(self, group: str, event_ids: Sequence[str]) -> int:
        """Marks events of `group` done; returns how many became acked by this call."""
        return await self._groups.ack(group, event_ids)

    async def nack(
        self,
        group: str,
        event_id: str,
        *,
        delay: float,
        park: bool,
        error: str,
        reason: EndReason = EndReason.NACKED,
        failure: Failure | None = None,
    ) -> State:
        """Gives an event back to `group`: due again after `delay` seconds, or parked.

        `error` and `reason` are recorded in the event's status as why this attempt ended,
        with the error's type and stack from `failure` when given.
        """
        return await self._groups.nack(
            group, event_id, delay=delay, park=park, error=error, reason=reason, failure=failure
        )

    def watch_dead_letters(self, listener: DeadLetterListener) -> None:
        """Calls `listener` once for every event a group of this bus dead-letters.

        It runs in the task that stored the change: it must not block (queue the work).
        """
        self._dead_listeners.append(listener)

    def _dead_lettered(self, letter: DeadLetter) -> None:
        last = letter.last
        log.warning(
            "event.dead_lettered",
            group=letter.group,
            id=letter.event_id,
            type=letter.event_type,
            attempts=letter.attempts,
            error_type=last.error_type if last else "",
            error=last.message if last else "",
            # A consumer's stack is logged here; a handler's with its `event.handler_failed`.
            **({"stack": last.stack} if last and last.reason == EndReason.NACKED else {}),
        )
        for listener in self._dead_listeners:
            try:
                listener(letter)
            except Exception:  # a listener's bug must not fail the nack or claim
                log.exception("event.dead_letter_listener_failed", group=letter.group)

    async def replay(self, group: str, event_ids: Sequence[str]) -> int:
        """Brings dead letters (`event_ids`, or all) back for delivery; returns how many."""
        return await self._groups.replay(group, event_ids)

    async def event_status(self, event_id: str) -> tuple[Event | None, list[GroupStatus]]:
        """The stored event (None if there is none) and its delivery to each group."""
        return await self._groups.event_status(event_id)

    async def dead_letters(
        self, group: str, after: str, limit: int
    ) -> list[tuple[Event, GroupStatus]]:
        """Up to `limit` of `group`'s dead letters after position `after`, oldest first."""
        return await self._groups.dead_letters(group, after, limit)
