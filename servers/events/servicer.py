"""EventService: protobuf in, the event bus, protobuf out."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import AsyncIterator
from contextlib import aclosing

from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from core.events.bus import EventBus
from core.events.failures import Failure
from core.events.model import (
    CaughtUp,
    Checkpoint,
    Delivery,
    Event,
    Gap,
    GroupStatus,
    HistoryQuery,
    Selector,
)
from core.events.requests import EventRequests
from core.runtime.boundary import Context
from mesh.events.v1 import events_pb2 as pb
from mesh.events.v1 import events_pb2_grpc

WIRE_CACHE = 4096  # events whose serialized SubscribeResponse is kept for other streams


class EventServicer(events_pb2_grpc.EventServiceServicer):
    def __init__(self, bus: EventBus, *, return_stacks: bool = True) -> None:
        self._bus = bus
        self._stacks = return_stacks  # MESH_EVENTS_RETURN_STACKS: development only
        self._requests = EventRequests(bus)
        self._wire: OrderedDict[str, bytes] = OrderedDict()

    async def Publish(self, request: pb.PublishRequest, context: Context) -> pb.PublishResponse:
        [result] = await self._requests.publish([request.event], names=["event"])
        return pb.PublishResponse(
            id=result.id, position=result.position, duplicate=result.duplicate
        )

    async def PublishBatch(
        self, request: pb.PublishBatchRequest, context: Context
    ) -> pb.PublishBatchResponse:
        results = await self._requests.publish(list(request.events))
        return pb.PublishBatchResponse(
            results=[
                pb.PublishResponse(id=r.id, position=r.position, duplicate=r.duplicate)
                for r in results
            ]
        )

    async def Subscribe(  # type: ignore[override]  # may yield serialized messages (core.runtime.boundary)
        self, request: pb.SubscribeRequest, context: Context
    ) -> AsyncIterator[pb.SubscribeResponse | bytes]:
        start = request.start
        stream = await self._requests.subscribe(
            _selector(request.selector),
            after=start.after,
            # An explicitly empty position is the one before the first event.
            beginning=start.WhichOneof("start") in ("beginning", "after"),
            group=request.group,
            consumer=request.consumer,
            max_unacked=request.max_unacked,
        )
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
        acked = await self._requests.ack(request.group, request.event_ids)
        return pb.AckResponse(acked_count=acked)

    async def Nack(self, request: pb.NackRequest, context: Context) -> pb.NackResponse:
        state = await self._requests.nack(
            request.group,
            request.event_id,
            delay=_seconds(request.retry_delay),  # ToTimedelta() overflows on huge ones
            park=request.park,
            error=request.error,
            failure=Failure(request.error, request.error_type, request.stack),
        )
        return pb.NackResponse(state=int(state))  # type: ignore[arg-type]

    async def GetEventStatus(
        self, request: pb.GetEventStatusRequest, context: Context
    ) -> pb.GetEventStatusResponse:
        event, groups = await self._requests.status(request.event_id)
        found = [_group_status(g, self._stacks) for g in groups]
        return pb.GetEventStatusResponse(event=event, groups=found)

    async def ListEvents(
        self, request: pb.ListEventsRequest, context: Context
    ) -> pb.ListEventsResponse:
        query = HistoryQuery(
            _selector(request.selector),
            _seconds(request.start_time) if request.HasField("start_time") else None,
            _seconds(request.end_time) if request.HasField("end_time") else None,
        )
        found, token = await self._requests.list_events(
            query, request.page_size, request.page_token
        )
        return pb.ListEventsResponse(events=found, next_page_token=token)

    async def ListDeadLetters(
        self, request: pb.ListDeadLettersRequest, context: Context
    ) -> pb.ListDeadLettersResponse:
        found, token = await self._requests.list_dead_letters(
            request.group, request.page_size, request.page_token
        )
        letters = [pb.DeadLetter(event=e, status=_group_status(s, self._stacks)) for e, s in found]
        return pb.ListDeadLettersResponse(dead_letters=letters, next_page_token=token)

    async def ReplayDeadLetters(
        self, request: pb.ReplayDeadLettersRequest, context: Context
    ) -> pb.ReplayDeadLettersResponse:
        replayed = await self._requests.replay(request.group, request.event_ids)
        return pb.ReplayDeadLettersResponse(replayed_count=replayed)


def _message(item: Event | Delivery | CaughtUp | Checkpoint | Gap) -> pb.SubscribeResponse:
    if isinstance(item, Event):
        return pb.SubscribeResponse(event=item)
    if isinstance(item, Delivery):
        return pb.SubscribeResponse(event=item.event, attempt=item.attempt)
    if isinstance(item, CaughtUp):
        return pb.SubscribeResponse(caught_up=pb.CaughtUp(position=item.position))
    if isinstance(item, Gap):
        gap = pb.Gap(
            after=item.after,
            resume_after=item.resume_after,
            cause=int(item.cause),  # type: ignore[arg-type]
            message=item.message,
        )
        return pb.SubscribeResponse(gap=gap)
    return pb.SubscribeResponse(checkpoint=pb.Checkpoint(position=item.position))


def _selector(selector: pb.Selector) -> Selector:
    return Selector.parse(list(selector.types), selector.subject)


def _group_status(status: GroupStatus, stacks: bool) -> pb.GroupStatus:
    return pb.GroupStatus(
        group=status.group,
        state=int(status.state),  # type: ignore[arg-type]
        attempts=status.attempts,
        consumer=status.consumer,
        update_time=_timestamp(status.update_time),
        errors=[
            pb.DeliveryError(
                message=e.message,
                time=_timestamp(e.time),
                attempt=e.attempt,
                reason=int(e.reason),  # type: ignore[arg-type]
                error_type=e.error_type,
                stack=e.stack if stacks else "",
                consumer=e.consumer,
            )
            for e in status.errors
        ],
    )


def _timestamp(seconds: float) -> Timestamp:
    stamp = Timestamp()
    if seconds:
        stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp


def _seconds(stamp: Timestamp | Duration) -> float:
    return stamp.seconds + stamp.nanos / 1e9
