"""A two-tier read-through cache: an in-process LRU in front of Redis, for serialized resources.

Values are `bytes` (callers serialize). A miss in both tiers calls the loader once per key,
however many callers are waiting. Writers call `invalidate` after their transaction commits;
the keys are dropped here, tombstoned in Redis and announced on a pub/sub channel so every
other process drops its copy. Without Redis, or while it is down, the cache keeps serving
from the loader and reports DEGRADED.

Usage::

    cache = Cache(settings.redis_url)          # None: in-process only
    container.register(Database(url), cache)

    async def get_project(name: str) -> Project:
        raw = await cache.get(f"project:{name}", lambda: repository.load_raw(name))
        ...

    async def update_project(project: Project) -> None:
        await repository.save(project)          # committed
        await cache.invalidate(f"project:{project.name}")
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import TypeVar

import structlog
from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from core.config import Settings
from core.resources.lru import LocalTier
from core.runtime.health import Health
from core.runtime.lifecycle import Component

log = structlog.get_logger()

T = TypeVar("T")
Loader = Callable[[], Awaitable[bytes | None]]
"""Loads one value from the source of truth; None means "no such resource"."""

# Redis values carry a one-byte tag, so a cached None and a tombstone differ from any bytes.
_VALUE, _NONE, _TOMBSTONE = b"v", b"n", b"t"
_REDIS_ERRORS = (RedisError, OSError, TimeoutError)
_KEEPALIVE = 5.0  # the listener pings after this much silence; no pong in as long: reconnect
_MIN_RECONNECT = 0.05
_MAX_PENDING = 1_000  # invalidations kept for retry while Redis is unreachable


# Process-wide totals behind the mesh.cache.* metrics: read when metrics are collected, so
# a lookup pays one dict increment, and they never go down when a Cache is dropped.
_TOTALS = dict.fromkeys(("hits_local", "hits_redis", "misses"), 0)


def _hits(options: CallbackOptions) -> list[Observation]:
    return [
        Observation(_TOTALS["hits_local"], {"tier": "local"}),
        Observation(_TOTALS["hits_redis"], {"tier": "redis"}),
    ]


def _misses(options: CallbackOptions) -> list[Observation]:
    return [Observation(_TOTALS["misses"])]


_meter = metrics.get_meter("core.resources.cache")
_meter.create_observable_counter(
    "mesh.cache.hits",
    [_hits],
    unit="{lookup}",
    description="Cache lookups answered by the in-process tier, or by Redis (one per shared load).",
)
_meter.create_observable_counter(
    "mesh.cache.misses",
    [_misses],
    unit="{lookup}",
    description="Cache lookups the in-process tier could not answer.",
)


class _UnavailableError(Exception):
    """Redis is backing off or the operation just failed; the caller falls back."""


@dataclass(eq=False, slots=True)
class _Flight:
    """One load in progress. `stale` is set when the key is invalidated meanwhile."""

    key: str
    stale: bool = False
    task: asyncio.Task[bytes | None] = field(init=False)


class Cache(Component):
    """In-process LRU (by entries and bytes, TTL with jitter) in front of an optional Redis.

    Args:
        redis_url: For example "redis://127.0.0.1:6379/0"; None keeps the cache in-process.
        max_entries: Most entries held in process.
        max_bytes: Most value bytes held in process; larger values skip the local tier.
        ttl: Seconds a value lives in either tier, jittered by +-10%.
        negative_ttl: Seconds a None result (a missing resource) is remembered.
        tombstone_ttl: Seconds an invalidated key refuses fills in Redis; must exceed the
            slowest load, or a fill that raced the invalidation could store old data.
        redis_timeout: Bound on each Redis operation.
        backoff: Seconds Redis is left alone after a failure, and the cap on the
            listener's reconnect delay.
        channel: Pub/sub channel carrying invalidations.
        prefix: Prefix of every Redis key.
    """

    name = "cache"

    def __init__(
        self,
        redis_url: str | None = None,
        *,
        max_entries: int = 10_000,
        max_bytes: int = 64 * 1024 * 1024,
        ttl: float = 300.0,
        negative_ttl: float = 5.0,
        tombstone_ttl: float = 10.0,
        redis_timeout: float = 0.25,
        backoff: float = 1.0,
        channel: str = "mesh:cache:invalidate",
        prefix: str = "mesh:cache:",
    ) -> None:
        if max_entries < 1 or max_bytes < 0 or min(ttl, negative_ttl, tombstone_ttl) <= 0:
            raise ValueError("cache limits must be positive")
        self._url = redis_url
        self._ttl, self._negative_ttl, self._tombstone_ttl = ttl, negative_ttl, tombstone_ttl
        self._timeout, self._backoff = redis_timeout, backoff
        self._channel, self._prefix = channel, prefix
        self._id = uuid.uuid4().hex  # lets the listener skip this instance's own messages
        self._local = LocalTier(max_entries, max_bytes)
        self._flights: dict[str, _Flight] = {}
        self._tasks: set[asyncio.Task[bytes | None]] = set()
        self._pending: set[str] = set()
        self._counts = dict.fromkeys(
            ("hits_local", "hits_redis", "misses", "loads", "load_errors", "errors"), 0
        )
        self._client: Redis | None = None
        self._listener: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()
        self._down_until = 0.0
        self._bypass_remote_until = 0.0
        self._redis_ok = True
        self._last_error = "not connected"

    # -- lifecycle ------------------------------------------------------------------------

    @classmethod
    def from_settings(cls, settings: Settings) -> Cache:
        """The process's cache: Redis at MESH_REDIS_URL when set, keyed under
        MESH_CACHE_NAMESPACE, else in-process only."""
        namespace = settings.cache_namespace
        return cls(
            settings.redis_url or None,
            prefix=f"{namespace}:cache:",
            channel=f"{namespace}:cache:invalidate",
        )

    async def start(self) -> None:
        """Connects to Redis if configured. An unreachable Redis degrades health; never fails."""
        if self._url is None:
            return
        # No retries inside redis-py: our backoff decides, and a hidden reconnect would
        # resubscribe the listener without telling us that messages were lost.
        self._client = Redis.from_url(
            self._url, socket_connect_timeout=self._timeout, retry=Retry(NoBackoff(), 0)
        )
        self._listener = asyncio.create_task(self._listen(), name="cache-invalidations")
        try:
            with contextlib.suppress(_UnavailableError, TimeoutError):
                await self._redis_call(lambda r: r.ping(), force=True)  # down: start, degraded
                async with asyncio.timeout(4 * self._timeout):  # up: healthy at once
                    await self._subscribed.wait()
        except BaseException:  # cancelled while starting: leave nothing running
            await self.stop()
            raise

    async def stop(self) -> None:
        """Cancels the listener and any loads in flight, then closes the Redis client."""
        tasks = [*self._tasks, *([self._listener] if self._listener else [])]
        for task in tasks:
            task.cancel()
        try:
            await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            self._listener = None
            self._subscribed.clear()
            self._clear_local()
            if self._client is not None:
                client, self._client = self._client, None
                await client.aclose()

    async def check_health(self) -> Health:
        """HEALTHY when Redis answers and invalidations flow, else DEGRADED; details: stats."""
        details = {name: str(value) for name, value in self.stats().items()}
        if self._url is None:
            return Health.healthy(mode="local", **details)
        try:
            await self._redis_call(lambda r: r.ping(), force=True)
        except _UnavailableError:
            return Health.degraded(f"redis unreachable: {self._last_error}", **details)
        if not self._subscribed.is_set():
            return Health.degraded("invalidation listener reconnecting", **details)
        await self._flush_pending()
        return Health.healthy(**details)

    # -- public API -----------------------------------------------------------------------

    async def get(self, key: str, loader: Loader) -> bytes | None:
        """Returns the value for `key` from the local tier, Redis or, failing both, `loader`.

        Concurrent misses for one key share a single load; if it raises, every waiter gets
        the exception and nothing is cached. Cancelling a waiter does not cancel the load.
        """
        entry = self._local.lookup(key) if self._local_trusted() else None
        if entry is not None:
            self._counts["hits_local"] += 1
            _TOTALS["hits_local"] += 1
            return entry.value
        self._counts["misses"] += 1
        _TOTALS["misses"] += 1
        flight = self._flights.get(key)
        if flight is None:
            flight = self._flights[key] = _Flight(key)
            flight.task = asyncio.create_task(self._load(flight, loader), name="cache-load")
            self._tasks.add(flight.task)
            flight.task.add_done_callback(lambda task: self._landed(flight, task))
        return await asyncio.shield(flight.task)

    async def invalidate(self, *keys: str) -> None:
        """Drops `keys` everywhere. Call after the transaction that changed them commits.

        Never raises for Redis trouble: keys that could not be invalidated there are kept
        and retried once Redis answers again.
        """
        self._forget(keys)
        if self._url is None or not keys:
            return
        if len(self._pending) + len(keys) > _MAX_PENDING:
            # Too many owed invalidations to remember: stop trusting Redis until every
            # value written before now has expired there.
            self._bypass_remote_until = time.monotonic() + self._ttl * 1.1
            self._pending.clear()
            log.error("cache.pending_overflow", bypass_s=round(self._ttl * 1.1))
        else:
            # Owed until Redis confirms: a failed or cancelled send leaves them owed, and
            # reads do not trust Redis for owed keys.
            self._pending.update(keys)
        if await self._invalidate_remote(keys):
            self._pending.difference_update(keys)

    def stats(self) -> dict[str, int]:
        """Counters since construction plus the local tier's current `entries` and `bytes`.

        `misses` counts gets the local tier could not answer; `hits_redis` and `loads`
        count shared loads (one per key however many waited); `errors` are Redis failures.
        """
        local = self._local
        return {
            **self._counts,
            "evictions": local.evictions,
            "entries": len(local),
            "bytes": local.total_bytes,
        }

    def __contains__(self, key: object) -> bool:
        """True if the local tier holds a live entry for `key`; does not touch LRU order."""
        return key in self._local

    # -- local tier -----------------------------------------------------------------------

    # A load that started before an invalidation of its key must not store what it read.
    # Each load is a _Flight; invalidating a key retires its flight (a per-key generation
    # bump, kept only while a load is in flight so memory stays bounded): its waiters still
    # get the result, later callers start a fresh load, and the retired one stores nothing.
    def _forget(self, keys: Iterable[str]) -> None:
        for key in keys:
            self._local.drop(key)
            flight = self._flights.pop(key, None)
            if flight is not None:
                flight.stale = True

    def _clear_local(self) -> None:
        self._local.clear()
        self._forget(list(self._flights))

    # -- loads ----------------------------------------------------------------------------

    async def _load(self, flight: _Flight, loader: Loader) -> bytes | None:
        await self._flush_pending()  # invalidations owed to Redis go before any read of it
        found, value = await self._read_remote(flight.key)
        if found:
            self._counts["hits_redis"] += 1
            _TOTALS["hits_redis"] += 1
        else:
            self._counts["loads"] += 1
            try:
                value = await loader()
            except Exception:
                self._counts["load_errors"] += 1
                raise
            if value is not None and not isinstance(value, bytes):
                raise TypeError(f"cache loader returned {type(value).__name__}, not bytes")
            if not flight.stale:
                await self._write_remote(flight.key, value)
        if not flight.stale and self._local_trusted():
            ttl = self._negative_ttl if value is None else self._ttl
            self._local.store(flight.key, value, _jitter(ttl))
        return value

    def _landed(self, flight: _Flight, task: asyncio.Task[bytes | None]) -> None:
        self._tasks.discard(task)
        if self._flights.get(flight.key) is flight:
            del self._flights[flight.key]
        if not task.cancelled():
            task.exception()  # retrieved: every waiter may have been cancelled

    # -- Redis tier -----------------------------------------------------------------------

    # Races in Redis: invalidate() overwrites each key with a tombstone (SET PX, no NX) and
    # fills use SET NX, so a fill that read the database before the commit cannot replace
    # the tombstone, however the two interleave. A tombstone reads as a miss. We chose
    # tombstones over a generation counter: one key per resource, one round trip per fill,
    # nothing left behind once they expire.
    async def _read_remote(self, key: str) -> tuple[bool, bytes | None]:
        if not self._remote_trusted(key):
            return False, None
        try:
            raw = await self._redis_call(lambda r: r.get(self._prefix + key))
        except _UnavailableError:
            return False, None
        if not isinstance(raw, bytes) or raw[:1] not in (_VALUE, _NONE):
            return False, None  # absent, tombstoned or not ours: load from the source
        return True, (raw[1:] if raw[:1] == _VALUE else None)

    async def _write_remote(self, key: str, value: bytes | None) -> None:
        if not self._remote_trusted(key):
            return
        raw = _NONE if value is None else _VALUE + value
        px = _ms(_jitter(self._negative_ttl if value is None else self._ttl))
        with contextlib.suppress(_UnavailableError):
            await self._redis_call(lambda r: r.set(self._prefix + key, raw, nx=True, px=px))

    async def _invalidate_remote(self, keys: Iterable[str]) -> bool:
        """Tombstones `keys` and announces them in one round trip; False if Redis failed."""
        batch = list(keys)

        async def send(r: Redis) -> None:
            async with r.pipeline(transaction=False) as pipe:
                for key in batch:
                    pipe.set(self._prefix + key, _TOMBSTONE, px=_ms(self._tombstone_ttl))
                pipe.publish(self._channel, json.dumps({"from": self._id, "keys": batch}))
                await pipe.execute()

        try:
            await self._redis_call(send)
        except _UnavailableError:
            return False
        return True

    def _local_trusted(self) -> bool:
        """Local copies are only safe while invalidations from other processes reach us."""
        return self._url is None or self._subscribed.is_set()

    def _remote_trusted(self, key: str) -> bool:
        """Redis may hold a value we owe an invalidation for: then it is not to be read."""
        return key not in self._pending and time.monotonic() >= self._bypass_remote_until

    async def _flush_pending(self) -> None:
        if self._pending:
            keys, self._pending = self._pending, set()
            if not await self._invalidate_remote(keys):
                self._pending |= keys

    async def _redis_call(self, op: Callable[[Redis], Awaitable[T]], *, force: bool = False) -> T:
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
        self._counts["errors"] += 1
        self._down_until = time.monotonic() + self._backoff
        self._last_error = type(exc).__name__
        if self._redis_ok:
            self._redis_ok = False
            log.warning("cache.redis_unreachable", error=self._last_error)

    def _mark_up(self) -> None:
        self._down_until = 0.0
        if not self._redis_ok:
            self._redis_ok = True
            log.info("cache.redis_reachable")

    # -- invalidation listener ------------------------------------------------------------

    async def _listen(self) -> None:
        """Owned by the component: reconnects with backoff until stop() cancels it."""
        delay = _MIN_RECONNECT
        while True:
            try:
                await self._listen_once()
            except _REDIS_ERRORS as exc:
                self._mark_down(exc)
            except Exception:
                log.exception("cache.listener_failed")
            if self._subscribed.is_set():
                self._subscribed.clear()
                self._clear_local()  # from now until resubscribed, other writers go unheard
                delay = _MIN_RECONNECT
            await asyncio.sleep(random.uniform(delay / 2, delay))
            delay = min(delay * 2, self._backoff)

    async def _listen_once(self) -> None:
        assert self._client is not None
        async with self._client.pubsub() as pubsub:
            async with asyncio.timeout(4 * self._timeout):
                await pubsub.subscribe(self._channel)
                confirmed = None
                while confirmed is None or confirmed["type"] != "subscribe":
                    confirmed = await pubsub.get_message(timeout=self._timeout)
            # Invalidations sent while we were not subscribed are lost: start from empty.
            self._clear_local()
            self._subscribed.set()
            self._mark_up()
            log.info("cache.listener_subscribed", channel=self._channel)
            await self._flush_pending()
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
                    self._clear_local()
                elif message["type"] == "message":
                    self._on_message(message["data"])

    def _on_message(self, data: bytes) -> None:
        try:
            payload = json.loads(data)
            origin, keys = payload["from"], payload["keys"]
            if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
                raise TypeError("keys")
        except (ValueError, KeyError, TypeError):
            log.warning("cache.bad_invalidation")
            self._clear_local()  # unknown keys: the safe answer is to forget everything
            return
        if origin != self._id:
            self._forget(keys)


def _jitter(seconds: float) -> float:
    return seconds * random.uniform(0.9, 1.1)


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))
