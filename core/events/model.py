"""What an event store is: its types, the interface both backends implement, and validation.

The interface has two halves, the stream (`EventStream`: appends and reads) and the
consumer groups (`GroupStore`: claims, acks, statuses); `EventStore` is both.

The envelope is the contract's own `mesh.events.v1.Event` message: stores keep it
serialized, so an event is parsed once when read and never rebuilt field by field.
Positions are opaque strings owned by the backend (a row number in SQL, a stream id in
Redis); `EventStore.order_key` makes them comparable.
"""

from __future__ import annotations

import enum
import re
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from google.protobuf.timestamp_pb2 import Timestamp

from core.errors import FieldViolation, InvalidArgumentError
from core.events.failures import DeadLetterListener, DeliveryError, EndReason, Failure
from core.timestamps import MAX_SECONDS, MIN_SECONDS, in_range
from core.timestamps import RANGE as TIME_RANGE
from mesh.events.v1 import events_pb2

Event = events_pb2.Event

MAX_TYPE = 200
MAX_SOURCE = 200
MAX_SUBJECT = 500
MAX_ATTRIBUTES = 64
_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
_PATTERN = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*(\.\*)?|\*")
_GROUP = re.compile(r"[A-Za-z0-9._:-]{1,100}")
# Unicode's control characters; NUL above all, which PostgreSQL cannot store in text.
CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")
# What every store can hold (the SQL store keeps microseconds in a BIGINT), in epoch seconds.
MIN_TIME, MAX_TIME = MIN_SECONDS, MAX_SECONDS  # the years 1 to 9999 (core.timestamps)


class State(enum.IntEnum):
    """An event's delivery to one group; the values are the contract's DeliveryState."""

    PENDING = events_pb2.DELIVERY_STATE_PENDING
    DELIVERED = events_pb2.DELIVERY_STATE_DELIVERED
    ACKED = events_pb2.DELIVERY_STATE_ACKED
    RETRYING = events_pb2.DELIVERY_STATE_RETRYING
    DEAD_LETTERED = events_pb2.DELIVERY_STATE_DEAD_LETTERED


@dataclass(frozen=True, slots=True)
class Selector:
    """Which events are wanted: type patterns (exact, or a prefix ending in `.*`) and a subject."""

    types: tuple[str, ...] = ()
    subject: str = ""

    @classmethod
    def parse(cls, types: Sequence[str], subject: str = "", field: str = "selector") -> Selector:
        bad = [
            FieldViolation(f"{field}.types[{i}]", "must be a type, a prefix ending in .*, or *")
            for i, t in enumerate(types)
            if len(t) > MAX_TYPE or not _PATTERN.fullmatch(t)
        ]
        if len(subject) > MAX_SUBJECT:
            bad.append(FieldViolation(f"{field}.subject", f"at most {MAX_SUBJECT} characters"))
        elif CONTROL.search(subject):
            bad.append(FieldViolation(f"{field}.subject", "must not contain control characters"))
        if bad:
            raise InvalidArgumentError(
                "invalid selector", violations=bad, reason="INVALID_SELECTOR"
            )
        return cls(() if "*" in types else tuple(sorted(set(types))), subject)

    @property
    def exact(self) -> tuple[str, ...]:
        return tuple(t for t in self.types if not t.endswith(".*"))

    @property
    def prefixes(self) -> tuple[str, ...]:
        """Each `a.b.*` pattern as the prefix `a.b.` it matches."""
        return tuple(t[:-1] for t in self.types if t.endswith(".*"))

    def matches(self, event: Event) -> bool:
        if self.subject and event.subject != self.subject:
            return False
        if not self.types:
            return True
        return event.type in self.exact or event.type.startswith(self.prefixes)


@dataclass(frozen=True, slots=True)
class Appended:
    """Where one published event was stored; `duplicate` if its id was stored before."""

    id: str
    position: str
    duplicate: bool = False


