"""The projects service as real `mesh serve` processes on PostgreSQL and Redis.

Two servers on one database never serve a stale project after an update returned; the
service keeps answering correctly while Redis is dead and recovers by itself when it
returns; the projects service's readiness follows its database.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import pytest
from redis.asyncio import Redis

from clients.admin import AdminClient
from clients.health import HealthClient
from clients.projects import Project, ProjectsClient
from core.errors import DomainError, NotFoundError, UnavailableError
from core.resources.resource import etag_for
from mesh.admin.v1 import admin_pb2
from tests.mesh._processes import (
    MeshProcess,
    component,
    fresh_database,
    mesh_env,
    pg_admin,
    pg_url,
    private_redis,
    redis_client,
    run_mesh,
    serving,
    wait_component,
    wait_health,
)

SHARED_REDIS = "redis://127.0.0.1:6379/0"
PROJECT_SERVICE = "mesh.projects.v1.ProjectService"
HEALTHY = admin_pb2.HEALTH_STATE_HEALTHY
DEGRADED = admin_pb2.HEALTH_STATE_DEGRADED
UNHEALTHY = admin_pb2.HEALTH_STATE_UNHEALTHY


def new_project(display_name: str = "Demo") -> Project:
    return Project(
        display_name=display_name,
        project_type=Project.PROJECT_TYPE_MUSIC_CLIP,
        owner="users/alice",
    )


def described(name: str, description: str) -> Project:
    """An update of one field; used with update_mask=["description"]."""
    return Project(name=name, description=description)


class Revisions:
    """Maps a project's etag back to its revision, so reads can be ordered against writes."""

    def __init__(self, name: str) -> None:
        self._id = name.removeprefix("projects/")
        self._known: dict[str, int] = {}
        self._next = 1

    def __call__(self, etag: str) -> int:
        while etag not in self._known:
            if self._next > 1_000_000:
                raise AssertionError(f"{etag} is no etag of {self._id}")
            self._known[etag_for(self._id, self._next)] = self._next
            self._next += 1
        return self._known[etag]


@pytest.fixture
def namespace() -> str:
    """A cache namespace of this test's own, so runs never share Redis keys or channels."""
    return f"test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def database() -> AsyncIterator[str]:
    async with fresh_database() as name:
        yield name


@pytest.fixture
async def shared_redis(namespace: str) -> AsyncIterator[str]:
    """The machine's Redis; this test's keys are deleted afterwards."""
    yield SHARED_REDIS
    async with redis_client(SHARED_REDIS) as client, asyncio.timeout(10):
        keys = [key async for key in client.scan_iter(match=f"{namespace}:*")]
        if keys:
            await client.delete(*keys)


def pg_env(database: str, **values: str) -> dict[str, str]:
    return mesh_env(
        MESH_DATABASE_URL=pg_url(database),
        MESH_HEALTH_INTERVAL_SECONDS="0.2",
        MESH_HEALTH_TIMEOUT_SECONDS="1",
        **values,
    )


@asynccontextmanager
async def two_servers(
    database: str, redis_url: str, namespace: str
) -> AsyncIterator[tuple[ProjectsClient, ProjectsClient]]:
    """Servers A and B on one PostgreSQL database and one Redis; A migrates, then B starts.

    The clients make one attempt per call, so a failure is never hidden by a retry.
    """
    env = pg_env(database, MESH_REDIS_URL=redis_url, MESH_CACHE_NAMESPACE=namespace)
    async with (
        serving("projects", env=env | {"MESH_MIGRATE_ON_START": "true"}) as a,
        serving("projects", env=env | {"MESH_MIGRATE_ON_START": "false"}) as b,
        ProjectsClient(a.address, attempts=1) as on_a,
        ProjectsClient(b.address, attempts=1) as on_b,
    ):
        yield on_a, on_b


# -- cache staleness across two processes ----------------------------------------------------


