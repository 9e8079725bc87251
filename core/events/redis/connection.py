"""What both halves of the Redis store share: the client, its calls, and noticing lost data.

Every call is bounded by the store's timeout and turns an unreachable Redis into
UNAVAILABLE. The sentinel key `alive` tells whether Redis still holds what this instance
wrote: when it is gone, Redis lost its data (restarted without persistence, say), and
`_verify` records the gap, recreates the groups joined here and tells the listener.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import structlog
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from core.errors import FieldViolation, InvalidArgumentError, UnavailableError
from core.events.failures import DeadLetterListener, ignore_dead_letter
from core.events.model import GapCause, LossListener, Lost, Selector
from core.events.redis.replies import as_position, as_text, selector_json

log = structlog.get_logger()

T = TypeVar("T")

_POSITION = re.compile(r"(\d{1,20})-(\d{1,20})")
_U64 = 2**64
_UNREACHABLE = (RedisConnectionError, RedisTimeoutError, OSError, TimeoutError)


@dataclass(frozen=True, slots=True)
class Found:
    """Events Redis lost, found at `at` (time.time())."""

    at: float
    problem: str


class StoreConnection:
    """The client and scripts of a Redis event store, and the state both halves read.

    Args:
        namespace: Every key starts with f"{namespace}:events:".
        timeout: Seconds any one Redis call may take.
    """

    def __init__(self, *, namespace: str, timeout: float) -> None:
        self._prefix = f"{namespace}:events:"
        self._timeout = timeout
        self._client: Redis | None = None
        self._scripts: dict[str, Any] = {}
        self._cursor = "0-0"  # the last position the live feed delivered
        self._token = ""  # the sentinel this instance knows
        self._groups: dict[str, Selector] = {}  # joined here: recreated after a gap
        self._verifying = asyncio.Lock()
        self._gap: Found | None = None
        self._on_lost: LossListener = lambda lost: None
        self.on_dead_letter: DeadLetterListener = ignore_dead_letter

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

    async def _verify(self) -> bool:
        """Checks the sentinel; when Redis lost its data, recovers and returns True."""
        async with self._verifying:
            _, maxdel, alive = await self._run("info")
            if alive is not None and as_text(alive) == self._token:
                if self.order_key(as_text(maxdel)) > self.order_key(self._cursor):
                    self._lost(f"the live feed fell behind the retention after {self._cursor}")
                    self._cursor = as_text(maxdel)
                    self._on_lost(Lost(self._cursor, GapCause.RETENTION))
                return False
            pairs = [x for g, s in self._groups.items() for x in (g, selector_json(s))]
            seen = self._cursor
            args = (self._token, uuid.uuid4().hex, seen, *pairs)
            outcome, token = await self._run("recover", *args)
            self._token = as_text(token)
            if outcome == b"gap":
                self._lost(
                    "redis lost the event stream (restarted without persistence?): "
                    f"events up to {seen or 'the start'} and group progress are gone",
                    groups=sorted(self._groups),
                )
                self._on_lost(Lost(as_position(seen), GapCause.STORE_LOST))
            gap: bool = outcome == b"gap"
            return gap

    def _lost(self, problem: str, **details: object) -> None:
        self._gap = Found(time.time(), problem)
        log.error("event.gap", problem=problem, last_position=self._cursor, **details)

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