@dataclass(frozen=True, slots=True)
class Page:
    """Events read from a stream, and the position the read covered up to (the checkpoint).

    `covered` can pass the last event when later events did not match the selector;
    `at_head` says the read reached the newest stored event.
    """

    events: list[Event]
    covered: str
    at_head: bool


@dataclass(frozen=True, slots=True)
class Delivery:
    """An event handed to a group member, and which attempt this is (from 1)."""

    event: Event
    attempt: int


@dataclass(frozen=True, slots=True)
class CaughtUp:
    """A stream delivered every stored event it wanted; `position` is where that was."""

    position: str


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A plain subscription got this far; a caller may resume after `position`."""

    position: str


class GapCause(enum.IntEnum):
    """Why a subscription missed events; the values are the contract's GapCause."""

    RETENTION = events_pb2.GAP_CAUSE_RETENTION
    STORE_LOST = events_pb2.GAP_CAUSE_STORE_LOST


@dataclass(frozen=True, slots=True)
class Lost:
    """What a store tells its loss listener: every event up to `position` is gone."""

    position: str
    cause: GapCause


@dataclass(frozen=True, slots=True)
class Gap:
    """A running plain subscription missed events: it was at `after` and goes on after
    `resume_after`; what lay between is gone (with STORE_LOST, maybe some after it too)."""

    after: str
    resume_after: str
    cause: GapCause
    message: str


@dataclass(slots=True)
class GroupStatus:
    """An event's delivery to one group."""

    group: str
    state: State
    attempts: int = 0
    consumer: str = ""
    update_time: float = 0.0
    errors: list[DeliveryError] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class HistoryQuery:
    selector: Selector
    start_time: float | None = None  # seconds since the epoch, inclusive
    end_time: float | None = None  # exclusive


@dataclass(frozen=True, slots=True)
class Policy:
    """How a group delivers: visibility timeout (seconds) and attempts before dead letters."""

    visibility: float = 30.0
    max_attempts: int = 5


AppendListener = Callable[[Sequence[Event]], None]
LossListener = Callable[[Lost], None]


class EventStream(Protocol):
    """The stream half of an event store: lifecycle, appends and reads.

    Every method is safe to call from several tasks at once and bounded in time.
    `on_append` is called with each batch of newly stored events, in position order and
    without gaps, including events other processes stored when the backend is shared.
    `on_lost` is called when the store finds it lost events (Redis restarted without its
    data, or trimmed entries the live feed had not read): what a listener remembers up
    to that position is no longer in the store.
    """

    name: str
    # Reads run in another process (Redis, PostgreSQL): reading the next page while this
    # one is delivered overlaps them. Not for SQLite, whose reads hold our own GIL.
    read_ahead: bool

    async def open(self, on_append: AppendListener, on_lost: LossListener) -> None: ...
    async def close(self) -> None: ...
    async def check(self) -> str:
        """ "" if healthy, else why the store is degraded; raises if unreachable."""
        ...

    def order_key(self, position: str) -> tuple[int, ...]:
        """A sortable key; raises InvalidArgumentError (INVALID_POSITION) if malformed."""
        ...

    async def append(self, events: Sequence[Event]) -> list[Appended]:
        """Stores events (ids and times already set), all or none, skipping stored ids."""
        ...

    async def head(self) -> str:
        """The newest position, or "" if the stream is empty."""
        ...

    async def read(self, after: str, selector: Selector, limit: int) -> Page:
        """Events after `after` ("" = from the first) that match, oldest first.

        Raises OutOfRangeError if the events after `after` are no longer stored:
        POSITION_EXPIRED (trimmed by the retention) or POSITION_LOST (older than a loss
        of the store's data), with metadata `position`, `resume_after` and `oldest`.
        """
        ...

    async def get(self, event_id: str) -> Event | None: ...
    async def history(self, query: HistoryQuery, after: str, limit: int) -> list[Event]: ...


