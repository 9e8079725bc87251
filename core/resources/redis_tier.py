"""The shared tier of `core.resources.cache`: Redis, with tombstones, owed invalidations and
the listener that hears other processes' invalidations.

Every operation is bounded by a timeout; after a failure Redis is left alone for a backoff
and callers fall back (a read is a miss, a write is skipped). An invalidation Redis did not
confirm is owed: retried before the next read of Redis, and until then the key is not read
there. The listener reconnects with backoff; while it is not subscribed, other processes'
invalidations go unheard, so the cache must not trust its local copies.

Keys live under generations (`core.resources._generations`): `clear` makes every value
of the cache, or of one resource, unreachable in one atomic step, and announces it so
every process drops its local copies and confirms.

Usage (the cache does this)::

    tier = RedisTier("redis://127.0.0.1:6379/0", ttl=300.0, on_reset=local.clear,
                     on_invalidated=forget)
    await tier.start()
    found, value, generation = await tier.read("projects/p1")
    await tier.write("projects/p1", b"...", 300.0, generation)
    await tier.invalidate(["projects/p1"])
    await tier.stop()
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, TypeVar

import structlog
from redis.asyncio import Redis
from redis.asyncio.retry import Retry as RedisRetry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError

from core.errors import UnavailableError
from core.resources import _generations as generations
from core.retries import Retry
from core.runtime.tasks import BackgroundTask

log = structlog.get_logger()

T = TypeVar("T")

# Redis values carry a one-byte tag, so a cached None and a tombstone ("t", written by the
# invalidation script) differ from any bytes.
_VALUE, _NONE = b"v", b"n"
_REDIS_ERRORS = (RedisError, OSError, TimeoutError)
_KEEPALIVE = 5.0  # the listener pings after this much silence; no pong in as long: reconnect
_MIN_RECONNECT = 0.05
_MAX_PENDING = 1_000  # invalidations kept for retry while Redis is unreachable


class _UnavailableError(Exception):
    """Redis is backing off or the operation just failed; the caller falls back."""


class RedisTier:
    """Values in Redis shared by every process, and the invalidations between them.

    Args:
        url: For example "redis://127.0.0.1:6379/0".
        ttl: Seconds a value lives in the cache: how long Redis is not trusted after too
            many invalidations were owed to remember.
        tombstone_ttl: Seconds an invalidated key refuses fills.
        timeout: Bound on each Redis operation.
        backoff: Seconds Redis is left alone after a failure, and the cap on the
            listener's reconnect delay.
        channel: Pub/sub channel carrying invalidations.
        prefix: Prefix of every Redis key.
        on_reset: Called when invalidations may have been missed: forget every local copy.
        on_invalidated: Called with the keys another process invalidated.
        on_cleared: Called with the resource ("" for every one) a clear dropped.
    """

    def __init__(
        self,
        url: str,
        *,
        ttl: float,
        tombstone_ttl: float,
        timeout: float,
        backoff: float,
        channel: str,
        prefix: str,
        on_reset: Callable[[], None],
        on_invalidated: Callable[[list[str]], None],
        on_cleared: Callable[[str], None] = lambda resource: None,
    ) -> None:
        self._url = url
        self._ttl, self._tombstone_ttl = ttl, tombstone_ttl
        self._timeout, self._backoff = timeout, backoff
        self._channel, self._prefix = channel, prefix
        self._on_reset, self._on_invalidated = on_reset, on_invalidated
        self._on_cleared = on_cleared
        self._generations = prefix + "generations"
        self._scripts: dict[str, AsyncScript] = {}
        self._id = uuid.uuid4().hex  # lets the listener skip this instance's own messages
        self._pending: set[str] = set()
        self._client: Redis | None = None
        self._listener = BackgroundTask("cache-invalidations")
        self.subscribed = asyncio.Event()
        """Set while the listener hears invalidations: only then are local copies safe."""
        self.errors = 0  # Redis failures since construction
        self._down_until = 0.0
        self._bypass_until = 0.0
        self._ok = True
        self._last_error = "not connected"

    async def start(self) -> None:
        """Connects and starts the listener. An unreachable Redis is no error: it is retried."""
        # No retries inside redis-py: our backoff decides, and a hidden reconnect would
        # resubscribe the listener without telling us that messages were lost.
        self._client = client = Redis.from_url(
            self._url, socket_connect_timeout=self._timeout, retry=RedisRetry(NoBackoff(), 0)
        )
        for name in ("READ", "FILL", "INVALIDATE", "CLEAR"):  # EVALSHA, loaded on first use
            self._scripts[name] = client.register_script(getattr(generations, name))
        self._listener.start(self._listen())
        try:
            with contextlib.suppress(_UnavailableError, TimeoutError):
                await self._call(lambda r: r.ping(), force=True)  # down: start, degraded
                async with asyncio.timeout(4 * self._timeout):  # up: healthy at once
                    await self.subscribed.wait()
        except BaseException:  # cancelled while starting: leave nothing running
            await self.stop()
            raise

    async def stop(self) -> None:
        """Cancels the listener and waits for it, then closes the client."""
        try:
            await self._listener.stop()
        finally:
            self.subscribed.clear()
            if self._client is not None:
                client, self._client = self._client, None
                await client.aclose()

    async def problem(self) -> str:
        """Why the tier is not working fully, or "" when it is (then owed keys are sent)."""
        try:
            await self._call(lambda r: r.ping(), force=True)
        except _UnavailableError:
            return f"redis unreachable: {self._last_error}"
        if not self.subscribed.is_set():
            return "invalidation listener reconnecting"
        await self.flush_pending()
        return ""

    # Races in Redis: invalidate() overwrites each key with a tombstone (SET PX, no NX) and
    # fills use SET NX, so a fill that read the database before the commit cannot replace
    # the tombstone, however the two interleave. A tombstone reads as a miss. A fill also
    # stores only under the generation its read saw, so a load that began before a clear
    # stores nothing (see core.resources._generations).
    async def read(self, key: str) -> tuple[bool, bytes | None, str]:
        """(True, value, generation) when Redis holds a value for `key` (None: "no such
        resource"); the generation read under, for `write`, is "" when Redis was not read."""
        if not self._trusted(key):
            return False, None, ""
        try:
            reply = await self._call(self._script("READ", [self._prefix, key]))
        except _UnavailableError:
            return False, None, ""
        generation, raw = reply[0].decode(), reply[1]
        if not isinstance(raw, bytes) or raw[:1] not in (_VALUE, _NONE):
            return False, None, generation  # absent, tombstoned or not ours: load
        return True, (raw[1:] if raw[:1] == _VALUE else None), generation

    async def write(self, key: str, value: bytes | None, ttl: float, generation: str) -> None:
        """Fills `key` for `ttl` seconds unless it holds a value or a tombstone already, or
        the cache was cleared since `generation` was read."""
        if not generation or not self._trusted(key):
            return
        raw = _NONE if value is None else _VALUE + value
        args: list[str | bytes | int] = [self._prefix, key, generation, raw, _ms(ttl)]
        with contextlib.suppress(_UnavailableError):
            await self._call(self._script("FILL", args))

    async def clear(self, resource: str) -> tuple[int, str]:
        """Puts every value of `resource` ("" for all) out of reach and tells every process.

        Returns how many subscribers heard it (this process's listener among them) and
        the key where each counts its confirmation (see `confirmed`).

        Raises:
            UnavailableError: Redis did not answer; nothing was cleared there.
        """
        ack = f"{self._prefix}cleared:{uuid.uuid4().hex}"
        message = json.dumps({"from": self._id, "clear": resource, "ack": ack})
        args = [resource or generations.ALL, self._channel, message]
        try:
            heard = await self._call(self._script("CLEAR", args), force=True)
        except _UnavailableError:
            raise UnavailableError(
                f"the shared cache is unreachable ({self._last_error}); nothing was cleared",
                reason="CACHE_UNAVAILABLE",
            ) from None
        return int(heard), ack

    async def confirmed(self, ack: str, expected: int, within: float) -> int:
        """How many processes confirmed the clear at `ack`, waiting up to `within` seconds
        for `expected` of them."""
        count = 0
        with contextlib.suppress(TimeoutError, _UnavailableError):
            async with asyncio.timeout(within):
                while True:
                    raw = await self._call(lambda r: r.get(ack), force=True)
                    count = int(raw or 0)
                    if count >= expected:
                        break
                    await asyncio.sleep(0.01)
        return count

    async def invalidate(self, keys: Iterable[str]) -> None:
        """Tombstones `keys` and announces them; what Redis does not confirm stays owed."""
        batch = list(keys)
        if len(self._pending) + len(batch) > _MAX_PENDING:
            # Too many owed invalidations to remember: stop trusting Redis until every
            # value written before now has expired there.
            self._bypass_until = time.monotonic() + self._ttl * 1.1
            self._pending.clear()
            log.error("cache.pending_overflow", bypass_s=round(self._ttl * 1.1))
        else:
            # Owed until Redis confirms: a failed or cancelled send leaves them owed, and
            # reads do not trust Redis for owed keys.
            self._pending.update(batch)
        if await self._send_invalidations(batch):
            self._pending.difference_update(batch)

    async def flush_pending(self) -> None:
        """Sends the invalidations still owed; they stay owed if Redis fails again."""
        if self._pending:
            keys, self._pending = self._pending, set()
            if not await self._send_invalidations(keys):
                self._pending |= keys

    async def _send_invalidations(self, keys: Iterable[str]) -> bool:
        """Tombstones `keys` and announces them in one round trip; False if Redis failed."""
        batch = list(keys)
        message = json.dumps({"from": self._id, "keys": batch})
        args: list[str | int] = [
            self._prefix,
            _ms(self._tombstone_ttl),
            self._channel,
            message,
            *batch,
        ]
        try:
            await self._call(self._script("INVALIDATE", args))
        except _UnavailableError:
            return False
        return True

    def _script(
        self, name: str, args: Sequence[str | bytes | int]
    ) -> Callable[[Redis], Awaitable[Any]]:
        """An operation for `_call`: the script `name` of `core.resources._generations`."""
        return lambda r: self._scripts[name](keys=[self._generations], args=args, client=r)

    def _trusted(self, key: str) -> bool:
        """Redis may hold a value we owe an invalidation for: then it is not to be read."""
        return key not in self._pending and time.monotonic() >= self._bypass_until

    async def _call(self, op: Callable[[Redis], Awaitable[T]], *, force: bool = False) -> T:
        """Runs `op` within the timeout; raises _UnavailableError on failure or in backoff."""
        client = self._client
        if client is None or (not force and time.monotonic() < self._down_until):
            raise _UnavailableError
        try:
            async with asyncio.timeout(self._timeout):
                result = await op(client)
        except _REDIS_ERRORS as exc:
            self._mark_down(exc)
            raise _UnavailableError from exc
        self._mark_up()
        return result

    def _mark_down(self, exc: BaseException) -> None:
        self.errors += 1
        self._down_until = time.monotonic() + self._backoff
        self._last_error = type(exc).__name__
        if self._ok:
            self._ok = False
            log.warning("cache.redis_unreachable", error=self._last_error)

    def _mark_up(self) -> None:
        self._down_until = 0.0
        if not self._ok:
            self._ok = True
            log.info("cache.redis_reachable")

    # -- invalidation listener ------------------------------------------------------------

    async def _listen(self) -> None:
        """Reconnects with backoff until `stop` cancels it.

        Reconnect n waits _MIN_RECONNECT * 2**(n-1) / 2 plus up to _MIN_RECONNECT / 2 of
        jitter, at most `backoff` (core.retries: each logs `retry.scheduled` as
        `cache.listen`); the count starts over when a subscription that worked is lost.
        """
        reconnects = Retry(
            "cache.listen",
            on=Exception,
            attempts=None,
            timeout=None,
            wait_initial=_MIN_RECONNECT / 2,
            wait_max=self._backoff,
            wait_jitter=_MIN_RECONNECT / 2,
        )
        lost: Exception | None = None
        while True:
            try:
                lost = await reconnects.call(self._session, after=lost)
            except Exception:  # only when stamina's test mode or off switch caps the tries
                await asyncio.sleep(self._backoff)

    async def _session(self) -> Exception:
        """Listens until the connection fails; returns that error if it was subscribed by
        then, else raises it."""
        try:
            await self._listen_once()
        except Exception as exc:
            if isinstance(exc, _REDIS_ERRORS):
                self._mark_down(exc)
            else:
                log.exception("cache.listener_failed")
            if not self.subscribed.is_set():
                raise
            self.subscribed.clear()
            self._on_reset()  # from now until resubscribed, other writers go unheard
            return exc
        raise AssertionError("unreachable: the listener only ends by an error")

    async def _listen_once(self) -> None:
        assert self._client is not None
        async with self._client.pubsub() as pubsub:
            async with asyncio.timeout(4 * self._timeout):
                await pubsub.subscribe(self._channel)
                confirmed = None
                while confirmed is None or confirmed["type"] != "subscribe":
                    confirmed = await pubsub.get_message(timeout=self._timeout)
            # Invalidations sent while we were not subscribed are lost: start from empty.
            self._on_reset()
            self.subscribed.set()
            self._mark_up()
            log.info("cache.listener_subscribed", channel=self._channel)
            await self.flush_pending()
            pong_due = False
            while True:
                message = await pubsub.get_message(timeout=_KEEPALIVE)
                if message is None:
                    if pong_due:
                        raise TimeoutError("no pong from redis")
                    async with asyncio.timeout(self._timeout):
                        await pubsub.ping()
                    pong_due = True
                    continue
                pong_due = False
                if message["type"] == "subscribe":  # redis-py reconnected under us
                    self._on_reset()
                elif message["type"] == "message":
                    await self._on_message(message["data"])

    async def _on_message(self, data: bytes) -> None:
        try:
            payload = json.loads(data)
            if "clear" in payload:
                await self._on_clear(payload["clear"], payload["ack"])
                return
            origin, keys = payload["from"], payload["keys"]
            if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
                raise TypeError("keys")
        except (ValueError, KeyError, TypeError):
            log.warning("cache.bad_invalidation")
            self._on_reset()  # unknown keys: the safe answer is to forget everything
            return
        if origin != self._id:
            self._on_invalidated(keys)

    async def _on_clear(self, resource: object, ack: object) -> None:
        """Drops the local copies a clear names (this process's own clears too: the
        clearer counts every subscriber), then confirms it."""
        if not isinstance(resource, str) or not isinstance(ack, str):
            raise TypeError("clear")
        self._on_cleared(resource)
        with contextlib.suppress(_UnavailableError):
            await self._call(lambda r: _confirm(r, ack))


async def _confirm(r: Redis, ack: str) -> None:
    async with r.pipeline(transaction=False) as pipe:
        pipe.incr(ack)
        pipe.expire(ack, 60)
        await pipe.execute()


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))
