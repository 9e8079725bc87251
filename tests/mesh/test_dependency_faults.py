"""A hung, cut or refusing dependency, found quickly and recovered from without a restart.

A real `mesh serve` reaches PostgreSQL or Redis through our fault proxy
(tests/faults/proxy.py), which freezes (sockets open, nothing flows), cuts (resets every
connection) and refuses. The server runs with the default health settings: checks every
second, each bounded at 1 s, UNHEALTHY after two failures in a row, serving after one
success. Light traffic runs throughout on a client without health checking, so the calls
reach the server whatever its readiness says. Measured figures are printed (`pytest -s`);
the bounds asserted are generous, since the machine is shared.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest

from clients.health import HealthClient
from clients.projects import ProjectsClient
from core.calls.status import from_rpc_error
from core.errors import DomainError, UnavailableError
from mesh.admin.v1 import admin_pb2
from mesh.events.v1 import events_pb2, events_pb2_grpc
from tests.faults.proxy import FaultProxy
from tests.integration._projects import a_project
from tests.mesh._processes import (
    MeshProcess,
    fresh_database,
    mesh_env,
    pg_url,
    private_redis,
    serving,
    wait_component,
    wait_health,
)

pytestmark = pytest.mark.timeout(120)

DETECTED_WITHIN = 10.0  # seconds; about 3 with the defaults
RECOVERED_WITHIN = 10.0  # seconds; about 1 with the defaults
FAST = 2.0  # seconds a refused call may take: "at once", on a shared machine
HELD = 12.0  # seconds a freeze is held after it was detected
EVENTS = "mesh.events.v1.EventService"
PROJECTS = "mesh.projects.v1.ProjectService"

Publish = Callable[[str], Awaitable[None]]


@dataclass
class Call:
    started: float
    took: float = -1.0  # still running
    outcome: str = ""  # "ok", or the error's reason


@dataclass
class Traffic:
    """A data call every `every` seconds, each on its own, so a hung one holds up none."""

    calls: list[Call] = field(default_factory=list)

    def since(self, moment: float) -> list[Call]:
        return [c for c in self.calls if c.started >= moment]

    def failed(self) -> list[Call]:
        return [c for c in self.calls if c.outcome not in ("", "ok")]


@asynccontextmanager
async def traffic(address: str, *, every: float = 0.2) -> AsyncIterator[Traffic]:
    """Lists projects (a read the cache does not serve) until the block ends; then waits
    for the calls still running, which their 30 s deadline bounds."""
    seen = Traffic()
    async with ProjectsClient(address, health_checked=False, attempts=1, deadline=30) as client:

        async def one() -> None:
            call = Call(time.monotonic())
            seen.calls.append(call)
            try:
                await client.list_projects()
                call.outcome = "ok"
            except DomainError as exc:
                call.outcome = exc.reason or exc.code.name
            call.took = time.monotonic() - call.started

        running: set[asyncio.Task[None]] = set()

        async def calling() -> None:
            while True:
                task = asyncio.create_task(one())
                running.add(task)
                task.add_done_callback(running.discard)
                await asyncio.sleep(every)

        loop = asyncio.create_task(calling())
        try:
            yield seen
        finally:
            loop.cancel()
            await asyncio.gather(loop, return_exceptions=True)
            await asyncio.gather(*running, return_exceptions=True)  # each bounded by 30 s


@dataclass
class Watched:
    statuses: list[str] = field(default_factory=list)


@asynccontextmanager
async def watching(address: str, service: str) -> AsyncIterator[Watched]:
    """Every status a health Watch of `service` reports while the block runs."""
    watched = Watched()
    async with HealthClient(address) as health:

        async def follow() -> None:
            async for status in health.watch(service):
                watched.statuses.append(status)

        task = asyncio.create_task(follow())
        try:
            async with asyncio.timeout(10):
                while not watched.statuses:  # noqa: ASYNC110 (the watch sets no event)
                    await asyncio.sleep(0.02)
            yield watched
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


async def status(address: str, service: str) -> str:
    async with HealthClient(address) as health:
        return await health.check(service)


async def seconds_until(address: str, service: str, status: str, within: float) -> float:
    started = time.monotonic()
    await wait_health(address, service, status, within=within)
    return time.monotonic() - started


async def fails_fast(address: str) -> tuple[UnavailableError, float]:
    """A data call made now: the UNAVAILABLE it fails with, and how long it took."""
    started = time.monotonic()
    async with ProjectsClient(address, health_checked=False, attempts=1, deadline=30) as client:
        with pytest.raises(UnavailableError) as refused:
            await client.list_projects()
    return refused.value, time.monotonic() - started


async def answers(address: str, *, within: float = 10.0) -> None:
    """A data call succeeds within `within` seconds (the first after an outage may fail)."""
    async with ProjectsClient(address, health_checked=False, attempts=1, deadline=5) as client:
        async with asyncio.timeout(within):
            while True:
                try:
                    await client.list_projects()
                    return
                except UnavailableError:
                    await asyncio.sleep(0.1)


@asynccontextmanager
async def publisher(address: str) -> AsyncIterator[Publish]:
    """Publishes one event per call, straight through a channel (no health checking)."""
    async with grpc.aio.insecure_channel(address) as channel:
        stub = events_pb2_grpc.EventServiceStub(channel)

        async def publish(event_id: str) -> None:
            event = events_pb2.Event(id=event_id, type="demo.v1.thing", source="test")
            try:
                await stub.Publish(events_pb2.PublishRequest(event=event), timeout=10)
            except grpc.aio.AioRpcError as exc:
                raise from_rpc_error(exc) from None

        yield publish


# -- PostgreSQL ------------------------------------------------------------------------------


@dataclass
class Behind:
    server: MeshProcess
    proxy: FaultProxy


@pytest.fixture
async def behind_pg_proxy() -> AsyncIterator[Behind]:
    """`mesh serve projects` on a fresh PostgreSQL database reached through the proxy."""
    async with fresh_database() as database, FaultProxy(5432) as proxy:
        url = pg_url(database).replace(":5432/", f":{proxy.port}/", 1)
        env = mesh_env(MESH_DATABASE_URL=url, MESH_MIGRATE_ON_START="true")
        async with serving("projects", env=env) as server:
            async with ProjectsClient(server.address) as projects:
                await projects.create_project(a_project(), project_id="before")
            await wait_health(server.address, "readiness", "SERVING")
            yield Behind(server, proxy)


async def test_a_frozen_postgresql_turns_readiness_off_and_calls_fail_fast(
    behind_pg_proxy: Behind,
) -> None:
    server, proxy = behind_pg_proxy.server, behind_pg_proxy.proxy
    address = server.address
    async with traffic(address) as calls:
        await asyncio.sleep(0.5)
        frozen = time.monotonic()
        proxy.freeze()
        detected = await seconds_until(address, "readiness", "NOT_SERVING", DETECTED_WITHIN)
        assert await status(address, PROJECTS) == "NOT_SERVING"
        error, took = await fails_fast(address)
        assert error.reason == "SERVER_NOT_READY"
        assert "database UNHEALTHY" in error.message
        assert took < FAST
        # Held past when the calls made before the detection would have ended at the thaw.
        await asyncio.sleep(HELD)
        thawed = time.monotonic()
        proxy.thaw()
        recovered = await seconds_until(address, "readiness", "SERVING", RECOVERED_WITHIN)
        await answers(address)
    assert server.proc.returncode is None
    before = [c for c in calls.since(frozen) if c.started < frozen + detected]
    during = [c for c in calls.since(frozen + detected) if c.started < thawed]
    assert during, "no call was made while readiness was NOT_SERVING"
    assert {c.outcome for c in during} == {"SERVER_NOT_READY"}
    # The calls caught by the freeze were let go (their connections dropped when the
    # database was found UNHEALTHY, or their new ones not opened in 5 s), not held until
    # the thaw or their 30 s deadline.
    assert {c.outcome for c in before} <= {"DATABASE_UNAVAILABLE", "SERVER_NOT_READY"}
    slowest = max(c.took for c in before)
    assert slowest < HELD
    print(
        f"\nPostgreSQL frozen: NOT_SERVING after {detected:.2f} s; a call then failed in "
        f"{took * 1000:.0f} ms ({error.reason}); the {len(before)} calls made before that "
        f"failed DATABASE_UNAVAILABLE within {slowest:.2f} s; SERVING {recovered:.2f} s after "
        f"the thaw"
    )


async def test_a_short_postgresql_freeze_does_not_toggle_readiness(
    behind_pg_proxy: Behind,
) -> None:
    address, proxy = behind_pg_proxy.server.address, behind_pg_proxy.proxy
    async with watching(address, "readiness") as readiness, traffic(address) as calls:
        await asyncio.sleep(0.5)
        proxy.freeze()
        await asyncio.sleep(0.5)
        proxy.thaw()
        await asyncio.sleep(4.0)  # past the time a real outage would have been found
    assert readiness.statuses == ["SERVING"]
    assert calls.failed() == []
    slowest = max(c.took for c in calls.calls)
    print(f"\nPostgreSQL frozen 0.5 s: readiness stayed SERVING; slowest call {slowest:.2f} s")


async def test_postgresql_cut_and_refused_then_restored_recovers_without_restart(
    behind_pg_proxy: Behind,
) -> None:
    server, proxy = behind_pg_proxy.server, behind_pg_proxy.proxy
    address = server.address
    async with traffic(address) as calls:
        await asyncio.sleep(0.5)
        proxy.refuse(True)
        proxy.cut()
        detected = await seconds_until(address, "readiness", "NOT_SERVING", DETECTED_WITHIN)
        error, took = await fails_fast(address)
        assert took < FAST
        restored = time.monotonic()
        proxy.refuse(False)
        recovered = await seconds_until(address, "readiness", "SERVING", RECOVERED_WITHIN)
        await answers(address)
        await asyncio.sleep(1.5)
    assert server.proc.returncode is None
    after = [c for c in calls.since(restored + recovered + 0.3) if c.took >= 0]
    assert after
    assert {c.outcome for c in after} == {"ok"}
    assert {c.outcome for c in calls.failed()} <= {"SERVER_NOT_READY", "DATABASE_UNAVAILABLE"}
    print(
        f"\nPostgreSQL cut and refused: NOT_SERVING after {detected:.2f} s ({error.reason} in "
        f"{took * 1000:.0f} ms); SERVING {recovered:.2f} s after it was restored"
    )


# -- Redis -----------------------------------------------------------------------------------


@asynccontextmanager
async def behind_redis_proxy(tmp_path: Path, *services: str) -> AsyncIterator[Behind]:
    """`mesh serve SERVICES` on SQLite, with Redis (cache and event streams) behind the proxy."""
    async with private_redis(tmp_path / "redis") as redis, FaultProxy(redis.port) as proxy:
        env = mesh_env(
            MESH_DATA_DIR=str(tmp_path / "data"),
            MESH_REDIS_URL=f"redis://127.0.0.1:{proxy.port}/0",
            MESH_EVENTS_BACKEND="redis",
            MESH_CACHE_NAMESPACE=f"faults-{redis.port}",
        )
        async with serving(*services, env=env) as server:
            await wait_health(server.address, "readiness", "SERVING")
            yield Behind(server, proxy)


async def test_a_frozen_redis_degrades_the_projects_service_which_keeps_serving(
    tmp_path: Path,
) -> None:
    # README: with Redis down the cache serves from the database and reports DEGRADED; the
    # event bus (not serving EventService here) reports DEGRADED while events wait in the
    # outbox. Neither is a reason to take the process out of rotation.
    async with behind_redis_proxy(tmp_path, "projects") as behind:
        address = behind.server.address
        async with watching(address, "readiness") as readiness, traffic(address) as calls:
            await asyncio.sleep(0.5)
            frozen = time.monotonic()
            behind.proxy.freeze()
            cache = await wait_component(address, "cache", admin_pb2.HEALTH_STATE_DEGRADED)
            degraded = time.monotonic() - frozen
            await wait_component(address, "event-bus", admin_pb2.HEALTH_STATE_DEGRADED)
            async with ProjectsClient(address, health_checked=False, deadline=5) as projects:
                created = await projects.create_project(a_project(), project_id="during")
                assert (await projects.get_project(created.name)).name == created.name
            thawed = time.monotonic()
            behind.proxy.thaw()
            await wait_component(address, "cache", admin_pb2.HEALTH_STATE_HEALTHY)
            await wait_component(address, "event-bus", admin_pb2.HEALTH_STATE_HEALTHY)
            healthy = time.monotonic() - thawed
    assert readiness.statuses == ["SERVING"]
    assert calls.failed() == []
    print(
        f"\nRedis frozen under `mesh serve projects`: cache DEGRADED after {degraded:.2f} s "
        f"({cache.health.reason}); readiness stayed SERVING; cache and event bus HEALTHY "
        f"{healthy:.2f} s after the thaw; slowest call {max(c.took for c in calls.calls):.2f} s"
    )


async def test_a_frozen_redis_turns_the_events_service_not_serving_until_it_thaws(
    tmp_path: Path,
) -> None:
    # README: the events service stores events in Redis Streams; with Redis hung it cannot
    # serve, so its readiness goes; the projects service, which needs only its database,
    # keeps serving.
    async with behind_redis_proxy(tmp_path, "projects", "events") as behind:
        address = behind.server.address
        async with publisher(address) as publish:
            await publish("e1")
            behind.proxy.freeze()
            detected = await seconds_until(address, "readiness", "NOT_SERVING", DETECTED_WITHIN)
            assert await status(address, EVENTS) == "NOT_SERVING"
            assert await status(address, PROJECTS) == "SERVING"
            started = time.monotonic()
            with pytest.raises(UnavailableError) as refused:
                await publish("e2")
            took = time.monotonic() - started
            assert refused.value.reason == "SERVER_NOT_READY"
            assert took < FAST
            async with ProjectsClient(address, health_checked=False, deadline=5) as projects:
                await projects.list_projects()
            behind.proxy.thaw()
            thawed = time.monotonic()
            recovered = await seconds_until(address, "readiness", "SERVING", RECOVERED_WITHIN)
            await publish("e3")
        assert behind.server.proc.returncode is None
    print(
        f"\nRedis frozen under the events service: NOT_SERVING after {detected:.2f} s; "
        f"Publish then refused in {took * 1000:.0f} ms; SERVING {recovered:.2f} s after the "
        f"thaw ({time.monotonic() - thawed:.2f} s to publish again)"
    )


async def test_redis_cut_and_refused_then_restored_recovers_without_restart(
    tmp_path: Path,
) -> None:
    async with behind_redis_proxy(tmp_path, "projects", "events") as behind:
        address, proxy = behind.server.address, behind.proxy
        async with publisher(address) as publish, traffic(address) as calls:
            await publish("e1")
            proxy.refuse(True)
            proxy.cut()
            detected = await seconds_until(address, "readiness", "NOT_SERVING", DETECTED_WITHIN)
            proxy.refuse(False)
            recovered = await seconds_until(address, "readiness", "SERVING", RECOVERED_WITHIN)
            await publish("e2")
            await wait_component(address, "cache", admin_pb2.HEALTH_STATE_HEALTHY)
        assert behind.server.proc.returncode is None
    assert calls.failed() == []  # projects needs only its database: served throughout
    print(
        f"\nRedis cut and refused: NOT_SERVING after {detected:.2f} s; SERVING "
        f"{recovered:.2f} s after it was restored; {len(calls.calls)} project calls, none failed"
    )
