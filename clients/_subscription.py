"""A resuming subscription to EventService: one call after another, each resuming the last.

`Subscription` is what `clients.events.EventsClient.subscribe` returns (see that module
for how it behaves). A call that fails with UNAVAILABLE, or ends, opens the next one after
the last checkpoint or event seen; `_Cursor` keeps that place and the call in flight, so
`aclose()` from any task cancels it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from functools import partial
from types import TracebackType
from typing import Protocol, Self

import grpc

from core.errors import OutOfRangeError, UnavailableError
from core.retries import Retry
from mesh.events.v1 import events_pb2 as pb
from mesh.events.v1.events_pb2 import SubscribeResponse

Call = grpc.aio.UnaryStreamCall[pb.SubscribeRequest, SubscribeResponse]


class Subscriber(Protocol):
    """What a subscription needs of its client (`EventsClient`), read at every reconnect."""

    max_backoff: float
    give_up_after: float | None

    def _open_subscribe(
        self, request: pb.SubscribeRequest, on_call: Callable[[Call], None]
    ) -> AsyncGenerator[SubscribeResponse, None]: ...


class Subscription:
    """The stream `EventsClient.subscribe` returns: iterate it once; see `clients.events`.

    `position` is where the stream would resume (for a plain subscription): the last
    checkpoint or event position received, "" for the beginning, or None while the
    server has not yet said where "now" is.
    """

    def __init__(
        self,
        client: Subscriber,
        request: pb.SubscribeRequest,
        resume: str | None,
        *,
        markers: bool,
    ) -> None:
        self._cursor = _Cursor(initial=resume, position=resume)
        # The generator must not refer back to this object: without a cycle, a consumer
        # that breaks out drops the last reference and asyncio closes the generator at
        # once (cancelling the call) instead of whenever the cycle collector runs.
        self._open = partial(_messages, client, request, self._cursor, markers)
        self._messages: AsyncGenerator[SubscribeResponse, None] | None = None
        self._reading = False  # a task is inside __anext__

    @property
    def position(self) -> str | None:
        return self._cursor.position

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> SubscribeResponse:
        if self._messages is None:
            if self._cursor.closed:
                raise StopAsyncIteration
            self._messages = self._open()
        self._reading = True
        try:
            return await anext(self._messages)
        finally:
            self._reading = False

    async def aclose(self) -> None:
        """Cancels the call; iterating (here or in another task) then ends at once."""
        self._cursor.close()
        messages, self._messages = self._messages, None
        # A generator another task is inside cannot be closed from here; the cancelled
        # call ends that task's read, and the generator returns by itself.
        if messages is not None and not self._reading:
            await messages.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


@dataclass(slots=True)
class _Cursor:
    """Where a subscription started and how far it got (see `Subscription.position`)."""

    initial: str | None
    position: str | None
    call: Call | None = None
    closed: bool = False

    def close(self) -> None:
        self.closed = True
        if self.call is not None:
            self.call.cancel()

    def opened(self, call: Call) -> None:
        self.call = call
        if self.closed:  # closed while the call was being opened
            call.cancel()

    def request(self, template: pb.SubscribeRequest) -> pb.SubscribeRequest:
        """The request of the next call: `template` with the place to start from."""
        request = pb.SubscribeRequest()
        request.CopyFrom(template)
        # The server keeps a group's place; its start matters only when it is created.
        position = self.initial if template.group else self.position
        if position is None:
            request.start.now = True
        elif position == "":
            request.start.beginning = True
        else:
            request.start.after = position
        return request

    def advance(self, message: SubscribeResponse) -> None:
        kind = message.WhichOneof("kind")
        if kind == "event":
            self.position = message.event.position
        elif kind == "caught_up":
            self.position = message.caught_up.position
        elif kind == "checkpoint":
            self.position = message.checkpoint.position
        elif kind == "gap":
            self.position = message.gap.resume_after

    def stopped(self, error: UnavailableError) -> None:
        """A stopping server says how far its last stream got; resume there."""
        if error.reason == "SERVER_STOPPING" and error.metadata.get("position"):
            self.position = error.metadata["position"]


async def _messages(
    client: Subscriber, template: pb.SubscribeRequest, cursor: _Cursor, markers: bool
) -> AsyncGenerator[SubscribeResponse, None]:
    """One call after another: a call that fails with UNAVAILABLE (or ends) opens the next.

    The next call follows after a backoff (core.retries, `retry.scheduled` as
    `events.subscribe`): 0.05 s plus up to 0.05 s of jitter, doubling up to the client's
    `max_backoff`, the count starting over once a call gets a message. An outage longer
    than `give_up_after` raises its last error.
    """
    broken: UnavailableError | None = None  # how the last call that got messages ended
    while not cursor.closed:
        give_up = client.give_up_after
        reconnects = Retry(
            "events.subscribe",
            on=lambda exc: isinstance(exc, UnavailableError) and not cursor.closed,
            attempts=1 if give_up is not None and give_up <= 0 else None,  # 0: never retry
            timeout=give_up if give_up is not None and give_up > 0 else None,
            wait_initial=0.05,
            wait_max=client.max_backoff,
            wait_jitter=0.05,
        )
        try:
            stream, first = await reconnects.call(
                partial(_open, client, template, cursor), after=broken
            )
        except asyncio.CancelledError:
            if _closed_from_elsewhere(cursor):
                return
            raise
        except UnavailableError:
            if cursor.closed:
                return
            raise
        # aclosing: a consumer that breaks out or is cancelled lands here too, and closing
        # the stream ends the call on the server at once (a group member's unacked events
        # go back).
        try:
            async with contextlib.aclosing(stream) as messages:
                cursor.advance(first)
                if markers or _delivered(first):
                    yield first
                async for message in messages:
                    cursor.advance(message)
                    if markers or _delivered(message):
                        yield message
            # The contract says a subscription never ends on its own; if one does anyway,
            # resuming is what the caller wants, as after UNAVAILABLE.
            broken = UnavailableError("the subscription keeps ending")
        except asyncio.CancelledError:
            if _closed_from_elsewhere(cursor):
                return
            raise
        except UnavailableError as exc:  # also a circuit breaker that is open
            cursor.stopped(exc)
            broken = exc


async def _open(
    client: Subscriber, template: pb.SubscribeRequest, cursor: _Cursor
) -> tuple[AsyncGenerator[SubscribeResponse, None], SubscribeResponse]:
    """Opens the next call and waits for its first message; raises UnavailableError if
    the call fails (or ends) before one."""
    if cursor.closed:  # closed during the backoff
        raise UnavailableError("the subscription is closed")
    stream = client._open_subscribe(cursor.request(template), cursor.opened)
    try:
        first = await anext(stream)
    except BaseException as exc:
        await stream.aclose()
        if isinstance(exc, StopAsyncIteration):
            raise UnavailableError("the subscription keeps ending") from None
        if isinstance(exc, UnavailableError):
            cursor.stopped(exc)
        raise
    return stream, first


def _delivered(message: SubscribeResponse) -> bool:
    """True for an event; raises EventsLostError for a gap (without markers, a caller
    would not see it); False for the other markers."""
    if message.HasField("gap"):
        raise EventsLostError(message.gap)
    return message.HasField("event")


class EventsLostError(OutOfRangeError):
    """A running subscription without markers missed events: the server lost or trimmed
    them (the stream's Gap message). Subscribe again with `after=resume_after` to go on.

    Attributes:
        gap: The Gap message: `after`, `resume_after`, `cause` and `message`.
    """

    def __init__(self, gap: pb.Gap) -> None:
        super().__init__(
            gap.message,
            reason="EVENTS_LOST",
            metadata={
                "after": gap.after,
                "resume_after": gap.resume_after,
                "cause": pb.GapCause.Name(gap.cause),
            },
        )
        self.gap = gap


def _closed_from_elsewhere(cursor: _Cursor) -> bool:
    """aclose() from another task cancelled the call, not a cancellation of this task."""
    task = asyncio.current_task()
    return cursor.closed and task is not None and not task.cancelling()