async def test_an_update_on_one_server_is_never_read_stale_on_the_other(
    database: str, shared_redis: str, namespace: str
) -> None:
    async with two_servers(database, shared_redis, namespace) as (on_a, on_b):
        servers = {"A": on_a, "B": on_b}
        latest = await on_a.create_project(new_project(), project_id="stale-check")
        name = latest.name
        revision = Revisions(name)
        for client in servers.values():  # both servers cache it
            assert (await client.get_project(name)).etag == latest.etag

        stale: list[str] = []
        for i in range(50):
            writer, reader = ("A", "B") if i % 2 == 0 else ("B", "A")
            latest = await servers[writer].update_project(
                described(name, f"update {i}"), update_mask=["description"], etag=latest.etag
            )
            for label in (reader, writer):  # the other server first, at once
                seen = await servers[label].get_project(name)
                if seen.etag != latest.etag:
                    stale.append(
                        f"update {i} via {writer}: {label} answered revision "
                        f"{revision(seen.etag)} after revision {revision(latest.etag)} returned"
                    )

    assert stale == []


async def test_a_delete_on_one_server_shows_at_once_on_the_other(
    database: str, shared_redis: str, namespace: str
) -> None:
    async with two_servers(database, shared_redis, namespace) as (on_a, on_b):
        created = await on_a.create_project(new_project(), project_id="delete-check")
        name = created.name
        for client in (on_a, on_b):
            assert (await client.get_project(name)).state == Project.STATE_ACTIVE

        deleted = await on_b.delete_project(name, etag=created.etag)
        seen = await on_a.get_project(name)
        assert seen.state == Project.STATE_DELETED
        assert seen.etag == deleted.etag

        restored = await on_a.undelete_project(name, etag=deleted.etag)
        seen = await on_b.get_project(name)
        assert seen.state == Project.STATE_ACTIVE
        assert seen.etag == restored.etag


# -- redis dies and returns during traffic ---------------------------------------------------


@dataclass
class Traffic:
    """One writer and two readers on one project, until stopped; records every outcome.

    A read is stale when its revision is below that of the last update that had returned
    before the read began.
    """

    client: ProjectsClient
    name: str
    latest: int = 1
    updates: int = 0
    gets: int = 0
    stale: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    def __post_init__(self) -> None:
        self.revision = Revisions(self.name)

    async def write(self) -> None:
        while not self.stopping.is_set():
            n = self.updates + len(self.errors)
            try:
                project = await self.client.update_project(
                    described(self.name, f"update {n}"), update_mask=["description"]
                )
            except DomainError as exc:
                self.errors.append(f"update {n}: {type(exc).__name__}: {exc}")
            else:
                self.latest = max(self.latest, self.revision(project.etag))
                self.updates += 1
            await self._notify()

    async def read(self) -> None:
        while not self.stopping.is_set():
            floor = self.latest
            try:
                project = await self.client.get_project(self.name)
            except DomainError as exc:
                self.errors.append(f"get: {type(exc).__name__}: {exc}")
            else:
                got = self.revision(project.etag)
                if got < floor:
                    self.stale.append(f"get began after revision {floor} returned, got {got}")
                self.gets += 1
            await self._notify()

    async def _notify(self) -> None:
        async with self.changed:
            self.changed.notify_all()

    async def more(self, updates: int, gets: int, *, within: float = 15.0) -> None:
        """Waits until `updates` more updates and `gets` more gets succeeded (or one failed)."""
        want_updates, want_gets = self.updates + updates, self.gets + gets
        try:
            async with asyncio.timeout(within), self.changed:
                await self.changed.wait_for(
                    lambda: (
                        bool(self.errors)
                        or (self.updates >= want_updates and self.gets >= want_gets)
                    )
                )
        except TimeoutError:
            raise AssertionError(
                f"traffic stalled at {self.updates} updates, {self.gets} gets"
            ) from None
        assert self.errors == []

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Traffic]:
        tasks = [
            asyncio.create_task(self.write()),
            asyncio.create_task(self.read()),
            asyncio.create_task(self.read()),
        ]
        try:
            yield self
        finally:
            self.stopping.set()
            async with asyncio.timeout(15):
                await asyncio.gather(*tasks)


