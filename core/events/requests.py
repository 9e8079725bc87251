"""What a caller of EventService may ask of the bus: its limits, ack ids and page tokens.

The bus takes what in-process callers (handlers, the relay) hand it as it is; requests
from the network go through `EventRequests` first, which checks them the way the
contract (proto/mesh/events/v1/events.proto) says, pages the listings with signed page
tokens, and turns a missing event into NOT_FOUND.

What a caller sees follows `core.events.visibility`: without `events.admin`, only the
events it owns, and no consumer groups.

Usage (in the servicer)::

    requests = EventRequests(bus)
    acked = await requests.ack(request.group, request.event_ids)
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from contextlib import aclosing
from typing import TypeVar

from core.data.pagination import PageTokens, fitting, page_size
from core.errors import FieldViolation, InvalidArgumentError, NotFoundError
from core.events.bus import EventBus
from core.events.failures import Failure
from core.events.model import (
    CONTROL,
    MAX_TIME,
    MIN_TIME,
    Appended,
    CaughtUp,
    Checkpoint,
    Delivery,
    Event,
    Gap,
    GroupStatus,
    HistoryQuery,
    Selector,
    State,
)
from core.events.visibility import require_events_admin, sees, sees_all, stamp_publisher

MAX_ACK_IDS = 1000
MAX_UNACKED = 1000
MAX_RETRY_DELAY = 7 * 24 * 3600.0
MAX_CONSUMER = 100  # characters of a member's name that are kept
# Page tokens carry only a stream position, which any caller may read from anyway; the
# signature binds a token to its query, so no secret is needed.
_TOKENS = PageTokens(b"mesh.events.v1 page tokens")

T = TypeVar("T")
Stream = AsyncGenerator[Event | Delivery | CaughtUp | Checkpoint | Gap, None]


class EventRequests:
    """EventService's operations on `bus`, each checking its request first."""

    def __init__(self, bus: EventBus) -> None:
        self._bus = bus

    async def publish(self, batch: Sequence[Event], names: Sequence[str] = ()) -> list[Appended]:
        """Publishes what a caller sent, stamped with its owner and principal."""
        stamp_publisher(batch)
        return await self._bus.publish(batch, names)

    async def subscribe(
        self,
        selector: Selector,
        *,
        after: str,
        beginning: bool,
        group: str,
        consumer: str,
        max_unacked: int,
    ) -> Stream:
        """A plain subscription, or with `group` a member's share of the group's events.

        The caller closes the stream (`contextlib.aclosing`) when its call ends.
        """
        if group:
            require_events_admin("a consumer group")
        if CONTROL.search(consumer):
            raise _invalid("consumer", "must not contain control characters")
        start = await self._bus.resolve(after=after, beginning=beginning)
        if not group:
            stream = self._bus.subscribe(selector, start)
            return stream if sees_all() else _own(stream)
        limit = _max_unacked(max_unacked)
        return self._bus.consume(group, consumer[:MAX_CONSUMER], selector, start, limit)

    async def ack(self, group: str, event_ids: Sequence[str]) -> int:
        """Acks 1 to MAX_ACK_IDS events of `group`; returns how many this call acked."""
        require_events_admin("Ack")
        return await self._bus.ack(group, _event_ids(event_ids, required=True))

    async def nack(
        self,
        group: str,
        event_id: str,
        *,
        delay: float,
        park: bool,
        error: str,
        failure: Failure | None = None,
    ) -> State:
        """Gives an event back for a retry after `delay` seconds, or parks it.

        `failure` adds the error's type and stack the consumer sent (stored cut to size).
        """
        require_events_admin("Nack")
        _event_ids([event_id], required=True, field="event_id")
        if not 0 <= delay <= MAX_RETRY_DELAY:
            raise _invalid("retry_delay", "must be between 0 and 7 days")
        return await self._bus.nack(
            group, event_id, delay=delay, park=park, error=error, failure=failure
        )

    async def status(self, event_id: str) -> tuple[Event, list[GroupStatus]]:
        """The stored event and its delivery to each group; NOT_FOUND if there is none."""
        _event_ids([event_id], required=True, field="event_id")
        event, groups = await self._bus.event_status(event_id)
        if event is None or not sees(event):  # someone else's: as if there were none
            raise NotFoundError(
                f"no event {event_id!r}", reason="EVENT_NOT_FOUND", metadata={"id": event_id}
            )
        return event, groups

    async def list_events(
        self, query: HistoryQuery, requested_size: int, token: str
    ) -> tuple[list[Event], str]:
        """A page of stored events and the token of the next ("" after the last)."""
        for field, time in (("start_time", query.start_time), ("end_time", query.end_time)):
            if time is not None and not MIN_TIME <= time < MAX_TIME + 1:
                raise _invalid(field, "must be a timestamp from 0001-01-01 to 9999-12-31")

        async def read(after: str, size: int) -> list[Event]:
            return await self._bus.history(query, after, size)

        return await _paged(
            f"events|{query}",
            requested_size,
            token,
            read,
            _event_position,
            keep=sees,
            size_of=Event.ByteSize,
        )

    async def list_dead_letters(
        self, group: str, requested_size: int, token: str
    ) -> tuple[list[tuple[Event, GroupStatus]], str]:
        """A page of `group`'s dead letters and the token of the next ("" after the last)."""

        async def read(after: str, size: int) -> list[tuple[Event, GroupStatus]]:
            return await self._bus.dead_letters(group, after, size)

        return await _paged(
            f"dead-letters|{group}",
            requested_size,
            token,
            read,
            _letter_position,
            keep=lambda letter: sees(letter[0]),
            size_of=_letter_size,
        )

    async def replay(self, group: str, event_ids: Sequence[str]) -> int:
        """Replays up to MAX_ACK_IDS dead letters of `group` (all when none are named)."""
        return await self._bus.replay(group, _event_ids(event_ids, required=False))


