"""Concurrent writers and restarts: request ids, etags and ids hold under races, both databases."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter

import pytest
from structlog.testing import capture_logs

from clients.projects import ProjectsClient
from core.errors import (
    AbortedError,
    AlreadyExistsError,
    DomainError,
    FailedPreconditionError,
    InvalidArgumentError,
)
from mesh.projects.v1 import projects_pb2 as pb
from mesh.projects.v1.projects_pb2 import Project
from tests.conftest import Running, projects_container, running, settings_for
from tests.integration._projects import (
    a_project,
    attempt,
    create_request,
    event_types,
    outcome,
    project_rows,
    raw_stub,
)

NAME = "projects/demo"
RACERS = 10


def kinds(results: list[object]) -> Counter[str]:
    return Counter(type(r).__name__ for r in results)


async def test_one_request_id_sent_concurrently_creates_once(projects_server: Running) -> None:
    request = create_request(project_id="demo", request_id=str(uuid.uuid4()))
    async with raw_stub(projects_server) as stub:
        responses = await asyncio.gather(
            *(outcome(stub.CreateProject(request, timeout=10)) for _ in range(RACERS))
        )

    assert kinds(responses) == {"CreateProjectResponse": RACERS}
    assert all(r == responses[0] for r in responses)
    assert await project_rows(projects_server) == 1
    assert await event_types(projects_server) == ["created"]


async def test_one_request_id_sent_concurrently_without_a_project_id_creates_once(
    projects_server: Running,
) -> None:
    request = create_request(request_id=str(uuid.uuid4()))
    async with raw_stub(projects_server) as stub:
        responses = await asyncio.gather(
            *(outcome(stub.CreateProject(request, timeout=10)) for _ in range(RACERS))
        )

    assert kinds(responses) == {"CreateProjectResponse": RACERS}
    assert len({r.project.name for r in responses}) == 1
    assert await project_rows(projects_server) == 1


async def test_one_request_id_with_different_bodies_at_once_applies_one(
    projects_server: Running,
) -> None:
    request_id = str(uuid.uuid4())
    requests = [
        create_request(project_id=f"racer-{i}", request_id=request_id) for i in range(RACERS)
    ]
    async with raw_stub(projects_server) as stub:
        responses = await asyncio.gather(
            *(outcome(stub.CreateProject(r, timeout=10)) for r in requests)
        )

    assert kinds(responses) == {"CreateProjectResponse": 1, "InvalidArgumentError": RACERS - 1}
    assert {r.reason for r in responses if isinstance(r, DomainError)} == {"REQUEST_ID_REUSED"}
    assert await project_rows(projects_server) == 1


async def test_one_update_request_id_sent_concurrently_applies_once(
    projects_server: Running, projects: ProjectsClient
) -> None:
    demo = await projects.create_project(a_project(), project_id="demo")
    request = pb.UpdateProjectRequest(
        project=Project(name=NAME, display_name="Once"),
        etag=demo.etag,
        request_id=str(uuid.uuid4()),
    )
    async with raw_stub(projects_server) as stub:
        responses = await asyncio.gather(
            *(outcome(stub.UpdateProject(request, timeout=10)) for _ in range(RACERS))
        )

    assert kinds(responses) == {"UpdateProjectResponse": RACERS}
    assert all(r == responses[0] for r in responses)
    assert await event_types(projects_server) == ["created", "updated"]


async def test_a_request_id_is_remembered_across_a_restart(database_url: str) -> None:
    request = create_request(project_id="demo", request_id=str(uuid.uuid4()))
    changed = create_request(
        project_id="demo", request_id=request.request_id, project=a_project(owner="users/bob")
    )
    container, server = projects_container(settings_for(database_url))
    async with running(container, server) as first, raw_stub(first) as stub:
        before = await stub.CreateProject(request, timeout=10)
        await stub.CreateProject(create_request(project_id="later"), timeout=10)
        token = (await stub.ListProjects(pb.ListProjectsRequest(page_size=1))).next_page_token

    container, server = projects_container(settings_for(database_url))
    async with running(container, server) as second, raw_stub(second) as stub:
        after = await stub.CreateProject(request, timeout=10)
        reused = await outcome(stub.CreateProject(changed, timeout=10))
        next_page = await stub.ListProjects(pb.ListProjectsRequest(page_size=1, page_token=token))

        assert after == before
        assert isinstance(reused, InvalidArgumentError)
        assert reused.reason == "REQUEST_ID_REUSED"
        assert [p.name for p in next_page.projects] == ["projects/later"]  # token still valid
        assert await project_rows(second) == 2
        assert await event_types(second) == ["created", "created"]


async def test_concurrent_updates_with_one_etag_let_exactly_one_win(
    projects_server: Running, projects: ProjectsClient
) -> None:
    demo = await projects.create_project(a_project(), project_id="demo")

    results = await asyncio.gather(
        *(
            attempt(
                projects.update_project(Project(name=NAME, display_name=f"v{i}"), etag=demo.etag)
            )
            for i in range(RACERS)
        )
    )

    assert kinds(results) == {"Project": 1, "AbortedError": RACERS - 1}
    winner = next(r for r in results if isinstance(r, Project))
    assert await projects.get_project(NAME) == winner
    assert {r.reason for r in results if isinstance(r, AbortedError)} <= {
        "ETAG_MISMATCH",
        "CONCURRENT_MODIFICATION",
    }
    assert await event_types(projects_server) == ["created", "updated"]


@pytest.mark.parametrize("writers", [2, RACERS])
async def test_writers_sending_back_the_etag_they_read_inside_the_project_let_one_win(
    projects_server: Running, projects: ProjectsClient, writers: int
) -> None:
    await projects.create_project(a_project(), project_id="demo")
    reads = [await projects.get_project(NAME) for _ in range(writers)]
    for i, read in enumerate(reads):
        read.display_name = f"writer {i}"

    results = await asyncio.gather(*(attempt(projects.update_project(r)) for r in reads))

    assert len({r.etag for r in reads}) == 1
    assert kinds(results) == {"Project": 1, "AbortedError": writers - 1}
    winner = next(r for r in results if isinstance(r, Project))
    assert await projects.get_project(NAME) == winner
    assert {r.reason for r in results if isinstance(r, AbortedError)} <= {
        "ETAG_MISMATCH",
        "CONCURRENT_MODIFICATION",
    }
    assert await event_types(projects_server) == ["created", "updated"]


async def test_concurrent_updates_without_an_etag_all_apply_in_turn(
    projects_server: Running, projects: ProjectsClient
) -> None:
    await projects.create_project(a_project(labels={}), project_id="demo")

    results = await asyncio.gather(
        *(
            attempt(projects.update_project(Project(name=NAME, description=f"v{i}")))
            for i in range(RACERS)
        )
    )

    assert kinds(results) == {"Project": RACERS}
    assert len({r.etag for r in results if isinstance(r, Project)}) == RACERS
    assert await event_types(projects_server) == ["created"] + ["updated"] * RACERS


async def test_concurrent_creates_of_one_id_let_exactly_one_win(
    projects_server: Running, projects: ProjectsClient
) -> None:
    results = await asyncio.gather(
        *(
            attempt(projects.create_project(a_project(owner=f"users/u{i}"), project_id="demo"))
            for i in range(RACERS)
        )
    )

    assert kinds(results) == {"Project": 1, "AlreadyExistsError": RACERS - 1}
    assert {r.reason for r in results if isinstance(r, AlreadyExistsError)} == {
        "PROJECT_ALREADY_EXISTS"
    }
    assert await event_types(projects_server) == ["created"]


async def test_concurrent_upserts_of_one_missing_project_create_it_once(
    projects_server: Running, projects: ProjectsClient
) -> None:
    with capture_logs() as logs:
        results = await asyncio.gather(
            *(
                attempt(
                    projects.update_project(
                        a_project(name=NAME, description=f"v{i}"), allow_missing=True
                    )
                )
                for i in range(RACERS)
            )
        )

    unexpected = [r for r in results if not isinstance(r, Project | AbortedError)]
    assert unexpected == []
    assert [e for e in logs if e["event"] == "rpc.unexpected_error"] == []
    assert await project_rows(projects_server) == 1
    assert (await event_types(projects_server)).count("created") == 1


async def test_concurrent_deletes_with_one_etag_let_exactly_one_win(
    projects_server: Running, projects: ProjectsClient
) -> None:
    demo = await projects.create_project(a_project(), project_id="demo")

    results = await asyncio.gather(
        *(attempt(projects.delete_project(NAME, etag=demo.etag)) for _ in range(RACERS))
    )

    assert kinds(results)["Project"] == 1
    assert all(isinstance(r, Project | AbortedError | FailedPreconditionError) for r in results)
    assert await event_types(projects_server) == ["created", "deleted"]