async def cache_in_status(address: str) -> dict[str, Any]:
    """The cache component as `mesh status --json` shows it."""
    code, out, err = await run_mesh("status", "--json", "--address", address, env=mesh_env())
    assert code == 0, err
    summary: dict[str, Any] = json.loads(out)
    [cache] = [c for c in summary["components"] if c["name"] == "cache"]
    return cast(dict[str, Any], cache)


async def test_redis_killed_and_restarted_during_traffic(tmp_path: Path) -> None:
    async with (
        private_redis(tmp_path / "redis") as redis,
        serving(
            "projects",
            env=mesh_env(
                MESH_DATA_DIR=str(tmp_path / "data"),
                MESH_REDIS_URL=redis.url,
                MESH_HEALTH_INTERVAL_SECONDS="0.2",
                MESH_HEALTH_TIMEOUT_SECONDS="1",
            ),
        ) as server,
        ProjectsClient(server.address, attempts=1) as projects,
    ):
        await wait_component(server.address, "cache", HEALTHY)
        created = await projects.create_project(new_project(), project_id="redis-outage")
        traffic = Traffic(projects, created.name)
        async with traffic.running():
            await traffic.more(updates=10, gets=10)

            await redis.kill()
            cache = await wait_component(server.address, "cache", DEGRADED)
            assert "redis" in cache.health.reason
            await traffic.more(updates=20, gets=20)  # served from the database meanwhile

            shown = (await cache_in_status(server.address))["health"]
            assert shown["state"] == "HEALTH_STATE_DEGRADED"
            assert "redis unreachable" in shown["reason"]
            assert int(shown["details"]["errors"]) > 0  # counters are in the summary

            await redis.start()  # on the same port
            await wait_component(server.address, "cache", HEALTHY, within=15)
            await traffic.more(updates=10, gets=10)

        async with AdminClient(server.address) as admin:
            assert component(await admin.get_service_summary(), "cache").health.state == HEALTHY

    assert traffic.errors == []
    assert traffic.stale == []


# -- readiness follows the database ----------------------------------------------------------


@asynccontextmanager
async def server_on(database: str) -> AsyncIterator[MeshProcess]:
    env = pg_env(database, MESH_MIGRATE_ON_START="true")
    async with serving("projects", env=env) as server:
        await wait_health(server.address, PROJECT_SERVICE, "SERVING")
        yield server


async def test_readiness_follows_the_database(database: str) -> None:
    async with server_on(database) as server, HealthClient(server.address) as health:
        for name in (PROJECT_SERVICE, "readiness", "liveness", ""):
            assert await health.check(name) == "SERVING", name

        await pg_admin(f'DROP DATABASE "{database}" WITH (FORCE)')  # unreachable from now on
        await wait_health(server.address, PROJECT_SERVICE, "NOT_SERVING")
        assert await health.check("readiness") == "NOT_SERVING"
        assert await health.check("") == "NOT_SERVING"
        assert await health.check("liveness") == "SERVING"  # an outage is no reason to restart
        async with AdminClient(server.address) as admin:
            db = component(await admin.get_service_summary(), "database")
        assert db.health.state == UNHEALTHY
        assert "database unreachable" in db.health.reason

        await pg_admin(f'CREATE DATABASE "{database}"')  # reachable again
        await wait_health(server.address, PROJECT_SERVICE, "SERVING")
        assert await health.check("readiness") == "SERVING"


