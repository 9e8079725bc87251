"""The distributed event store: one Redis stream shared by every instance, and its groups.

Every change of state is one Lua script, so it is atomic however many instances share
the Redis: an append (dedupe, XADD, retention), a claim (due redeliveries, then new
entries through XREADGROUP), an ack, a nack. Keys, all under `{namespace}:events:`:

    stream        the events: fields i (id), y (type), s (subject), t (time, us), b (body)
    ids           hash  event id -> stream id (dedupe, `get`, `status`)
    log           zset  "<padded stream id>:<event id>", score 0: every stored event in
                  order, so retention can trim the stream, `ids` and statuses together
    st:<event>    hash  group -> JSON {s: state, a: attempts, c: consumer, t: ms, e: errors}
    groups        hash  group -> JSON selector
    due:<group>   zset  padded stream id -> when it is handed out again (ms): every open
                  delivery, on a visibility timeout (DELIVERED) or a retry (RETRYING)
    dead:<group>  zset  padded stream id, score 0: the dead letters, in position order
    alive         a token written at open; gone means Redis lost its data

The group's PEL holds exactly its DELIVERED entries (XREADGROUP adds them, XCLAIM moves
them to the member that takes them over, ack, nack and dead-lettering XACK them), so
XPENDING and XINFO show who holds what. Redelivery is driven by `due:<group>` rather
than XAUTOCLAIM: XAUTOCLAIM cannot be told "not before T" (XCLAIM clamps a future TIME
to now), so a retry delay longer than the visibility timeout would be cut short. A
retry re-enters the PEL through XCLAIM FORCE when it falls due.

Times inside scripts come from Redis (TIME), so instances with skewed clocks agree.
Scripts use keys they build from the prefix: fine on one Redis, not on Redis Cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import structlog
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from core.errors import (
    FailedPreconditionError,
    FieldViolation,
    InvalidArgumentError,
    NotFoundError,
    OutOfRangeError,
    UnavailableError,
)
from core.events import _redis_lua as lua
from core.events.model import (
    MAX_ERROR_CHARS,
    Appended,
    AppendListener,
    Delivery,
    DeliveryError,
    Event,
    GroupStatus,
    HistoryQuery,
    LossListener,
    Page,
    Policy,
    Selector,
    State,
)

log = structlog.get_logger()

T = TypeVar("T")

_POSITION = re.compile(r"(\d{1,20})-(\d{1,20})")
_U64 = 2**64
_READ_COUNT = 500  # events per XREAD of the live feed
_BLOCK = 1.0  # seconds XREAD blocks; below the socket timeout, so a quiet feed is not an error
# After a read that found events, the reader waits this long before the next XREAD, so
# under load one round trip carries several events: each redis-py call costs the event
# loop 120-180 us of CPU, about a fifth of a publish's. A blocked XREAD answers the first
# event after a quiet spell at once; events in a busy stream wait at most this much more.
_GATHER = 0.004
_VERIFY_EVERY = 1.0  # seconds between the reader's checks of the sentinel
_BACKOFF = (0.05, 2.0)  # the reader's first and longest wait after an error
_GAP_REPORTED = 300.0  # seconds `check` reports a gap after it was found
_REPLAY_BATCH = 1_000
_UNREACHABLE = (RedisConnectionError, RedisTimeoutError, OSError, TimeoutError)


@dataclass(frozen=True, slots=True)
class _Gap:
    at: float  # time.time() when it was found
    problem: str


class RedisEventStore:
    """`core.events.model.EventStore` over Redis Streams, shared by every instance.

    Args:
        url: For example "redis://127.0.0.1:6379/0". The Redis must not evict keys
            (maxmemory-policy noeviction): an evicted sentinel reads as lost data.
        namespace: Every key starts with f"{namespace}:events:".
        retention: Events kept; older ones are trimmed with their statuses.
        timeout: Seconds any one Redis call may take.

    Usage::

        bus = EventBus(RedisEventStore(settings.redis_url))
    """

    name = "redis"
    read_ahead = True

    def __init__(
        self, url: str, *, namespace: str = "mesh", retention: int = 1_000_000, timeout: float = 2.0
    ) -> None:
        if retention < 1 or timeout <= _BLOCK:
            raise ValueError("retention must be positive and timeout above the XREAD block")
        self._url = url
        self._prefix = f"{namespace}:events:"
        self._retention = retention
        self._chunk = max(1, min(1_000, retention // 100))  # trimmed at a time
        self._timeout = timeout
        self._client: Redis | None = None
        self._scripts: dict[str, Any] = {}
        self._reader: asyncio.Task[None] | None = None
        self._reader_error = ""
        self._closing = False
        self._cursor = "0-0"  # the last position the live feed delivered
        self._token = ""  # the sentinel this instance knows
        self._groups: dict[str, Selector] = {}  # joined here: recreated after a gap
        self._verifying = asyncio.Lock()
        self._gap: _Gap | None = None
        self._on_lost: LossListener = lambda position: None

    # -- lifecycle ------------------------------------------------------------------------

    async def open(self, on_append: AppendListener, on_lost: LossListener) -> None:
        # No hidden retries but one: a connection that died with a restarted Redis.
        # A pool that queues for a free connection (bounded by the socket timeout) rather
        # than failing when many subscriptions and groups need Redis at once.
        pool = BlockingConnectionPool.from_url(
            self._url,
            max_connections=100,
            timeout=self._timeout,
            socket_timeout=self._timeout,
            socket_connect_timeout=self._timeout,
            retry=Retry(NoBackoff(), 1),
            protocol=2,  # the reply shapes the scripts and parsing below expect
        )
        self._client = Redis.from_pool(pool)  # closing the client closes the pool
        scripts = {
            "append": lua.APPEND,
            "scan": lua.SCAN_SCRIPT,
            "info": lua.INFO,
            "open": lua.OPEN,
            "recover": lua.RECOVER,
            "join": lua.JOIN,
            "claim": lua.CLAIM,
            "ack": lua.ACK,
            "nack": lua.NACK,
            "release": lua.RELEASE,
            "unacked": lua.UNACKED,
            "get": lua.GET,
            "status": lua.STATUS,
            "dead_letters": lua.DEAD_LETTERS,
            "replay": lua.REPLAY,
        }
        self._scripts = {
            k: self._client.register_script(lua.PRELUDE + v) for k, v in scripts.items()
        }
        try:
            token, head = await self._run("open", uuid.uuid4().hex)
        except BaseException:
            await self.close()
            raise
        self._token, self._cursor = _text(token), _text(head)
        self._closing = False
        self._on_lost = on_lost
        self._reader = asyncio.create_task(self._read_live(on_append), name="event-reader")

    async def close(self) -> None:
        self._closing = True  # the reader stops even if a driver swallowed the cancel
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                async with asyncio.timeout(self._timeout + _BLOCK):
                    await self._reader
            self._reader = None
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose()

    async def check(self) -> str:
        await self._verify()  # raises UnavailableError when Redis is unreachable
        problems = []
        if self._gap is not None and time.time() - self._gap.at < _GAP_REPORTED:
            problems.append(self._gap.problem)  # reported for a while, never just logged
        if self._reader is None or self._reader.done():
            problems.append("the event reader is not running")
        elif self._reader_error:
            problems.append(f"the event reader is reconnecting: {self._reader_error}")
        return "; ".join(problems)

    def order_key(self, position: str) -> tuple[int, ...]:
        if not position:
            return ()
        match = _POSITION.fullmatch(position)
        if match is None or int(match[1]) >= _U64 or int(match[2]) >= _U64:
            raise InvalidArgumentError(
                "malformed position",
                reason="INVALID_POSITION",
                violations=[FieldViolation("position", "not a position of this event store")],
            )
        return (int(match[1]), int(match[2]))

    # -- the stream ---------------------------------------------------------------------

    async def append(self, batch: Sequence[Event]) -> list[Appended]:
        if not batch:
            return []
        args: list[Any] = [self._retention, self._chunk, len(batch)]
        for event in batch:
            time_us = event.time.seconds * 1_000_000 + event.time.nanos // 1000
            body = event.SerializeToString()  # prepare() cleared the position
            args += [event.id, event.type, event.subject, time_us, body]
        rows = await self._run("append", *args)
        results = []
        for event, (sid, duplicate) in zip(batch, rows, strict=True):
            position = _text(sid)
            if not duplicate:
                event.position = position
            results.append(Appended(event.id, position, bool(duplicate)))
        return results  # subscribers get them through the live feed, in stream order

    async def head(self) -> str:
        head, _, _ = await self._run("info")
        return _position(head)

    async def read(self, after: str, selector: Selector, limit: int) -> Page:
        self.order_key(after)
        reply = await self._run("scan", after, limit, 1, _selector_json(selector), "", "")
        if reply[0] == b"expired":
            raise OutOfRangeError(
                "the position is older than the retention",
                reason="POSITION_EXPIRED",
                metadata={"position": after, "oldest": _text(reply[1])},
            )
        return Page(_events(reply[3:]), _text(reply[1]), bool(reply[2]))

    async def get(self, event_id: str) -> Event | None:
        found = await self._run("get", event_id)
        return _events(found)[0] if found else None

    async def history(self, query: HistoryQuery, after: str, limit: int) -> list[Event]:
        """Scans the stream from `after`, up to `lua.SCAN` entries per script, until `limit`
        events match or the stream ends: the cost grows with the entries skipped, so a
        rare type over a long stream costs a pass over it (a chunked one).
        """
        self.order_key(after)
        start = "" if query.start_time is None else int(query.start_time * 1_000_000)
        end = "" if query.end_time is None else int(query.end_time * 1_000_000)
        selector = _selector_json(query.selector)
        found: list[Event] = []
        while len(found) < limit:
            reply = await self._run("scan", after, limit - len(found), 0, selector, start, end)
            found += _events(reply[3:])
            after = _text(reply[1])
            if reply[2] or not after:
                break
        return found

    # -- consumer groups ----------------------------------------------------------------

    async def join(self, group: str, selector: Selector, start: str) -> None:
        self.order_key(start)
        existing = await self._run("join", group, _selector_json(selector), start or "0")
        if _selector_of(existing) != selector:
            raise FailedPreconditionError(
                f"group {group!r} exists with another selector",
                reason="GROUP_SELECTOR_MISMATCH",
                metadata={"group": group},
            )
        self._groups[group] = selector

    async def claim(self, group: str, consumer: str, limit: int, policy: Policy) -> list[Delivery]:
        args = (group, consumer, limit, int(policy.visibility * 1000), policy.max_attempts)
        out: list[Delivery] = []
        for _ in range(10):  # a sparse selector may need several bounded scans to find one
            reply = await self._run("claim", *args)
            if reply[0] == b"nogroup":
                if group in self._groups and await self._verify():
                    continue  # Redis lost the group; it is recreated now
                raise _no_group(group)
            rows = reply[2:]
            out += [
                Delivery(_event(rows[i], rows[i + 1]), int(rows[i + 2]))
                for i in range(0, len(rows), 3)
            ]
            if out or not reply[1]:
                break
        return out

    async def next_due(self, group: str) -> float | None:
        key = f"{self._prefix}due:{group}"
        first = await self._call(lambda r: r.zrange(key, 0, 0, withscores=True))
        return float(first[0][1]) / 1000 if first else None

    async def unacked(self, group: str, consumer: str) -> int:
        return int(await self._run("unacked", group, consumer))

    async def release(self, group: str, consumer: str) -> None:
        await self._run("release", group, consumer)

    async def ack(self, group: str, event_ids: Sequence[str]) -> int:
        if not event_ids:
            return 0
        reply = await self._run("ack", group, *event_ids)
        if reply[0] == b"notfound":
            raise _no_delivery(_text(reply[1]), group)
        return int(reply[1])

    async def nack(
        self, group: str, event_id: str, *, delay: float, park: bool, error: str, policy: Policy
    ) -> State:
        message = (error or "nacked")[:MAX_ERROR_CHARS]
        args = (event_id, int(delay * 1000), int(park), message, policy.max_attempts)
        reply = await self._run("nack", group, *args)
        if reply[0] == b"notfound":
            raise _no_delivery(event_id, group)
        if reply[0] == b"acked":
            raise FailedPreconditionError(
                "the event is already acked", reason="ALREADY_ACKED", metadata={"id": event_id}
            )
        return State(int(reply[1]))

    # -- status and dead letters ----------------------------------------------------------

    async def status(self, event_id: str) -> list[GroupStatus]:
        found = await self._run("status", event_id)
        if not found:
            return []
        event, facts = _event(found[0], found[1]), json.loads(found[2])
        now = facts["now"] / 1000
        due = {group: float(score) for group, score in facts["due"].items() if score}
        out = [
            _status(group, json.loads(raw), due.get(group), now)
            for group, raw in facts["status"].items()
        ]
        key = self.order_key(event.position)
        for group, raw in facts["groups"].items():
            last = facts["last"].get(group)
            if group in facts["status"] or last is None or self.order_key(last) >= key:
                continue
            if _selector_of(raw).matches(event):
                out.append(GroupStatus(group, State.PENDING))
        return sorted(out, key=lambda s: s.group)

    async def dead_letters(
        self, group: str, after: str, limit: int
    ) -> list[tuple[Event, GroupStatus]]:
        self.order_key(after)
        reply = await self._run("dead_letters", group, after, limit)
        if reply[0] == b"nogroup":
            raise _no_group(group)
        rows = reply[1:]
        return [
            (_event(rows[i], rows[i + 1]), _status(group, json.loads(rows[i + 2]), None, 0.0))
            for i in range(0, len(rows), 3)
        ]

    async def replay(self, group: str, event_ids: Sequence[str]) -> int:
        total = 0
        while True:
            reply = await self._run("replay", group, _REPLAY_BATCH, *event_ids)
            if reply[0] == b"nogroup":
                raise _no_group(group)
            total += int(reply[1])
            if event_ids or int(reply[2]) < _REPLAY_BATCH:
                return total

    # -- the live feed and lost data ------------------------------------------------------

    async def _read_live(self, on_append: AppendListener) -> None:
        """The one reader of this store: every new entry, in order, to `on_append`."""
        delay, verified = _BACKOFF[0], 0.0
        while not self._closing:
            try:
                if time.monotonic() - verified >= _VERIFY_EVERY:
                    await self._verify()
                    verified = time.monotonic()
                cursor = self._cursor
                events = await self._read_after(cursor)
            except Exception as exc:  # logged, retried after a bounded backoff
                if self._closing:
                    return
                self._reader_error = type(exc).__name__
                log.warning("event.reader_failed", error=self._reader_error, retry_s=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, _BACKOFF[1])
                continue
            self._reader_error, delay = "", _BACKOFF[0]
            if not events or self._cursor != cursor:
                continue  # nothing new, or a gap moved the cursor while this read was out
            self._cursor = events[-1].position
            try:
                on_append(events)
            except Exception:
                log.exception("event.listener_failed", count=len(events))
            await asyncio.sleep(_GATHER)  # busy: let the next XREAD carry several events

    async def _read_after(self, cursor: str) -> list[Event]:
        stream, block = self._prefix + "stream", int(_BLOCK * 1000)

        def xread(r: Redis) -> Awaitable[Any]:
            return r.xread({stream: cursor}, count=_READ_COUNT, block=block)

        reply: Any = await self._call(xread, extra=_BLOCK)
        entries = reply[0][1] if reply else []
        return [_event(sid, fields[b"b"]) for sid, fields in entries]

    async def _verify(self) -> bool:
        """Checks the sentinel; when Redis lost its data, recovers and returns True."""
        async with self._verifying:
            _, maxdel, alive = await self._run("info")
            if alive is not None and _text(alive) == self._token:
                if self.order_key(_text(maxdel)) > self.order_key(self._cursor):
                    self._lost(f"the live feed fell behind the retention after {self._cursor}")
                    self._cursor = _text(maxdel)
                    self._on_lost(self._cursor)
                return False
            pairs = [x for g, s in self._groups.items() for x in (g, _selector_json(s))]
            seen = self._cursor
            args = (self._token, uuid.uuid4().hex, seen, *pairs)
            outcome, token = await self._run("recover", *args)
            self._token = _text(token)
            if outcome == b"gap":
                self._lost(
                    "redis lost the event stream (restarted without persistence?): "
                    f"events up to {seen or 'the start'} and group progress are gone",
                    groups=sorted(self._groups),
                )
                self._on_lost(seen)
            gap: bool = outcome == b"gap"
            return gap

    def _lost(self, problem: str, **details: object) -> None:
        self._gap = _Gap(time.time(), problem)
        log.error("event.gap", problem=problem, last_position=self._cursor, **details)

    # -- calls ----------------------------------------------------------------------------

    async def _run(self, script: str, *args: Any) -> Any:
        return await self._call(lambda _: self._scripts[script](args=[self._prefix, *args]))

    async def _call(self, fn: Callable[[Redis], Awaitable[T]], extra: float = 0.0) -> T:
        if self._client is None:
            raise UnavailableError("the event store is not open", reason="EVENTS_UNAVAILABLE")
        try:
            async with asyncio.timeout(self._timeout + extra):
                result = await fn(self._client)
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    # redis-py 8.1 can swallow a cancel that lands as a reply arrives;
                    # honour it, or a cancelled caller (or our own timeout) runs on.
                    raise asyncio.CancelledError
                return result
        except _UNREACHABLE:
            raise UnavailableError(
                "the event store is unreachable", reason="EVENTS_UNAVAILABLE"
            ) from None


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _position(sid: bytes | str) -> str:
    text = _text(sid)
    return "" if text == "0-0" else text


def _event(sid: bytes | str, body: bytes) -> Event:
    event = Event.FromString(body)
    event.position = _text(sid)
    return event


def _events(flat: Sequence[Any]) -> list[Event]:
    return [_event(flat[i], flat[i + 1]) for i in range(0, len(flat), 2)]


def _selector_json(selector: Selector) -> str:
    return json.dumps({"types": list(selector.types), "subject": selector.subject})


def _selector_of(raw: bytes | str) -> Selector:
    found = json.loads(raw)
    return Selector(tuple(found["types"] or ()), found["subject"])


def _status(group: str, st: dict[str, Any], due: float | None, now: float) -> GroupStatus:
    state = State(st["s"])
    if state == State.DELIVERED and due is not None and due / 1000 <= now:
        state = State.RETRYING  # its visibility timeout ran out: it will be handed out again
    errors = [DeliveryError(e["m"], e["t"] / 1000, int(e["a"])) for e in (st["e"] or [])]
    return GroupStatus(group, state, int(st["a"]), st["c"], st["t"] / 1000, errors)


def _no_group(group: str) -> NotFoundError:
    return NotFoundError(f"no group {group!r}", reason="GROUP_NOT_FOUND", metadata={"group": group})


def _no_delivery(event_id: str, group: str) -> NotFoundError:
    return NotFoundError(
        f"event {event_id!r} was never delivered to group {group!r}",
        reason="DELIVERY_NOT_FOUND",
        metadata={"id": event_id, "group": group},
    )
