"""Why deliveries end without an ack, and what is kept of each: the attempt records
(`DeliveryError`) both event stores keep per group and event, the failure a consumer sends
back (`Failure`), and the dead letters a store announces (`DeadLetter`)."""

from __future__ import annotations

import enum
import traceback
from collections.abc import Callable
from dataclasses import dataclass

from mesh.events.v1 import events_pb2

MAX_ERRORS_KEPT = 10
MAX_ERROR_CHARS = 1000
MAX_ERROR_TYPE_CHARS = 200
MAX_STACK_CHARS = 4000  # the innermost frames are kept, where the error was raised


class EndReason(enum.IntEnum):
    """Why an attempt ended without an ack; the values are the contract's DeliveryEndReason."""

    UNSPECIFIED = events_pb2.DELIVERY_END_REASON_UNSPECIFIED
    NACKED = events_pb2.DELIVERY_END_REASON_NACKED
    HANDLER_FAILED = events_pb2.DELIVERY_END_REASON_HANDLER_FAILED
    TIMED_OUT = events_pb2.DELIVERY_END_REASON_TIMED_OUT
    DISCONNECTED = events_pb2.DELIVERY_END_REASON_DISCONNECTED


# The errors recorded when a member held an event past the visibility timeout, and when it
# left (its subscription ended) holding one; `%s` is the member (printf style, as Lua's too).
TIMED_OUT_MESSAGE = "consumer '%s' did not ack within the visibility timeout"
DISCONNECTED_MESSAGE = "consumer '%s' disconnected before acking"


@dataclass(slots=True)
class DeliveryError:
    """One attempt that ended without an ack: what happened, when, which attempt and why.

    `error_type` and `stack` are the exception's type and formatted traceback when a
    handler raised, or what a remote consumer sent with its nack; `consumer` is the member
    that held the event then.
    """

    message: str
    time: float
    attempt: int
    reason: EndReason = EndReason.UNSPECIFIED
    error_type: str = ""
    stack: str = ""
    consumer: str = ""


@dataclass(frozen=True, slots=True)
class Failure:
    """Why a consumer gives an event back: the message, and the error's type and stack."""

    message: str
    error_type: str = ""
    stack: str = ""

    @classmethod
    def of(cls, exc: BaseException, prefix: str = "") -> Failure:
        """The failure an exception stands for, with its formatted stack."""
        stack = "".join(traceback.format_exception(exc))
        return cls(f"{prefix}{type(exc).__name__}: {exc}", _qualified(type(exc)), stack)

    def bounded(self) -> Failure:
        """This failure cut to what a store keeps (the stack's innermost frames)."""
        return Failure(
            self.message[:MAX_ERROR_CHARS],
            self.error_type[:MAX_ERROR_TYPE_CHARS],
            self.stack[-MAX_STACK_CHARS:],
        )


def _qualified(kind: type[BaseException]) -> str:
    module = kind.__module__
    return kind.__qualname__ if module == "builtins" else f"{module}.{kind.__qualname__}"


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """An event a group gave up on just now: it was parked or ran out of attempts."""

    group: str
    event_id: str
    event_type: str
    subject: str
    attempts: int
    last: DeliveryError | None


DeadLetterListener = Callable[[DeadLetter], None]


def ignore_dead_letter(_: DeadLetter) -> None:
    """The listener of a store nobody watches."""
