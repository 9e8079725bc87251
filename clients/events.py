"""Typed client for `mesh.events.v1.EventService`.

Usage::

    async with EventsClient("127.0.0.1:50051") as events:
        sent = await events.publish(
            make_event("mesh.demo.v1.thing.done", "mesh.demo.v1", subject="things/1", data=msg)
        )

        # A plain subscription sees every matching event.
        async for received in events.subscribe(types=["mesh.demo.v1.*"], beginning=True):
            print(received.event.type, received.event.subject)

        # A consumer group shares the events among its members; each is acked when done,
        # or nacked to be retried later (or parked in the group's dead letters).
        # Delivery is at least once: an event whose ack was lost, or whose member went
        # away before acking, comes again. So a consumer whose effect must happen once
        # records the ids it handled (here a set; in practice a table written in the
        # same transaction as the effect) and skips an id it has seen.
        handled: set[str] = set()
        async for received in events.subscribe(types=["mesh.demo.v1.*"], group="billing"):
            event = received.event  # received.attempt is 2 or more on a redelivery
            try:
                if event.id not in handled:
                    charge(event)
                    handled.add(event.id)
            except Exception as exc:
                await events.nack("billing", event.id, retry_delay=5, error=str(exc))
            else:
                await events.ack("billing", [event.id])

`subscribe` yields `pb.SubscribeResponse` messages, the contract's own: `.event` and
`.attempt` (group deliveries count from 1; 0 on a plain subscription). With
`markers=True` it also yields the `caught_up`, `checkpoint` and `gap` messages (tell
them apart with `WhichOneof("kind")`); a caller that stores a checkpoint's position can
later resume with `after=`. A `gap` says events the subscription was due are gone (the
server's Redis lost its data, or the retention trimmed them first); the stream goes on
after `gap.resume_after`. Without markers a gap is not skipped silently: the iterator
raises `EventsLostError` (OUT_OF_RANGE, reason EVENTS_LOST; its `.gap` is the message).
Resuming with `after=` from a position whose events are no longer stored raises
OutOfRangeError, reason POSITION_EXPIRED (trimmed) or POSITION_LOST (lost with Redis's
data), its metadata `resume_after` the position to go on from.

The iterator reconnects by itself when the server is unavailable or stopping, resuming
a plain subscription after the last checkpoint or event it saw (a group's place is kept
by the server), so a restart of the server loses nothing. (One hole: a subscription
that starts at "now" and loses its first call before the server's first message starts
at "now" again.) Reconnects back off exponentially up to `max_backoff`;
after `give_up_after` seconds without a message the UnavailableError is raised. The
iterator runs until the caller breaks out, is cancelled or calls `aclose()`; the call
is then cancelled. Breaking out closes it when the iterator is collected, which
CPython does at once; `async with events.subscribe(...) as stream:` closes it on exit.

Every method raises the `core.errors` exception for a failed call (InvalidArgumentError
with `.violations`, NotFoundError, ...). Unary calls have a default deadline, and gRPC
retries UNAVAILABLE with backoff when that is safe (`IDEMPOTENT`): for reads, for `ack`
(acking twice changes nothing) and for publishes, because every event gets an id
before the first try and the server stores an id only once. `nack` and `replay` are
not retried.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncGenerator, Callable, Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import ClassVar

from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from clients._subscription import Call, EventsLostError, Subscription
from clients.base import ChannelSettings, Client, Resilience
from core.events.failures import Failure
from mesh.events.v1 import events_pb2 as pb
from mesh.events.v1 import events_pb2_grpc
from mesh.events.v1.events_pb2 import Event, PublishResponse, SubscribeResponse

__all__ = [
    "Event",
    "EventsClient",
    "EventsLostError",
    "PublishResponse",
    "Resilience",
    "SubscribeResponse",
    "Subscription",
    "make_event",
]


IDEMPOTENT = frozenset(
    {
        "Publish",  # every event has an id; the server stores an id once
        "PublishBatch",
        "Ack",  # acking an acked event changes nothing
        "GetEventStatus",
        "ListEvents",
        "ListDeadLetters",
    }
)


def make_event(
    type: str,
    source: str,
    *,
    subject: str = "",
    data: Message | None = None,
    attributes: Mapping[str, str] | None = None,
    id: str = "",
) -> Event:
    """An event with `data` packed into its Any; the server fills in time and version."""
    event = Event(id=id, type=type, source=source, subject=subject, attributes=attributes)
    if data is not None:
        event.data.Pack(data)
    return event


class EventsClient(Client):
    """See the module docstring.

    Args:
        address: HOST:PORT, a list of IP:PORT or dns:///NAME:PORT of EventService.
        resilience: Default deadline, retries and circuit breaker of unary calls.
        channel: Keepalive, message size and TLS.
        deadline: Shorthand for `resilience.deadline`.
        attempts: Shorthand for `resilience.attempts`.
        max_backoff: Longest pause between two reconnects of a subscription.
        give_up_after: Seconds a subscription keeps reconnecting without receiving
            anything before it raises the UnavailableError; None for forever.
    """

    service: ClassVar[str] = "mesh.events.v1.EventService"
    idempotent: ClassVar[frozenset[str]] = IDEMPOTENT

    def __init__(
        self,
        address: str,
        *,
        resilience: Resilience | None = None,
        channel: ChannelSettings | None = None,
        deadline: float | None = None,
        attempts: int | None = None,
        max_backoff: float = 5.0,
        give_up_after: float | None = 60.0,
    ) -> None:
        super().__init__(
            address, resilience=resilience, channel=channel, deadline=deadline, attempts=attempts
        )
        self.max_backoff = max_backoff
        self.give_up_after = give_up_after

    @property
    def _stub(self) -> events_pb2_grpc.EventServiceAsyncStub:
        return events_pb2_grpc.EventServiceStub(self.channel)

    # -- publishing -----------------------------------------------------------------------

    async def publish(self, event: Event, *, timeout: float | None = None) -> PublishResponse:
        """Stores `event`; `duplicate` is set if its id was stored before.

        An event without an id is sent with a new UUID (the caller's message is left as
        it is), so a retry after a lost response cannot store it twice.
        """
        request = pb.PublishRequest(event=_with_id(event))
        return await self._unary("Publish", self._stub.Publish, request, timeout)

    async def publish_batch(
        self, events: Iterable[Event], *, timeout: float | None = None
    ) -> list[PublishResponse]:
        """Stores `events` in order, all or none; one result per event."""
        request = pb.PublishBatchRequest(events=[_with_id(e) for e in events])
        response = await self._unary("PublishBatch", self._stub.PublishBatch, request, timeout)
        return list(response.results)

    # -- subscribing ----------------------------------------------------------------------

    def subscribe(
        self,
        *,
        types: Sequence[str] = (),
        subject: str = "",
        after: str = "",
        beginning: bool = False,
        group: str = "",
        consumer: str = "",
        max_unacked: int = 0,
        markers: bool = False,
    ) -> Subscription:
        """Streams events until closed, reconnecting when the server is unavailable.

        Args:
            types: Type patterns (exact, or a prefix ending in `.*`); empty for all.
            subject: Only events about this subject, when set.
            after: Start after this position (a checkpoint or an event's position).
            beginning: Start from the first stored event. Without `after` or
                `beginning`, the subscription starts with the events stored from now on.
            group: A consumer group to join; its members share the events and ack them.
                The start applies only when the group is created.
            consumer: This member's name in the group, for status and logs.
            max_unacked: For a group: most unacked events held at once (0: server default).
            markers: Also yield the caught_up, checkpoint and gap messages; without
                them a gap raises EventsLostError.
        """
        if after and beginning:
            raise ValueError("give either after or beginning, not both")
        request = pb.SubscribeRequest(
            selector=pb.Selector(types=types, subject=subject),
            group=group,
            consumer=consumer,
            max_unacked=max_unacked,
        )
        # None: "now", resolved by the server; "": from the beginning; else a position.
        resume = after if after else ("" if beginning else None)
        return Subscription(self, request, resume, markers=markers)

    async def ack(
        self, group: str, event_ids: Sequence[str], *, timeout: float | None = None
    ) -> int:
        """Marks events delivered to `group` done; returns how many became acked by this call.

        Retried on UNAVAILABLE, since acking an acked event changes nothing; a retry
        after a lost response therefore counts 0 for the events the first try acked.
        """
        request = pb.AckRequest(group=group, event_ids=event_ids)
        response = await self._unary("Ack", self._stub.Ack, request, timeout)
        return response.acked_count

    async def nack(
        self,
        group: str,
        event_id: str,
        *,
        retry_delay: float | timedelta | None = None,
        park: bool = False,
        error: str | BaseException = "",
        timeout: float | None = None,
    ) -> pb.DeliveryState.ValueType:
        """Gives an event back to `group`: retried after `retry_delay` (seconds), or parked.

        `error` is why: a message, or the exception the consumer failed with, whose type,
        message and stack trace are then recorded in the event's status. Returns its
        DeliveryState after the nack. Not retried: a second nack would count as another
        failed attempt.

        Usage::

            try:
                await handle(delivery.event)
            except Exception as exc:
                await events.nack(group, delivery.event.id, retry_delay=5, error=exc)
        """
        request = pb.NackRequest(group=group, event_id=event_id, park=park)
        if isinstance(error, BaseException):
            failure = Failure.of(error).bounded()
            request.error, request.error_type, request.stack = (
                failure.message,
                failure.error_type,
                failure.stack,
            )
        else:
            request.error = error
        if isinstance(retry_delay, int | float):
            retry_delay = timedelta(seconds=retry_delay)
        if retry_delay is not None:
            request.retry_delay.CopyFrom(_duration(retry_delay))
        response = await self._unary("Nack", self._stub.Nack, request, timeout)
        return response.state

    # -- reading --------------------------------------------------------------------------

    async def status(
        self, event_id: str, *, timeout: float | None = None
    ) -> pb.GetEventStatusResponse:
        """The stored event and, for every group that wants it, how far its delivery got."""
        request = pb.GetEventStatusRequest(event_id=event_id)
        return await self._unary("GetEventStatus", self._stub.GetEventStatus, request, timeout)

    async def history(
        self,
        *,
        types: Sequence[str] = (),
        subject: str = "",
        start_time: datetime | None = None,
        end_time: datetime | None = None,
        page_size: int = 0,
        page_token: str = "",
        timeout: float | None = None,
    ) -> pb.ListEventsResponse:
        """One page of stored events, oldest first; pass `next_page_token` back for more.

        `start_time` is inclusive, `end_time` exclusive; naive datetimes are taken as UTC.
        """
        request = pb.ListEventsRequest(
            selector=pb.Selector(types=types, subject=subject),
            page_size=page_size,
            page_token=page_token,
        )
        if start_time is not None:
            request.start_time.CopyFrom(_timestamp(start_time))
        if end_time is not None:
            request.end_time.CopyFrom(_timestamp(end_time))
        return await self._unary("ListEvents", self._stub.ListEvents, request, timeout)

    async def dead_letters(
        self,
        group: str,
        *,
        page_size: int = 0,
        page_token: str = "",
        timeout: float | None = None,
    ) -> pb.ListDeadLettersResponse:
        """One page of `group`'s dead letters, oldest first, each with its delivery status."""
        request = pb.ListDeadLettersRequest(group=group, page_size=page_size, page_token=page_token)
        return await self._unary("ListDeadLetters", self._stub.ListDeadLetters, request, timeout)

    async def replay(
        self, group: str, ids: Sequence[str] = (), *, timeout: float | None = None
    ) -> int:
        """Brings dead letters (`ids`, or all when empty) back for delivery; returns how many.

        Not retried: replaying "all" again could bring back letters parked since.
        """
        request = pb.ReplayDeadLettersRequest(group=group, event_ids=ids)
        response = await self._unary(
            "ReplayDeadLetters", self._stub.ReplayDeadLetters, request, timeout
        )
        return response.replayed_count

    # -- internals ------------------------------------------------------------------------

    def _open_subscribe(
        self, request: pb.SubscribeRequest, on_call: Callable[[Call], None]
    ) -> AsyncGenerator[SubscribeResponse, None]:
        """One Subscribe call of a `Subscription`; `on_call` gets the call to cancel it."""
        return self._stream("Subscribe", self._stub.Subscribe, request, on_call=on_call)


def _with_id(event: Event) -> Event:
    if event.id:
        return event
    copy = Event()
    copy.CopyFrom(event)
    copy.id = str(uuid.uuid4())
    return copy


def _timestamp(when: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(when)  # naive datetimes are UTC
    return stamp


def _duration(delay: timedelta) -> Duration:
    duration = Duration()
    duration.FromTimedelta(delay)
    return duration
