"""core.resources.cache against real Redis: the shared server for most tests, a private one
for faults."""

from __future__ import annotations

import asyncio
import signal
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from redis.asyncio import Redis
from redis.exceptions import RedisError
from structlog.testing import capture_logs

from core.errors import UnavailableError
from core.resources.cache import Cache, Cleared
from core.runtime.health import HealthState
from core.telemetry import cache_outcome
from tests.conftest import make_container

SHARED_URL = "redis://127.0.0.1:6379/0"


class Source:
    """A loader that counts its calls and can be held at a gate."""

    def __init__(self, value: bytes | None = b"v1") -> None:
        self.value = value
        self.calls = 0
        self.gate: asyncio.Event | None = None
        self.entered = asyncio.Event()

    async def load(self) -> bytes | None:
        self.calls += 1
        value = self.value  # read "from the database" before waiting
        self.entered.set()
        if self.gate is not None:
            await self.gate.wait()
        return value


async def until(check: Callable[[], bool | Awaitable[bool]], timeout: float = 5.0) -> None:
    """Waits for `check` to hold, polling; fails the test after `timeout` seconds."""
    async with asyncio.timeout(timeout):
        while True:
            result = check()
            if not isinstance(result, bool):
                result = await result
            if result:
                return
            await asyncio.sleep(0.01)


async def healthy(cache: Cache) -> bool:
    return (await cache.check_health()).state is HealthState.HEALTHY


@pytest.fixture
async def shared() -> AsyncIterator[Redis]:
    client = Redis.from_url(SHARED_URL)
    try:
        await client.ping()
    except (RedisError, OSError) as exc:
        await client.aclose()
        pytest.skip(f"no redis at {SHARED_URL}: {exc}")
    yield client
    await client.aclose()


@pytest.fixture
def names() -> dict[str, str]:
    tag = uuid.uuid4().hex
    return {"prefix": f"test:{tag}:", "channel": f"test:{tag}:invalidate"}


@pytest.fixture
async def caches(shared: Redis, names: dict[str, str]) -> AsyncIterator[Callable[..., Cache]]:
    """Builds caches that share this test's prefix and channel; stops them and cleans Redis."""
    made: list[Cache] = []

    def make(url: str | None = SHARED_URL, **kwargs: object) -> Cache:
        cache = Cache(url, **{**names, **kwargs})  # type: ignore[arg-type]
        made.append(cache)
        return cache

    yield make
    for cache in made:
        await cache.stop()
    keys = [key async for key in shared.scan_iter(match=names["prefix"] + "*")]
    if keys:
        await shared.delete(*keys)


class RedisProcess:
    """A private redis-server on a free port, for tests that stop and start Redis."""

    def __init__(self, directory: Path) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.directory = directory
        self.process: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            *("redis-server", "--port", str(self.port), "--bind", "127.0.0.1"),
            *("--save", "", "--appendonly", "no", "--dir", str(self.directory)),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        client = Redis.from_url(self.url)
        try:
            await until(lambda: _answers(client))
        finally:
            await client.aclose()

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.kill()  # a crash, not a polite shutdown
            await self.process.wait()
        self.process = None


async def _answers(client: Redis) -> bool:
    try:
        return await client.ping()
    except (RedisError, OSError):
        return False


@pytest.fixture
async def private_redis(tmp_path: Path) -> AsyncIterator[RedisProcess]:
    server = RedisProcess(tmp_path)
    yield server
    await server.stop()


# -- read-through and counters -------------------------------------------------------------


async def test_read_through_fills_both_tiers_and_counts_hits(caches: Callable[..., Cache]) -> None:
    a, b = caches(), caches()
    await a.start()
    await b.start()
    source = Source(b"project-1")

    assert await a.get("p1", source.load) == b"project-1"
    assert await a.get("p1", source.load) == b"project-1"
    assert await b.get("p1", source.load) == b"project-1"  # from Redis

    assert source.calls == 1
    counted = ("hits_local", "hits_redis", "misses", "loads", "errors", "entries")
    assert [a.stats()[c] for c in counted] == [1, 0, 1, 1, 0, 1]
    assert [b.stats()[c] for c in counted] == [0, 1, 1, 0, 0, 1]