async def test_calls_are_unavailable_while_the_database_is_gone(database: str) -> None:
    async with (
        server_on(database) as server,
        ProjectsClient(server.address, attempts=1, deadline=5) as projects,
    ):
        created = await projects.create_project(new_project(), project_id="gone")  # not cached

        await pg_admin(f'DROP DATABASE "{database}" WITH (FORCE)')
        await wait_health(server.address, PROJECT_SERVICE, "NOT_SERVING")
        calls: dict[str, Callable[[], Awaitable[object]]] = {
            "get": lambda: projects.get_project(created.name),
            "list": lambda: projects.list_projects(),
            "update": lambda: projects.update_project(
                described(created.name, "x"), update_mask=["description"]
            ),
            "create": lambda: projects.create_project(new_project()),
        }
        outcomes: dict[str, str] = {}
        for label, call in calls.items():
            try:
                await call()
            except DomainError as exc:
                outcomes[label] = type(exc).__name__
            else:
                outcomes[label] = "OK"

    assert outcomes == dict.fromkeys(calls, UnavailableError.__name__)


# -- the cache must not trust what it may have missed ----------------------------------------


async def test_a_server_does_not_serve_its_cached_copy_while_redis_is_down(
    database: str, namespace: str, tmp_path: Path
) -> None:
    """While Redis is down B cannot hear A's invalidations, so B's local copy is suspect."""
    async with (
        private_redis(tmp_path) as redis,
        two_servers(database, redis.url, namespace) as (on_a, on_b),
    ):
        created = await on_a.create_project(new_project(), project_id="outage-stale")
        name = created.name
        assert (await on_b.get_project(name)).etag == created.etag  # B caches revision 1

        await redis.kill()
        await wait_component(on_b.address, "cache", DEGRADED)  # B knows Redis is gone
        updated = await on_a.update_project(
            described(name, "written while redis is down"), update_mask=["description"]
        )
        seen = await on_b.get_project(name)

    revision = Revisions(name)
    assert revision(seen.etag) == revision(updated.etag), "B served its pre-outage copy"


async def redis_answers_again(projects: ProjectsClient, peek: Redis, namespace: str) -> None:
    """Waits until the server's cache uses Redis again: it fills a fresh negative entry."""
    async with asyncio.timeout(10):
        for i in itertools.count(1):
            absent = f"projects/absent-{i}"
            with pytest.raises(NotFoundError):
                await projects.get_project(absent)
            if await peek.exists(f"{namespace}:cache:0.0:{absent}"):
                return
            await asyncio.sleep(0.05)


async def test_an_invalidation_missed_while_redis_hung_is_not_read_back(
    tmp_path: Path, namespace: str
) -> None:
    """Redis hangs (SIGSTOP) and comes back with its data: a pending invalidation must win.

    The health check also flushes pending invalidations; it is set far apart here so that
    only the read path decides. With the default 5 s interval the window is shorter but the
    same, and a stale value read in it then stays in the process's local tier for its TTL.
    """
    async with private_redis(tmp_path / "redis") as redis:
        env = mesh_env(
            MESH_DATA_DIR=str(tmp_path / "data"),
            MESH_REDIS_URL=redis.url,
            MESH_CACHE_NAMESPACE=namespace,
            MESH_HEALTH_INTERVAL_SECONDS="30",
        )
        async with (
            serving("projects", env=env) as server,
            ProjectsClient(server.address, attempts=1) as projects,
            redis_client(redis.url) as peek,
        ):
            created = await projects.create_project(new_project(), project_id="hung-redis")
            name = created.name
            key = f"{namespace}:cache:0.0:{name}"
            # The create left a tombstone that refuses fills for 10 s; it expires (deleted
            # here rather than waited out) and a read fills Redis with revision 1.
            await peek.delete(key)
            await projects.get_project(name)
            assert (await peek.get(key) or b"")[:1] == b"v"

            redis.pause()
            try:
                # A read of another key times out: the cache backs off from Redis, so the
                # update's invalidation is not sent but kept as pending.
                with pytest.raises(NotFoundError):
                    await projects.get_project("projects/absent-0")
                updated = await projects.update_project(
                    described(name, "written while redis hung"), update_mask=["description"]
                )
            finally:
                redis.resume()

            await redis_answers_again(projects, peek, namespace)
            seen = await projects.get_project(name)

    revision = Revisions(name)
    assert revision(seen.etag) == revision(updated.etag), "read the invalidated copy from Redis"
