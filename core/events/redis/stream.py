"""The stream half of the Redis store: appends, reads, and the one live reader.

An append is one script (dedupe, XADD, retention). Reads and history scan the stream in
bounded scripts. The live reader follows the stream with a blocking XREAD and hands every
new entry, in order, to the listener the store was opened with, from this instance or
any other; it checks the sentinel on the way, so lost data is noticed even when quiet.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Sequence
from typing import Any

import structlog
from redis.asyncio import Redis

from core.errors import OutOfRangeError, UnavailableError
from core.events.model import Appended, AppendListener, Event, HistoryQuery, Page, Selector
from core.events.redis.connection import StoreConnection
from core.events.redis.replies import (
    as_position,
    as_text,
    parse_event,
    parse_events,
    selector_json,
)
from core.retries import Retry
from core.runtime.tasks import BackgroundTask

log = structlog.get_logger()

READ_COUNT = 500  # events per XREAD of the live feed
BLOCK = 1.0  # seconds XREAD blocks; below the socket timeout, so a quiet feed is not an error
# After a read that found events, the reader waits this long before the next XREAD, so
# under load one round trip carries several events: each redis-py call costs the event
# loop 120-180 us of CPU, about a fifth of a publish's. A blocked XREAD answers the first
# event after a quiet spell at once; events in a busy stream wait at most this much more.
GATHER = 0.004
VERIFY_EVERY = 1.0  # seconds between the reader's checks of the sentinel
BACKOFF = (0.05, 2.0)  # the reader's first and longest wait after an error


class RedisStream(StoreConnection):
    """Appends and reads of the one stream every instance shares, and its live reader.

    Args:
        namespace: Every key starts with f"{namespace}:events:".
        timeout: Seconds any one Redis call may take.
        retention: Events kept; older ones are trimmed with their statuses.
    """

    def __init__(self, *, namespace: str, timeout: float, retention: int) -> None:
        super().__init__(namespace=namespace, timeout=timeout)
        self._retention = retention
        self._chunk = max(1, min(1_000, retention // 100))  # trimmed at a time
        self._reader = BackgroundTask("event-reader")
        self._reader_error = ""
        self._verified = 0.0  # time.monotonic() of the reader's last check of the sentinel
        self._closing = False

    async def append(self, batch: Sequence[Event]) -> list[Appended]:
        if not batch:
            return []
        args: list[Any] = [self._retention, self._chunk, len(batch)]
        for event in batch:
            time_us = event.time.seconds * 1_000_000 + event.time.nanos // 1000
            body = event.SerializeToString()  # prepare() cleared the position
            args += [event.id, event.type, event.subject, time_us, body]
        rows = await self._run("append", *args)
        if rows == b"lost":  # Redis restarted empty: report the gap, then store anew
            await self._verify()
            rows = await self._run("append", *args)
            if rows == b"lost":
                raise UnavailableError(
                    "the event store lost its data and is recovering", reason="EVENTS_UNAVAILABLE"
                )
        results = []
        for event, (sid, duplicate) in zip(batch, rows, strict=True):
            position = as_text(sid)
            if not duplicate:
                event.position = position
            results.append(Appended(event.id, position, bool(duplicate)))
        return results  # subscribers get them through the live feed, in stream order

    async def head(self) -> str:
        head, _, alive = await self._run("info")
        if alive is None or as_text(alive) != self._token:
            # Redis lost its data and the reader has not noticed yet: recover first, so
            # that the head is not that of an empty stream (and resumes are not AHEAD).
            await self._verify()
            head, _, _ = await self._run("info")
        return as_position(head)

    async def read(self, after: str, selector: Selector, limit: int) -> Page:
        self.order_key(after)
        args = (after, limit, 1, selector_json(selector), "", "")
        reply = await self._run("scan", *args)
        if reply == b"lost":  # Redis lost its data: recover (which records where), then read
            await self._verify()
            reply = await self._run("scan", *args)
            if reply == b"lost":
                raise UnavailableError(
                    "the event store lost its data and is recovering", reason="EVENTS_UNAVAILABLE"
                )
        if reply[0] in (b"expired", b"gone"):
            raise _not_stored(after, lost=reply[0] == b"gone", resume=reply[1], oldest=reply[2])
        return Page(parse_events(reply[3:]), as_text(reply[1]), bool(reply[2]))

    async def get(self, event_id: str) -> Event | None:
        found = await self._run("get", event_id)
        return parse_events(found)[0] if found else None

    async def history(self, query: HistoryQuery, after: str, limit: int) -> list[Event]:
        """Scans the stream from `after`, up to `scripts.SCAN` entries per script, until
        `limit` events match or the stream ends: the cost grows with the entries skipped,
        so a rare type over a long stream costs a pass over it (a chunked one).
        """
        self.order_key(after)
        start = "" if query.start_time is None else int(query.start_time * 1_000_000)
        end = "" if query.end_time is None else int(query.end_time * 1_000_000)
        selector = selector_json(query.selector)
        found: list[Event] = []
        while len(found) < limit:
            reply = await self._run("scan", after, limit - len(found), 0, selector, start, end)
            found += parse_events(reply[3:])
            after = as_text(reply[1])
            if reply[2] or not after:
                break
        return found

    async def _read_live(self, on_append: AppendListener) -> None:
        """The one reader of this store: every new entry, in order, to `on_append`."""
        reads = Retry(
            "event.read",
            on=lambda _: not self._closing,  # logged and retried, until closing
            attempts=None,
            timeout=None,
            wait_initial=BACKOFF[0],
            wait_max=BACKOFF[1],
            wait_jitter=0.0,
        )
        self._verified = 0.0  # check the sentinel first
        while not self._closing:
            try:
                cursor, events = await reads.call(self._read_next)
            except Exception:  # closing, or stamina's test mode or off switch capped the tries
                if self._closing:
                    return
                await asyncio.sleep(BACKOFF[1])
                continue
            if not events or self._cursor != cursor:
                continue  # nothing new, or a gap moved the cursor while this read was out
            self._cursor = events[-1].position
            try:
                on_append(events)
            except Exception:
                log.exception("event.listener_failed", count=len(events))
            await asyncio.sleep(GATHER)  # busy: let the next XREAD carry several events

    async def _read_next(self) -> tuple[str, list[Event]]:
        """Checks the sentinel when due, then reads after the cursor; returns both."""
        try:
            if time.monotonic() - self._verified >= VERIFY_EVERY:
                await self._verify()
                self._verified = time.monotonic()
            cursor = self._cursor
            events = await self._read_after(cursor)
        except Exception as exc:
            if not self._closing:
                self._reader_error = type(exc).__name__  # health says so until a read works
            raise
        self._reader_error = ""
        return cursor, events

    async def _read_after(self, cursor: str) -> list[Event]:
        stream, block = self._prefix + "stream", int(BLOCK * 1000)

        def xread(r: Redis) -> Awaitable[Any]:
            return r.xread({stream: cursor}, count=READ_COUNT, block=block)

        reply: Any = await self._call(xread, extra=BLOCK)
        entries = reply[0][1] if reply else []
        return [parse_event(sid, fields[b"b"]) for sid, fields in entries]


def _not_stored(after: str, *, lost: bool, resume: bytes, oldest: bytes) -> OutOfRangeError:
    """OUT_OF_RANGE for a read after a position whose events are no longer stored."""
    metadata = {"position": after, "resume_after": as_text(resume), "oldest": as_text(oldest)}
    if lost:
        return OutOfRangeError(
            "the events after this position were lost with redis's data "
            "(or it is another store's position)",
            reason="POSITION_LOST",
            metadata=metadata,
        )
    return OutOfRangeError(
        "the position is older than the retention", reason="POSITION_EXPIRED", metadata=metadata
    )