async def test_health_reports_counters_as_details(caches: Callable[..., Cache]) -> None:
    cache = caches()
    await cache.start()
    await cache.get("k", Source().load)

    health = await cache.check_health()

    assert health.state is HealthState.HEALTHY
    assert health.details["loads"] == "1"
    assert health.details["entries"] == "1"


async def test_container_runs_the_cache_and_shows_its_counters(
    caches: Callable[..., Cache],
) -> None:
    cache = caches()
    container = make_container(cache)
    async with container.running():
        await cache.get("k", Source().load)

        def shown() -> bool:
            health = container.summary().components[0].health
            return health.state is HealthState.HEALTHY and health.details.get("loads") == "1"

        await until(shown)


async def test_redis_entries_carry_a_jittered_ttl(
    caches: Callable[..., Cache], shared: Redis, names: dict[str, str]
) -> None:
    cache = caches(ttl=100.0)
    await cache.start()
    await cache.get("k", Source().load)

    ttl_ms = await shared.pttl(names["prefix"] + "0.0:k")

    assert 89_000 <= ttl_ms <= 110_000


# -- the local tier ------------------------------------------------------------------------


async def test_lru_evicts_the_least_recently_used_entry(caches: Callable[..., Cache]) -> None:
    cache = caches(None, max_entries=2)
    source = Source()
    await cache.get("a", source.load)
    await cache.get("b", source.load)
    await cache.get("a", source.load)  # "a" is now the most recent

    await cache.get("c", source.load)

    assert "a" in cache
    assert "b" not in cache
    assert "c" in cache
    assert cache.stats()["evictions"] == 1


async def test_lru_evicts_by_total_bytes(caches: Callable[..., Cache]) -> None:
    cache = caches(None, max_bytes=10)
    for key in ("a", "b", "c"):
        await cache.get(key, Source(b"4444").load)

    assert "a" not in cache
    assert cache.stats()["bytes"] == 8
    await cache.get("big", Source(b"x" * 11).load)  # larger than the whole tier
    assert "big" not in cache
    assert "c" in cache


async def test_entries_expire_after_their_ttl(caches: Callable[..., Cache]) -> None:
    cache = caches(None, ttl=0.05)
    source = Source()
    await cache.get("k", source.load)
    assert "k" in cache

    await until(lambda: "k" not in cache)
    await cache.get("k", source.load)

    assert source.calls == 2


async def test_missing_resource_is_cached_briefly(
    caches: Callable[..., Cache], shared: Redis, names: dict[str, str]
) -> None:
    cache = caches(negative_ttl=0.2)
    await cache.start()
    source = Source(None)

    assert await cache.get("gone", source.load) is None
    assert await cache.get("gone", source.load) is None
    assert source.calls == 1
    assert 0 < await shared.pttl(names["prefix"] + "0.0:gone") <= 220

    await until(lambda: "gone" not in cache)
    source.value = b"created"
    await until(lambda: _absent(shared, names["prefix"] + "0.0:gone"))
    assert await cache.get("gone", source.load) == b"created"


async def _absent(client: Redis, key: str) -> bool:
    return not await client.exists(key)


# -- single flight -------------------------------------------------------------------------


async def test_concurrent_misses_call_the_loader_once(caches: Callable[..., Cache]) -> None:
    cache = caches()
    await cache.start()
    source = Source(b"once")
    source.gate = asyncio.Event()

    async with asyncio.TaskGroup() as tg:
        tasks = [tg.create_task(cache.get("k", source.load)) for _ in range(50)]
        await source.entered.wait()
        source.gate.set()

    assert {t.result() for t in tasks} == {b"once"}
    assert source.calls == 1
    assert cache.stats()["loads"] == 1


async def test_failed_load_reaches_every_waiter_and_is_not_cached(
    caches: Callable[..., Cache],
) -> None:
    cache = caches()
    await cache.start()
    gate, calls = asyncio.Event(), 0

    async def broken() -> bytes | None:
        nonlocal calls
        calls += 1
        await gate.wait()
        raise LookupError("database said no")

    waiters = [asyncio.create_task(cache.get("k", broken)) for _ in range(10)]
    await asyncio.sleep(0)
    gate.set()
    results = await asyncio.gather(*waiters, return_exceptions=True)

    assert calls == 1
    assert all(isinstance(r, LookupError) for r in results)
    assert "k" not in cache
    assert await cache.get("k", Source(b"fixed").load) == b"fixed"
    assert cache.stats()["load_errors"] == 1


