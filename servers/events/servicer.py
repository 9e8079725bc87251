"""EventService: protobuf in, the event bus, protobuf out."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from contextlib import aclosing

from google.protobuf.timestamp_pb2 import Timestamp

from core.errors import FieldViolation, InvalidArgumentError, NotFoundError
from core.events.bus import CaughtUp, Checkpoint, EventBus
from core.events.model import Delivery, Event, GroupStatus, HistoryQuery, Selector
from core.resources.pagination import PageTokens, page_size
from core.runtime.boundary import Context
from mesh.events.v1 import events_pb2 as pb
from mesh.events.v1 import events_pb2_grpc

MAX_ACK_IDS = 1000
MAX_UNACKED = 1000
MAX_RETRY_DELAY = 7 * 24 * 3600.0
# Page tokens carry only a stream position, which any caller may read from anyway; the
# signature binds a token to its query, so no secret is needed.
_TOKENS = PageTokens(b"mesh.events.v1 page tokens")


WIRE_CACHE = 4096  # events whose serialized SubscribeResponse is kept for other streams


class EventServicer(events_pb2_grpc.EventServiceServicer):
    def __init__(self, bus: EventBus) -> None:
        self._bus = bus
        self._wire: OrderedDict[str, bytes] = OrderedDict()

    async def Publish(self, request: pb.PublishRequest, context: Context) -> pb.PublishResponse:
        [result] = await self._bus.publish([request.event], names=["event"])
        return pb.PublishResponse(
            id=result.id, position=result.position, duplicate=result.duplicate
        )

    async def PublishBatch(
        self, request: pb.PublishBatchRequest, context: Context
    ) -> pb.PublishBatchResponse:
        results = await self._bus.publish(list(request.events))
        return pb.PublishBatchResponse(
            results=[
                pb.PublishResponse(id=r.id, position=r.position, duplicate=r.duplicate)
                for r in results
            ]
        )

    async def Subscribe(  # type: ignore[override]  # may yield serialized messages (core.runtime.boundary)
        self, request: pb.SubscribeRequest, context: Context
    ) -> AsyncIterator[pb.SubscribeResponse | bytes]:
        selector = _selector(request.selector)
        start = request.start
        # An explicitly empty position is the one before the first event.
        beginning = start.WhichOneof("start") in ("beginning", "after")
        after = await self._bus.resolve(after=start.after, beginning=beginning)
        stream: AsyncGenerator[Event | Delivery | CaughtUp | Checkpoint, None]
        if request.group:
            limit = _max_unacked(request.max_unacked)
            consumer = request.consumer[:100]
            stream = self._bus.consume(request.group, consumer, selector, after, limit)
        else:
            stream = self._bus.subscribe(selector, after)
        # Closed here, in this task, when the caller cancels: a group member's unacked
        # events are given back before the handler ends, not whenever the GC runs.
        async with aclosing(stream):
            async for item in stream:
                yield self._wired(item) if isinstance(item, Event) else _message(item)

    def _wired(self, event: Event) -> bytes:
        """The event's SubscribeResponse, serialized once for every subscriber."""
        wire = self._wire.get(event.position)
        if wire is None:
            wire = self._wire[event.position] = _message(event).SerializeToString()
            if len(self._wire) > WIRE_CACHE:
                self._wire.popitem(last=False)
        return wire

    async def Ack(self, request: pb.AckRequest, context: Context) -> pb.AckResponse:
        ids = _event_ids(request.event_ids, required=True)
        return pb.AckResponse(acked_count=await self._bus.ack(request.group, ids))

    async def Nack(self, request: pb.NackRequest, context: Context) -> pb.NackResponse:
        _event_ids([request.event_id], required=True, field="event_id")
        delay = request.retry_delay.ToTimedelta().total_seconds()
        if not 0 <= delay <= MAX_RETRY_DELAY:
            raise _invalid("retry_delay", "must be between 0 and 7 days")
        state = await self._bus.nack(
            request.group, request.event_id, delay=delay, park=request.park, error=request.error
        )
        return pb.NackResponse(state=int(state))  # type: ignore[arg-type]

    async def GetEventStatus(
        self, request: pb.GetEventStatusRequest, context: Context
    ) -> pb.GetEventStatusResponse:
        _event_ids([request.event_id], required=True, field="event_id")
        event, groups = await self._bus.event_status(request.event_id)
        if event is None:
            raise NotFoundError(
                f"no event {request.event_id!r}",
                reason="EVENT_NOT_FOUND",
                metadata={"id": request.event_id},
            )
        return pb.GetEventStatusResponse(event=event, groups=[_group_status(g) for g in groups])

    async def ListEvents(
        self, request: pb.ListEventsRequest, context: Context
    ) -> pb.ListEventsResponse:
        query = HistoryQuery(
            _selector(request.selector),
            _seconds(request.start_time) if request.HasField("start_time") else None,
            _seconds(request.end_time) if request.HasField("end_time") else None,
        )
        size = page_size(request.page_size)
        digest = f"events|{query}"
        after = _after(request.page_token, digest)
        found = await self._bus.history(query, after, size)
        token = _TOKENS.encode(digest, [found[-1].position]) if len(found) == size else ""
        return pb.ListEventsResponse(events=found, next_page_token=token)

    async def ListDeadLetters(
        self, request: pb.ListDeadLettersRequest, context: Context
    ) -> pb.ListDeadLettersResponse:
        size = page_size(request.page_size)
        digest = f"dead-letters|{request.group}"
        after = _after(request.page_token, digest)
        found = await self._bus.dead_letters(request.group, after, size)
        token = _TOKENS.encode(digest, [found[-1][0].position]) if len(found) == size else ""
        letters = [pb.DeadLetter(event=e, status=_group_status(s)) for e, s in found]
        return pb.ListDeadLettersResponse(dead_letters=letters, next_page_token=token)

    async def ReplayDeadLetters(
        self, request: pb.ReplayDeadLettersRequest, context: Context
    ) -> pb.ReplayDeadLettersResponse:
        ids = _event_ids(request.event_ids, required=False)
        replayed = await self._bus.replay(request.group, ids)
        return pb.ReplayDeadLettersResponse(replayed_count=replayed)