async def _paged(
    query: str,
    requested_size: int,
    token: str,
    read: Callable[[str, int], Awaitable[list[T]]],
    position: Callable[[T], str],
    *,
    keep: Callable[[T], bool],
    size_of: Callable[[T], int],
) -> tuple[list[T], str]:
    """One page of `read` after the token's position, and the token of the next page.

    A full read may be followed by more; the next token continues after its last item.
    Items the caller may not see are left out, so a page may hold fewer than its size
    (even none) and still have a next token. A page also ends at MAX_PAGE_BYTES.
    """
    size = page_size(requested_size)
    found = await read(_after(token, query), size)
    kept = fitting(size_of(item) for item in found)
    more = kept < len(found) or len(found) == size
    found = found[:kept]
    next_token = _TOKENS.encode(query, [position(found[-1])]) if more else ""
    return [item for item in found if keep(item)], next_token


def _after(token: str, query: str) -> str:
    if not token:
        return ""
    keys = _TOKENS.decode(token, query)
    if len(keys) != 1 or not isinstance(keys[0], str):
        raise InvalidArgumentError(
            "page_token is not a token this service issued", reason="INVALID_PAGE_TOKEN"
        )
    return keys[0]


def _event_position(event: Event) -> str:
    return event.position


def _letter_position(letter: tuple[Event, GroupStatus]) -> str:
    return letter[0].position


def _letter_size(letter: tuple[Event, GroupStatus]) -> int:
    event, status = letter
    return event.ByteSize() + len(repr(status))  # its texts, about as they are sent


def _max_unacked(requested: int) -> int:
    if requested < 0:
        raise _invalid("max_unacked", "must be 0 or more")
    return min(requested or 100, MAX_UNACKED)


def _event_ids(ids: Sequence[str], *, required: bool, field: str = "event_ids") -> list[str]:
    if required and not any(ids):
        raise _invalid(field, "is required")
    if len(ids) > MAX_ACK_IDS:
        raise _invalid(field, f"at most {MAX_ACK_IDS} ids")
    if any(len(i) > 64 for i in ids):
        raise _invalid(field, "an event id has at most 64 characters")
    if any(CONTROL.search(i) for i in ids):
        raise _invalid(field, "an event id has no control characters")
    return list(ids)


def _invalid(field: str, description: str) -> InvalidArgumentError:
    return InvalidArgumentError(f"invalid {field}", violations=[FieldViolation(field, description)])


async def _own(stream: Stream) -> Stream:
    """`stream` without the events the caller may not see; closes it when closed."""
    async with aclosing(stream):
        async for item in stream:
            if isinstance(item, Event) and not sees(item):
                continue
            yield item