async def test_cancelled_waiter_does_not_cancel_the_load(caches: Callable[..., Cache]) -> None:
    cache = caches()
    await cache.start()
    source = Source(b"v")
    source.gate = asyncio.Event()
    impatient = asyncio.create_task(cache.get("k", source.load))
    await source.entered.wait()
    patient = asyncio.create_task(cache.get("k", source.load))
    await asyncio.sleep(0)

    impatient.cancel()
    with pytest.raises(asyncio.CancelledError):
        await impatient
    source.gate.set()

    assert await patient == b"v"
    assert source.calls == 1
    assert "k" in cache


# -- invalidation --------------------------------------------------------------------------


async def test_invalidation_reaches_every_instance(caches: Callable[..., Cache]) -> None:
    a, b = caches(), caches()
    await a.start()
    await b.start()
    source = Source(b"old")
    await a.get("k", source.load)
    await b.get("k", source.load)
    assert "k" in b

    source.value = b"new"
    await a.invalidate("k")

    assert "k" not in a
    await until(lambda: "k" not in b)
    assert await b.get("k", source.load) == b"new"
    assert await a.get("k", source.load) == b"new"


async def test_fill_racing_an_invalidation_does_not_resurrect_old_data(
    caches: Callable[..., Cache], shared: Redis, names: dict[str, str]
) -> None:
    # The reader listens on another channel: as if the invalidation message were late.
    writer, fresh = caches(), caches()
    reader = caches(channel=names["channel"] + ":late")
    for cache in (writer, reader, fresh):
        await cache.start()
    source = Source(b"old")
    source.gate = asyncio.Event()
    racing = asyncio.create_task(reader.get("k", source.load))
    await source.entered.wait()  # the reader has read "old" from the database

    source.value = b"new"  # the writer commits ...
    await writer.invalidate("k")  # ... then invalidates
    source.gate.set()
    assert await racing == b"old"  # the reader's own caller still sees what it read

    assert await shared.get(names["prefix"] + "0.0:k") == b"t"  # the fill did not replace it
    assert await fresh.get("k", source.load) == b"new"


async def test_fill_racing_an_invalidation_from_elsewhere_is_not_stored(
    caches: Callable[..., Cache],
) -> None:
    writer, reader = caches(), caches()
    await writer.start()
    await reader.start()
    await reader.get("probe", Source().load)
    source = Source(b"old")
    source.gate = asyncio.Event()
    racing = asyncio.create_task(reader.get("k", source.load))
    await source.entered.wait()

    source.value = b"new"
    await writer.invalidate("k", "probe")
    await until(lambda: "probe" not in reader)  # the reader has the message ...
    source.gate.set()
    assert await racing == b"old"  # ... before its load finishes

    assert "k" not in reader
    assert await reader.get("k", source.load) == b"new"


async def test_local_fill_racing_an_invalidation_is_not_stored(
    caches: Callable[..., Cache],
) -> None:
    cache = caches(None)
    source = Source(b"old")
    source.gate = asyncio.Event()
    racing = asyncio.create_task(cache.get("k", source.load))
    await source.entered.wait()

    source.value = b"new"
    await cache.invalidate("k")
    source.gate.set()
    assert await racing == b"old"

    assert "k" not in cache
    source.gate = None
    assert await cache.get("k", source.load) == b"new"


async def test_in_process_mode_needs_no_redis(caches: Callable[..., Cache]) -> None:
    cache = caches(None)
    await cache.start()
    source = Source(b"v")

    assert await cache.get("k", source.load) == b"v"
    assert await cache.get("k", source.load) == b"v"
    await cache.invalidate("k")
    assert "k" not in cache

    health = await cache.check_health()
    assert health.state is HealthState.HEALTHY
    assert health.details["mode"] == "local"
    assert cache.stats()["hits_local"] == 1


# -- Redis down and back (a private redis-server) ------------------------------------------


async def test_start_succeeds_without_redis_and_recovers_when_it_starts(
    caches: Callable[..., Cache], private_redis: RedisProcess
) -> None:
    a = caches(private_redis.url, backoff=0.1)
    started = time.monotonic()
    await a.start()
    assert time.monotonic() - started < 0.5
    source = Source(b"from-db")

    started = time.monotonic()
    assert await a.get("k", source.load) == b"from-db"
    assert await a.get("k2", source.load) == b"from-db"
    assert time.monotonic() - started < 1.0
    health = await a.check_health()
    assert health.state is HealthState.DEGRADED
    assert health.reason.startswith("redis unreachable: ")

    await private_redis.start()
    await until(lambda: healthy(a))

    b = caches(private_redis.url, backoff=0.1)
    await b.start()
    await b.get("k", source.load)
    await a.invalidate("k")
    await until(lambda: "k" not in b)