def _message(item: Event | Delivery | CaughtUp | Checkpoint) -> pb.SubscribeResponse:
    if isinstance(item, Event):
        return pb.SubscribeResponse(event=item)
    if isinstance(item, Delivery):
        return pb.SubscribeResponse(event=item.event, attempt=item.attempt)
    if isinstance(item, CaughtUp):
        return pb.SubscribeResponse(caught_up=pb.CaughtUp(position=item.position))
    return pb.SubscribeResponse(checkpoint=pb.Checkpoint(position=item.position))


def _selector(selector: pb.Selector) -> Selector:
    return Selector.parse(list(selector.types), selector.subject)


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
    return list(ids)


def _after(token: str, digest: str) -> str:
    if not token:
        return ""
    keys = _TOKENS.decode(token, digest)
    if len(keys) != 1 or not isinstance(keys[0], str):
        raise InvalidArgumentError(
            "page_token is not a token this service issued", reason="INVALID_PAGE_TOKEN"
        )
    return keys[0]


def _group_status(status: GroupStatus) -> pb.GroupStatus:
    return pb.GroupStatus(
        group=status.group,
        state=int(status.state),  # type: ignore[arg-type]
        attempts=status.attempts,
        consumer=status.consumer,
        update_time=_timestamp(status.update_time),
        errors=[
            pb.DeliveryError(message=e.message, time=_timestamp(e.time), attempt=e.attempt)
            for e in status.errors
        ],
    )


def _timestamp(seconds: float) -> Timestamp:
    stamp = Timestamp()
    if seconds:
        stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp


def _seconds(stamp: Timestamp) -> float:
    return stamp.seconds + stamp.nanos / 1e9


def _invalid(field: str, description: str) -> InvalidArgumentError:
    return InvalidArgumentError(f"invalid {field}", violations=[FieldViolation(field, description)])