class GroupStore(Protocol):
    """The consumer-group half of an event store: who holds which event, and its state.

    Every method is safe to call from several tasks at once and bounded in time.
    `on_dead_letter` is called once for each event a group dead-letters (a nack that
    parks it, or an attempt past the limit), after the change is stored.
    """

    on_dead_letter: DeadLetterListener

    async def join(self, group: str, selector: Selector, start: str) -> None:
        """Creates the group at `start` (a position, "" for the beginning) if missing.

        Raises FailedPreconditionError (GROUP_SELECTOR_MISMATCH) for another selector.
        """
        ...

    async def claim(self, group: str, consumer: str, limit: int, policy: Policy) -> list[Delivery]:
        """Hands up to `limit` events to `consumer`: due redeliveries first, then new ones.

        An event past `policy.max_attempts` is dead-lettered instead of handed out.
        """
        ...

    async def next_due(self, group: str) -> float | None:
        """When the next retry or visibility timeout of the group falls due (epoch seconds)."""
        ...

    async def unacked(self, group: str, consumer: str) -> int: ...
    async def release(self, group: str, consumer: str) -> None:
        """The member left: its unacked events become due at once, recorded as DISCONNECTED."""
        ...

    async def ack(self, group: str, event_ids: Sequence[str]) -> int: ...
    async def nack(
        self,
        group: str,
        event_id: str,
        *,
        delay: float,
        park: bool,
        error: str,
        policy: Policy,
        reason: EndReason = EndReason.NACKED,
        failure: Failure | None = None,
    ) -> State:
        """Ends the event's attempt: due again after `delay`, or dead-lettered.

        `error` is the message recorded; `failure`, when given, adds its type and stack.
        """
        ...

    async def status(self, event_id: str) -> list[GroupStatus]: ...
    async def dead_letters(
        self, group: str, after: str, limit: int
    ) -> list[tuple[Event, GroupStatus]]: ...
    async def replay(self, group: str, event_ids: Sequence[str]) -> int: ...


class EventStore(EventStream, GroupStore, Protocol):
    """The interface of the SQL (embedded) and Redis Streams (distributed) backends."""


def check_group(name: str, field: str = "group") -> str:
    if not _GROUP.fullmatch(name):
        raise InvalidArgumentError(
            "invalid group name",
            reason="INVALID_GROUP",
            violations=[FieldViolation(field, "1-100 letters, digits or ._:-")],
        )
    return name


def prepare(event: Event, field: str, max_bytes: int, now: Timestamp) -> list[FieldViolation]:
    """Validates `event` in place and fills in its id, time and version; returns what is wrong."""
    bad: list[FieldViolation] = []

    def need(ok: bool, name: str, description: str) -> None:
        if not ok:
            bad.append(FieldViolation(f"{field}.{name}", description))

    need(bool(event.type), "type", "is required")
    need(len(event.type) <= MAX_TYPE, "type", f"at most {MAX_TYPE} characters")
    need(bool(event.source), "source", "is required")
    need(len(event.source) <= MAX_SOURCE, "source", f"at most {MAX_SOURCE} characters")
    need(len(event.subject) <= MAX_SUBJECT, "subject", f"at most {MAX_SUBJECT} characters")
    for name in ("type", "source", "subject"):
        need(not CONTROL.search(getattr(event, name)), name, "must not contain control characters")
    time = event.time
    need(in_range(time), "time", TIME_RANGE)
    need(not event.id or bool(_ID.fullmatch(event.id)), "id", "1-64 letters, digits or ._:-")
    need(len(event.attributes) <= MAX_ATTRIBUTES, "attributes", f"at most {MAX_ATTRIBUTES}")
    need(len(event.version) <= 32, "version", "at most 32 characters")
    event.ClearField("position")
    size = event.ByteSize()
    need(size <= max_bytes, "data", f"the event is {size} bytes; at most {max_bytes}")
    if not bad:
        event.id = event.id or str(uuid.uuid4())
        event.version = event.version or "1"
        if not event.HasField("time"):
            event.time.CopyFrom(now)
    return bad