async def test_redis_lost_during_traffic_degrades_then_recovers(
    caches: Callable[..., Cache], private_redis: RedisProcess
) -> None:
    await private_redis.start()
    a, b = caches(private_redis.url, backoff=0.1), caches(private_redis.url, backoff=0.1)
    await a.start()
    await b.start()
    assert await healthy(a)
    source = Source(b"v")
    await b.get("cached", source.load)

    with capture_logs() as logs:
        await private_redis.stop()
        async with asyncio.timeout(2.0):  # every request answered without waiting for Redis
            for i in range(20):
                assert await a.get(f"during-{i}", source.load) == b"v"
        assert (await a.check_health()).state is HealthState.DEGRADED
        assert a.stats()["errors"] >= 1

        await private_redis.start()
        await until(lambda: healthy(a))
        await until(lambda: healthy(b))
    retries = [e for e in logs if e["event"] == "retry.scheduled"]
    assert "cache.listen" in {e["operation"] for e in retries}  # the listeners reconnected
    assert "cached" not in b  # invalidations may have been missed: local tier cleared
    await b.get("k", source.load)
    await a.invalidate("k")
    await until(lambda: "k" not in b)


async def test_hung_redis_costs_one_timeout_then_backs_off(
    caches: Callable[..., Cache], private_redis: RedisProcess
) -> None:
    await private_redis.start()
    cache = caches(private_redis.url, redis_timeout=0.2, backoff=30.0)
    await cache.start()
    assert private_redis.process is not None
    private_redis.process.send_signal(signal.SIGSTOP)  # accepts, never answers
    try:
        source = Source(b"v")
        async with asyncio.timeout(1.0):  # one 0.2 s timeout, then no more attempts
            for i in range(20):
                assert await cache.get(f"k{i}", source.load) == b"v"
        assert source.calls == 20
        assert cache.stats()["errors"] < 5
        health = await cache.check_health()
        assert health.state is HealthState.DEGRADED
        assert health.reason == "redis unreachable: TimeoutError"
    finally:
        private_redis.process.send_signal(signal.SIGCONT)


async def test_invalidation_during_an_outage_is_retried(
    caches: Callable[..., Cache], private_redis: RedisProcess, names: dict[str, str]
) -> None:
    await private_redis.start()
    a = caches(private_redis.url, backoff=0.1)
    await a.start()
    await private_redis.stop()
    await a.get("k", Source().load)
    await a.invalidate("k")  # does not raise: the write already committed

    await private_redis.start()
    client = Redis.from_url(private_redis.url)
    try:
        await until(lambda: _tombstoned(client, a, names["prefix"] + "0.0:k"))
    finally:
        await client.aclose()


async def _tombstoned(client: Redis, cache: Cache, redis_key: str) -> bool:
    await cache.check_health()  # a healthy check retries what is pending
    return await client.get(redis_key) == b"t"


# -- how each lookup was served ------------------------------------------------------------


async def outcome_of(cache: Cache, key: str, source: Source) -> tuple[bytes | None, str | None]:
    """The value and the outcome the lookup noted, in a task of its own as a call has."""

    async def lookup() -> tuple[bytes | None, str | None]:
        return await cache.get(key, source.load), cache_outcome()

    return await asyncio.create_task(lookup())


async def test_each_lookup_notes_how_it_was_served(caches: Callable[..., Cache]) -> None:
    a, b = caches(), caches()
    await a.start()
    await b.start()
    source = Source(b"v")

    assert await outcome_of(a, "k", source) == (b"v", "miss")
    assert await outcome_of(a, "k", source) == (b"v", "local-hit")
    assert await outcome_of(b, "k", source) == (b"v", "shared-hit")


async def test_a_lookup_redis_cannot_vouch_for_is_a_bypass(
    caches: Callable[..., Cache], private_redis: RedisProcess
) -> None:
    cache = caches(private_redis.url, backoff=0.1)  # never started: Redis unreachable
    await cache.start()
    source = Source(b"v")

    assert await outcome_of(cache, "k", source) == (b"v", "bypass")
    assert await outcome_of(cache, "k", source) == (b"v", "bypass")  # nothing was kept
    assert source.calls == 2


