"""A two-tier read-through cache: an in-process LRU in front of Redis, for serialized resources.

Values are `bytes` (callers serialize). A miss in both tiers calls the loader once per key,
however many callers are waiting. Writers call `invalidate` after their transaction commits;
the keys are dropped here, tombstoned in Redis and announced on a pub/sub channel so every
other process drops its copy. Without Redis, or while it is down, the cache keeps serving
from the loader and reports DEGRADED. The local tier is `core.resources.lru`, the Redis
tier with its invalidation listener `core.resources.redis_tier`.

Each lookup notes how it was served (`core.telemetry.served`: local-hit, shared-hit,
miss, bypass) for the RPC boundary to report. `clear` drops every entry, or those of one
resource (the part of a key before its first "/"), in every process and in Redis, safely
while reads and writes go on: a load that began before the clear stores nothing.

Usage::

    cache = container.provide(Cache, lambda: Cache.from_settings(settings))

    raw = await cache.get(f"project:{name}", lambda: load_row_bytes(name))  # None: missing
    async with db.transaction() as tx:
        ...                                              # the write
        tx.after_commit(lambda: cache.invalidate(f"project:{name}"))
    cleared = await cache.clear("projects")              # every process's, and Redis's
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation

from core.config import Settings
from core.resources._generations import resource_of
from core.resources.lru import LocalTier
from core.resources.redis_tier import RedisTier
from core.runtime.health import Health
from core.runtime.lifecycle import Component
from core.runtime.tasks import cancel_and_wait
from core.telemetry.served import BYPASS, LOCAL_HIT, MISS, SHARED_HIT, note_cache

Loader = Callable[[], Awaitable[bytes | None]]
"""Loads one value from the source of truth; None means "no such resource"."""

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


CLEAR_CONFIRM_SECONDS = 2.0  # how long `clear` waits for the other processes to confirm


@dataclass(eq=False, slots=True)
class _Flight:
    """One load in progress. `stale` is set when the key is invalidated meanwhile;
    `outcome` says how it was served, for every caller that waited on it."""

    key: str
    stale: bool = False
    outcome: str = MISS
    task: asyncio.Task[bytes | None] = field(init=False)


@dataclass(frozen=True, slots=True)
class Cleared:
    """What `Cache.clear` reached: `notified` processes heard it (this one included, when
    it shares Redis), `confirmed` dropped their local copies before it returned."""

    notified: int
    confirmed: int


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
        self._ttl, self._negative_ttl = ttl, negative_ttl
        self._local = LocalTier(max_entries, max_bytes)
        self._remote = (
            None
            if redis_url is None
            else RedisTier(
                redis_url,
                ttl=ttl,
                tombstone_ttl=tombstone_ttl,
                timeout=redis_timeout,
                backoff=backoff,
                channel=channel,
                prefix=prefix,
                on_reset=self._clear_local,
                on_invalidated=self._forget,
                on_cleared=self._drop_resource,
            )
        )
        self.resources: set[str] = set()
        """The resources (key prefixes before "/") whose entries this process caches."""
        self._flights: dict[str, _Flight] = {}
        self._tasks: set[asyncio.Task[bytes | None]] = set()
        self._counts = dict.fromkeys(
            ("hits_local", "hits_redis", "misses", "loads", "load_errors"), 0
        )

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
        if self._remote is None:
            return
        try:
            await self._remote.start()
        except BaseException:  # cancelled while starting: leave nothing running
            await self.stop()
            raise

    async def stop(self) -> None:
        """Cancels any loads in flight and the listener, then closes the Redis client."""
        try:
            await cancel_and_wait(*self._tasks)
        finally:
            try:
                if self._remote is not None:
                    await self._remote.stop()
            finally:
                self._clear_local()

    async def check_health(self) -> Health:
        """HEALTHY when Redis answers and invalidations flow, else DEGRADED; details: stats."""
        details = {name: str(value) for name, value in self.stats().items()}
        if self._remote is None:
            return Health.healthy(mode="local", **details)
        problem = await self._remote.problem()
        if problem:
            return Health.degraded(problem, **details)
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
            note_cache(LOCAL_HIT)
            return entry.value
        self._counts["misses"] += 1
        _TOTALS["misses"] += 1
        flight = self._flights.get(key)
        if flight is None:
            flight = self._flights[key] = _Flight(key)
            flight.task = asyncio.create_task(self._load(flight, loader), name="cache-load")
            self._tasks.add(flight.task)
            flight.task.add_done_callback(lambda task: self._landed(flight, task))
        value = await asyncio.shield(flight.task)
        note_cache(flight.outcome)
        return value

    async def invalidate(self, *keys: str) -> None:
        """Drops `keys` everywhere. Call after the transaction that changed them commits.

        Never raises for Redis trouble: keys that could not be invalidated there are kept
        and retried once Redis answers again.
        """
        self._forget(keys)
        if self._remote is not None and keys:
            await self._remote.invalidate(keys)

    async def clear(self, resource: str = "") -> Cleared:
        """Drops every entry, or those of `resource`, here, in Redis and in every process
        that shares it; waits (a bounded while) for those processes to confirm.

        Safe while reads and writes go on: values in Redis are put out of reach by one
        atomic step, and a load that began before it stores nothing in either tier.

        Raises:
            UnavailableError: Redis is configured but did not answer (reason
                CACHE_UNAVAILABLE); only this process's copies were dropped.
        """
        remote = self._remote
        if remote is None:
            self._drop_resource(resource)
            return Cleared(1, 1)
        try:
            notified, ack = await remote.clear(resource)
        finally:
            self._drop_resource(resource)  # also when Redis failed: ours are dropped
        confirmed = await remote.confirmed(ack, notified, CLEAR_CONFIRM_SECONDS)
        return Cleared(notified, confirmed)

    def stats(self) -> dict[str, int]:
        """Counters since construction plus the local tier's current `entries` and `bytes`.

        `misses` counts gets the local tier could not answer; `hits_redis` and `loads`
        count shared loads (one per key however many waited); `errors` are Redis failures.
        """
        local = self._local
        return {
            **self._counts,
            "errors": 0 if self._remote is None else self._remote.errors,
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

    def _drop_resource(self, resource: str) -> None:
        """Forgets every local entry and load of `resource` ("": of every resource)."""
        if not resource:
            self._clear_local()
            return
        self._local.drop_where(lambda key: resource_of(key) == resource)
        self._forget([key for key in self._flights if resource_of(key) == resource])

    # -- loads ----------------------------------------------------------------------------

    async def _load(self, flight: _Flight, loader: Loader) -> bytes | None:
        found, value, generation = False, None, ""
        remote = self._remote
        if remote is not None:
            await remote.flush_pending()  # invalidations owed to Redis go before any read of it
            found, value, generation = await remote.read(flight.key)
        if not self._local_trusted():
            flight.outcome = BYPASS  # Redis unreachable: nothing below is kept
        if found:
            self._counts["hits_redis"] += 1
            _TOTALS["hits_redis"] += 1
            flight.outcome = SHARED_HIT
        else:
            self._counts["loads"] += 1
            try:
                value = await loader()
            except Exception:
                self._counts["load_errors"] += 1
                raise
            if value is not None and not isinstance(value, bytes):
                raise TypeError(f"cache loader returned {type(value).__name__}, not bytes")
            if not flight.stale and remote is not None:
                await remote.write(flight.key, value, self._lifetime(value), generation)
        if not flight.stale and self._local_trusted():
            self._local.store(flight.key, value, self._lifetime(value))
        return value

    def _lifetime(self, value: bytes | None) -> float:
        """Seconds to keep `value` in a tier, jittered so entries do not expire together."""
        ttl = self._negative_ttl if value is None else self._ttl
        return ttl * random.uniform(0.9, 1.1)

    def _landed(self, flight: _Flight, task: asyncio.Task[bytes | None]) -> None:
        self._tasks.discard(task)
        if self._flights.get(flight.key) is flight:
            del self._flights[flight.key]
        if not task.cancelled():
            task.exception()  # retrieved: every waiter may have been cancelled

    def _local_trusted(self) -> bool:
        """Local copies are only safe while invalidations from other processes reach us."""
        return self._remote is None or self._remote.subscribed.is_set()
