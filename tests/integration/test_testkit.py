"""The test kit (core.testing): declared services started with their real components, their
typed clients, test doubles in place of components, and bounded waits for events."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest
import redis.asyncio as redis

from clients.projects import ProjectsClient
from core.data.database import Database
from core.events.bus import EventBus
from core.events.model import Appended, Event
from core.runtime.container import RegistrationError
from core.runtime.lifecycle import Component
from core.testing.databases import forget_namespace
from core.testing.services import StartService
from tests._services import ADMIN, PROJECTS
from tests.conftest import PG_ADMIN_DSN
from tests.integration._events import REDIS_URL
from tests.integration._projects import a_project

CREATED = "mesh.projects.v1.project.created"


@pytest.fixture(scope="session")
def mesh_postgres_url() -> str:
    """The kit's PostgreSQL server is the one meshkit's own tests use."""
    return PG_ADMIN_DSN


# -- a service's test in a dozen lines ---------------------------------------------------------


@pytest.fixture
async def projects(start_service: StartService) -> ProjectsClient:
    service = await start_service(PROJECTS)
    client: ProjectsClient = await service.client()
    return client


async def test_a_created_project_can_be_read_back(projects: ProjectsClient) -> None:
    project = await projects.create_project(a_project(), project_id="demo")
    assert await projects.get_project("projects/demo") == project


# -- what the kit does -------------------------------------------------------------------------


@pytest.mark.parametrize("mesh_database_url", ["sqlite", "postgresql"], indirect=True)
async def test_a_service_starts_migrated_on_a_fresh_database_of_either_kind(
    start_service: StartService, mesh_database_url: str
) -> None:
    service = await start_service(PROJECTS)
    assert service.container.get(Database).url == mesh_database_url
    client: ProjectsClient = await service.client()
    await client.create_project(a_project(), project_id="demo")
    assert await client.count_projects() == 1


async def test_each_event_is_awaited_once_the_earliest_first(start_service: StartService) -> None:
    service = await start_service(PROJECTS)
    client: ProjectsClient = await service.client()
    for name in ("first", "second"):
        await client.create_project(a_project(), project_id=name)
    second = await service.wait_for_event(CREATED, subject="projects/second")
    first = await service.wait_for_event("mesh.projects.v1.*")
    assert [first.subject, second.subject] == ["projects/first", "projects/second"]
    with pytest.raises(TimeoutError):
        await service.wait_for_event(CREATED, timeout=0.1)


async def test_waiting_for_an_event_that_never_comes_ends_in_a_timeout(
    start_service: StartService,
) -> None:
    service = await start_service(PROJECTS)
    with pytest.raises(TimeoutError, match=r"mesh\.projects\.v1\.project\.deleted"):
        await service.wait_for_event("mesh.projects.v1.project.deleted", timeout=0.1)


async def test_a_process_without_an_event_bus_has_no_events_to_wait_for(
    start_service: StartService,
) -> None:
    service = await start_service(ADMIN)
    with pytest.raises(LookupError, match="no event bus"):
        await service.wait_for_event(CREATED)


async def test_a_client_is_chosen_by_service_name_when_several_are_hosted(
    start_service: StartService,
) -> None:
    service = await start_service(ADMIN, PROJECTS)
    assert isinstance(await service.client("projects"), ProjectsClient)
    with pytest.raises(LookupError, match="admin, projects"):
        await service.client()


@pytest.mark.parametrize("mesh_redis_url", [REDIS_URL], indirect=True)
async def test_with_redis_configured_events_go_through_redis_streams(
    start_service: StartService,
) -> None:
    service = await start_service(PROJECTS)
    assert service.container.get(EventBus).store.name == "redis"
    client: ProjectsClient = await service.client()
    await client.create_project(a_project(), project_id="demo")
    assert (await service.wait_for_event(CREATED)).subject == "projects/demo"


async def test_a_test_namespace_is_forgotten_in_redis() -> None:
    client = redis.Redis.from_url(REDIS_URL)
    try:
        await client.set("test-kit-forget:key", "1")
        await forget_namespace(REDIS_URL, "test-kit-forget")
        assert await client.exists("test-kit-forget:key") == 0
    finally:
        await client.aclose()


class RecordingBus(Component):
    """Stands in for the event bus: keeps what the outbox relay publishes."""

    max_batch = 500
    serving = False

    def __init__(self) -> None:
        self.published: list[Event] = []
        self.arrived = asyncio.Event()

    async def publish(self, batch: Sequence[Event], names: Sequence[str] = ()) -> list[Appended]:
        self.published += batch
        self.arrived.set()
        return []


async def test_a_double_takes_the_place_of_the_component_with_its_name(
    start_service: StartService,
) -> None:
    bus = RecordingBus()
    service = await start_service(PROJECTS, replace={"event-bus": bus})
    assert service.container.get("event-bus") is bus
    client: ProjectsClient = await service.client()
    await client.create_project(a_project(), project_id="demo")
    async with asyncio.timeout(5):
        await bus.arrived.wait()
    assert [(e.type, e.subject) for e in bus.published] == [(CREATED, "projects/demo")]


async def test_a_double_for_a_component_the_service_lacks_is_an_error(
    start_service: StartService,
) -> None:
    with pytest.raises(RegistrationError, match="'search-index'"):
        await start_service(PROJECTS, replace={"search-index": RecordingBus()})