# -- clear ---------------------------------------------------------------------------------


async def test_clear_drops_every_instance_and_redis(caches: Callable[..., Cache]) -> None:
    a, b = caches(), caches()
    await a.start()
    await b.start()
    source = Source(b"old")
    for cache in (a, b):
        await cache.get("projects/p1", source.load)
    source.value = b"new"  # changed behind the cache

    cleared = await a.clear()

    assert (cleared.notified, cleared.confirmed) == (2, 2)
    assert "projects/p1" not in a
    assert "projects/p1" not in b  # confirmed before clear returned
    assert await b.get("projects/p1", source.load) == b"new"  # not from Redis
    assert source.calls == 2


async def test_clear_of_one_resource_keeps_the_others(caches: Callable[..., Cache]) -> None:
    a, b = caches(), caches()
    await a.start()
    await b.start()
    source = Source(b"v")
    for key in ("projects/p1", "notes/n1"):
        await a.get(key, source.load)
        await b.get(key, source.load)

    await a.clear("projects")

    assert "projects/p1" not in b
    assert "notes/n1" in b
    assert await outcome_of(a, "notes/n1", source) == (b"v", "local-hit")
    c = caches()
    await c.start()
    assert await outcome_of(c, "notes/n1", source) == (b"v", "shared-hit")  # kept in Redis
    assert await outcome_of(c, "projects/p1", source) == (b"v", "miss")


async def test_a_load_racing_a_clear_stores_nothing(
    caches: Callable[..., Cache], shared: Redis, names: dict[str, str]
) -> None:
    # The reader listens on another channel, so only Redis's generations protect it: its
    # load read the database before the clear and finishes after it.
    clearer = caches()
    reader = caches(channel=names["channel"] + ":late")
    fresh = caches()
    for cache in (clearer, reader, fresh):
        await cache.start()
    source = Source(b"old")
    source.gate = asyncio.Event()
    racing = asyncio.create_task(reader.get("projects/p1", source.load))
    await source.entered.wait()

    source.value = b"new"  # changed behind the cache, then cleared
    await clearer.clear("projects")
    source.gate.set()
    assert await racing == b"old"  # its own caller still gets what it read

    keys = [k async for k in shared.scan_iter(match=names["prefix"] + "*:projects/p1")]
    assert keys == []  # the fill under the old generation was refused
    source.gate = None
    assert await fresh.get("projects/p1", source.load) == b"new"


async def test_a_local_load_racing_a_clear_is_not_kept(caches: Callable[..., Cache]) -> None:
    cache = caches(None)
    source = Source(b"old")
    source.gate = asyncio.Event()
    racing = asyncio.create_task(cache.get("projects/p1", source.load))
    await source.entered.wait()

    source.value = b"new"
    assert await cache.clear() == Cleared(1, 1)
    source.gate.set()
    assert await racing == b"old"

    assert "projects/p1" not in cache
    source.gate = None
    assert await cache.get("projects/p1", source.load) == b"new"


async def test_clear_with_redis_unreachable_is_unavailable_and_drops_local_copies(
    caches: Callable[..., Cache], private_redis: RedisProcess
) -> None:
    cache = caches(private_redis.url, backoff=0.1)
    await cache.start()
    cache._local.store("projects/p1", b"v", 60.0)  # as if filled before Redis went away

    with pytest.raises(UnavailableError) as caught:
        await cache.clear("projects")

    assert caught.value.reason == "CACHE_UNAVAILABLE"
    assert "projects/p1" not in cache


async def test_invalidation_also_tombstones_the_key_older_versions_read(
    caches: Callable[..., Cache], shared: Redis, names: dict[str, str]
) -> None:
    # An instance of a version before generations reads `{prefix}{key}`: during a rolling
    # upgrade it must not read back a value the new instances' writes made old.
    await shared.set(names["prefix"] + "projects/p1", b"vold", px=60_000)
    cache = caches()
    await cache.start()

    await cache.invalidate("projects/p1")

    assert await shared.get(names["prefix"] + "projects/p1") == b"t"
    assert await shared.get(names["prefix"] + "0.0:projects/p1") == b"t"
