"""How the cache served each read (the `mesh-cache` trailer, the client's `Trailers`, the
`mesh.cache.lookups` counter) and AdminService.ClearCache, on two projects servers that
share one PostgreSQL database and one Redis, in this process."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack
from pathlib import Path

import grpc
import pytest
import sqlalchemy as sa
from redis.asyncio import Redis

from clients.admin import AdminClient
from clients.projects import Project, ProjectsClient, Trailers
from core.config import TelemetrySettings
from core.errors import FailedPreconditionError, InvalidArgumentError, NotFoundError
from core.resources.cache import Cache
from core.telemetry import Telemetry, configure_telemetry
from core.testing.databases import forget_namespace, fresh_database
from mesh.projects.v1 import projects_pb2, projects_pb2_grpc
from tests._services import ADMIN, PROJECTS
from tests.conftest import PG_ADMIN_DSN, Running, serving, settings_for
from tests.integration._projects import a_project, engine_of

REDIS = "redis://127.0.0.1:6379/0"
SERVICE = "mesh.projects.v1.ProjectService"


class Pair:
    """Servers A and B and their clients; `a` and `b` are the projects clients."""

    def __init__(
        self, servers: list[Running], clients: list[ProjectsClient], namespace: str
    ) -> None:
        self.servers = servers
        self.a, self.b = clients
        self.namespace = namespace

    async def forget_tombstone(self, name: str) -> None:
        """Deletes the tombstone a write left in Redis (it refuses fills for 10 s)."""
        client = Redis.from_url(REDIS)
        try:
            keys = [k async for k in client.scan_iter(match=f"{self.namespace}:cache:*:{name}")]
            if keys:
                await client.delete(*keys)
        finally:
            await client.aclose()

    async def change_behind_the_cache(self, name: str, description: str) -> None:
        """Writes the row as a migration or a hand-made fix would: no invalidation."""
        statement = sa.text(
            "update projects set description = :d, revision = revision + 1 where id = :id"
        )
        async with engine_of(self.servers[0]).begin() as conn:
            await conn.execute(statement, {"d": description, "id": name.split("/")[1]})


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[Pair]:
    namespace = f"test-{uuid.uuid4().hex[:12]}"
    async with AsyncExitStack() as stack:
        url = await stack.enter_async_context(
            fresh_database("postgresql", tmp_path, server=PG_ADMIN_DSN)
        )
        stack.push_async_callback(forget_namespace, REDIS, namespace)
        servers, clients = [], []
        for migrate in (True, False):  # A migrates, then B starts
            settings = settings_for(
                url, redis_url=REDIS, cache_namespace=namespace, migrate_on_start=migrate
            )
            running = serving(ADMIN, PROJECTS, settings=settings)
            servers.append(await stack.enter_async_context(running))
            client = ProjectsClient(servers[-1].address, attempts=1)
            clients.append(await stack.enter_async_context(client))
        yield Pair(servers, clients, namespace)


@pytest.fixture
def metrics() -> Iterator[Telemetry]:
    telemetry = configure_telemetry(TelemetrySettings(), service="test", version="0")
    yield telemetry
    telemetry.shutdown()


async def served(client: ProjectsClient, name: str) -> tuple[str, str]:
    """(description, how it was served) of one GetProject."""
    trailers = Trailers()
    project = await client.get_project(name, trailers=trailers)
    return project.description, trailers.cache


def cache_of(running: Running) -> Cache:
    return running.container.get(Cache)


# -- indicators ------------------------------------------------------------------------------


async def test_each_read_says_how_the_cache_served_it(pair: Pair) -> None:
    created = await pair.a.create_project(a_project(description="one"), project_id="seen")
    await pair.forget_tombstone(created.name)

    assert await served(pair.a, created.name) == ("one", "miss")
    assert await served(pair.a, created.name) == ("one", "local-hit")
    assert await served(pair.b, created.name) == ("one", "shared-hit")
    assert await served(pair.b, created.name) == ("one", "local-hit")

    trailers = Trailers()
    assert await pair.a.batch_get_projects([created.name], trailers=trailers) == [created]
    assert trailers.cache == "bypass"
    plain = await pair.a.get_project(created.name)  # existing callers: unchanged
    assert plain.description == "one"


async def test_a_cached_not_found_says_how_it_was_served(pair: Pair) -> None:
    outcomes = []
    for _ in range(2):
        trailers = Trailers()
        with pytest.raises(NotFoundError) as caught:
            await pair.a.get_project("projects/nobody", trailers=trailers)
        assert caught.value.reason == "PROJECT_NOT_FOUND"  # details still there
        outcomes.append(trailers.cache)

    assert outcomes == ["miss", "local-hit"]


async def test_calls_that_read_no_cache_say_nothing(pair: Pair) -> None:
    async with grpc.aio.insecure_channel(pair.servers[0].address) as channel:
        call = projects_pb2_grpc.ProjectServiceStub(channel).ListProjects(
            projects_pb2.ListProjectsRequest()
        )
        await call
        trailing = await call.trailing_metadata()

    assert "mesh-cache" not in dict(trailing or ())


async def test_lookups_are_counted_by_method_and_outcome(metrics: Telemetry, pair: Pair) -> None:
    created = await pair.a.create_project(a_project(), project_id="counted")
    await pair.forget_tombstone(created.name)
    before = lookups(metrics)
    for _ in range(3):
        await pair.a.get_project(created.name)
    await pair.b.get_project(created.name)
    await pair.a.batch_get_projects([created.name])

    after = lookups(metrics)
    added = {key: after[key] - before.get(key, 0) for key in after}
    assert {k: v for k, v in added.items() if v} == {
        ("GetProject", "miss"): 1,
        ("GetProject", "local-hit"): 2,
        ("GetProject", "shared-hit"): 1,
        ("BatchGetProjects", "bypass"): 1,
    }


def lookups(telemetry: Telemetry) -> dict[tuple[str, str], int]:
    data = telemetry.collect()
    assert data is not None
    return {
        (p.attributes["rpc.method"], p.attributes["mesh.cache.outcome"]): p.value
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
        if metric.name == "mesh.cache.lookups"
        for p in metric.data.data_points
        if p.attributes["rpc.service"] == SERVICE
    }


# -- ClearCache ------------------------------------------------------------------------------


async def test_clear_drops_both_local_tiers_and_redis(pair: Pair) -> None:
    created = await pair.a.create_project(a_project(description="old"), project_id="cleared")
    name = created.name
    for client in (pair.a, pair.b):  # both local tiers and Redis hold it
        await client.get_project(name)
    await pair.change_behind_the_cache(name, "new")
    assert await served(pair.a, name) == ("old", "local-hit")
    assert await served(pair.b, name) == ("old", "local-hit")

    async with AdminClient(pair.servers[0].address) as admin:
        cleared = await admin.clear_cache("projects")

    assert (cleared.notified_instances, cleared.confirmed_instances) == (2, 2)
    assert all(name not in cache_of(s) for s in pair.servers)  # B's too, before the answer
    assert await served(pair.b, name) == ("new", "miss")  # not in Redis either
    assert await served(pair.a, name) == ("new", "shared-hit")


async def test_clear_of_every_resource_drops_projects_too(pair: Pair) -> None:
    created = await pair.a.create_project(a_project(description="old"), project_id="all-of-it")
    await pair.b.get_project(created.name)
    await pair.change_behind_the_cache(created.name, "new")

    async with AdminClient(pair.servers[1].address) as admin:
        cleared = await admin.clear_cache()

    assert cleared.confirmed_instances == 2
    assert await served(pair.b, created.name) == ("new", "miss")


async def test_clear_of_an_unknown_resource_is_invalid(pair: Pair) -> None:
    async with AdminClient(pair.servers[0].address) as admin:
        with pytest.raises(InvalidArgumentError) as caught:
            await admin.clear_cache("widgets")

    assert caught.value.reason == "UNKNOWN_RESOURCE"
    assert [v.field for v in caught.value.violations] == ["resource"]
    assert "projects" in caught.value.message


async def test_no_read_is_stale_after_a_clear_under_concurrent_reads_and_writes(
    pair: Pair,
) -> None:
    read = await pair.a.create_project(a_project(description="v0"), project_id="read-hard")
    written = await pair.a.create_project(a_project(), project_id="written-hard")
    stop = asyncio.Event()

    async def reader(client: ProjectsClient) -> None:
        while not stop.is_set():
            await client.get_project(read.name)
            await asyncio.sleep(0)

    async def writer(client: ProjectsClient) -> None:
        i = 0
        while not stop.is_set():
            i += 1
            await client.update_project(
                Project(name=written.name, description=f"w{i}"), update_mask=["description"]
            )
            await client.get_project(written.name)

    stale: list[str] = []
    async with AdminClient(pair.servers[0].address) as admin, asyncio.TaskGroup() as tg:
        for client in (pair.a, pair.a, pair.b, pair.b):
            tg.create_task(reader(client))
        for client in (pair.a, pair.b):
            tg.create_task(writer(client))
        try:
            async with asyncio.timeout(60):
                for round in range(1, 11):
                    await pair.change_behind_the_cache(read.name, f"v{round}")
                    await admin.clear_cache("projects")
                    for client, label in ((pair.a, "A"), (pair.b, "B")):
                        for _ in range(3):  # while the readers keep filling the caches
                            seen, how = await served(client, read.name)
                            if seen != f"v{round}":
                                stale.append(f"round {round}: {label} read {seen} ({how})")
                            await asyncio.sleep(0.005)
        finally:
            stop.set()

    assert stale == []
    latest = await pair.a.get_project(written.name)  # the writes' own invalidations held
    assert latest == await pair.b.get_project(written.name)


async def test_clear_on_a_process_without_a_cache_fails_its_precondition(mesh: Running) -> None:
    async with AdminClient(mesh.address) as admin:
        with pytest.raises(FailedPreconditionError) as caught:
            await admin.clear_cache()

    assert caught.value.reason == "NO_CACHE"
