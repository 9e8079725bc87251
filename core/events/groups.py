"""Consumer groups: members share a group's events, ack or nack them, and see their state.

A member claims up to its credit of events (due redeliveries first, then new ones) and
holds them unacked until it acks or nacks them; when it leaves, what it held becomes due
again. Members wait on the bus's one change signal, which new events and every ack, nack
and replay set, and poll the store when a retry or visibility timeout falls due.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncGenerator, Sequence

import structlog

from core.events._shared import DELIVERED, Streams, stopping
from core.events.failures import EndReason, Failure
from core.events.model import (
    CaughtUp,
    Delivery,
    Event,
    EventStore,
    GroupStatus,
    Policy,
    Selector,
    State,
    check_group,
)
from core.runtime.tasks import ShieldedWork

log = structlog.get_logger()

IDLE_POLL_SECONDS = 1.0


class ConsumerGroups:
    """The groups of one bus over its store.

    Args:
        store: The backend, which keeps each group's progress and deliveries.
        streams: The bus's change signal and closing flag.
        work: The bus's store work, which its stop waits for.
        policy: Visibility timeout and attempts.
    """

    def __init__(self, store: EventStore, streams: Streams, work: ShieldedWork, policy: Policy):
        self.store = store
        self.policy = policy
        self._streams = streams
        self._work = work

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
        streams, settled = self._streams, self._work.settled
        held, caught_up = 0, False
        try:
            while True:
                changed = streams.changes.waiter()
                if held >= max_unacked:  # acks may have arrived here or at another instance
                    held = await settled(self.store.unacked(group, member))
                batch = []
                if held < max_unacked:
                    claim = self.store.claim(group, member, max_unacked - held, self.policy)
                    batch = await settled(claim)
                for delivery in batch:
                    yield delivery
                held += len(batch)
                if batch:
                    streams.delivered += len(batch)
                    DELIVERED[self.store.name, "group"] += len(batch)
                if not batch and not caught_up:
                    caught_up = True
                    yield CaughtUp("")
                if streams.closing.is_set():
                    raise stopping("")
                if not batch and not changed.is_set():
                    due = await settled(self.store.next_due(group))
                    wait = IDLE_POLL_SECONDS if due is None else due - time.time()
                    await streams.wait(min(max(wait, 0.01), IDLE_POLL_SECONDS))
        finally:
            # Bounded and shielded: a cancelled stream must still give its events back.
            try:
                async with asyncio.timeout(5.0):
                    await settled(self.store.release(group, member))
            except Exception:
                log.warning("group.release_failed", group=group, consumer=member)
            log.info("group.left", group=group, consumer=member)

    async def ack(self, group: str, event_ids: Sequence[str]) -> int:
        """Marks events of `group` done; returns how many became acked by this call."""
        acked = await self.store.ack(check_group(group), event_ids)
        self._streams.changes.notify()  # members waiting for credit
        return acked

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
        state = await self.store.nack(
            check_group(group),
            event_id,
            delay=delay,
            park=park,
            error=error,
            policy=self.policy,
            reason=reason,
            failure=failure,
        )
        self._streams.changes.notify()
        return state

    async def replay(self, group: str, event_ids: Sequence[str]) -> int:
        """Brings dead letters (`event_ids`, or all) back for delivery; returns how many."""
        replayed = await self.store.replay(check_group(group), event_ids)
        self._streams.changes.notify()
        return replayed

    async def event_status(self, event_id: str) -> tuple[Event | None, list[GroupStatus]]:
        """The stored event (None if there is none) and its delivery to each group."""
        event = await self.store.get(event_id)
        return event, [] if event is None else await self.store.status(event_id)

    async def dead_letters(
        self, group: str, after: str, limit: int
    ) -> list[tuple[Event, GroupStatus]]:
        """Up to `limit` of `group`'s dead letters after position `after`, oldest first."""
        return await self.store.dead_letters(check_group(group), after, limit)
