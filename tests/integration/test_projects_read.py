"""GetProject and BatchGetProjects through the typed client, on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest

from clients.projects import ProjectsClient
from core.errors import InvalidArgumentError, NotFoundError
from mesh.projects.v1.projects_pb2 import Project
from tests.integration._projects import a_project, violated_fields

MALFORMED_NAMES = [
    "",
    "demo",
    "projects/",
    "projects/ab",
    "projects/Demo",
    "projects/demo/extra",
    "project/demo",
    "projects/demo-",
    "/projects/demo",
    "projects/demo'; DROP TABLE projects; --",
]


async def test_a_missing_project_is_not_found_naming_it(projects: ProjectsClient) -> None:
    with pytest.raises(NotFoundError) as caught:
        await projects.get_project("projects/missing")

    assert caught.value.reason == "PROJECT_NOT_FOUND"
    assert caught.value.domain == "meshkit"
    assert caught.value.metadata == {"resource": "projects/missing"}
    assert "projects/missing" in caught.value.message


async def test_a_malformed_name_is_invalid(projects: ProjectsClient) -> None:
    for name in MALFORMED_NAMES:
        with pytest.raises(InvalidArgumentError) as caught:
            await projects.get_project(name)
        assert caught.value.reason == "INVALID_NAME", name
        assert violated_fields(caught.value) == ["name"]


async def test_get_returns_a_soft_deleted_project_as_deleted(projects: ProjectsClient) -> None:
    await projects.create_project(a_project(), project_id="gone")
    deleted = await projects.delete_project("projects/gone")

    fetched = await projects.get_project("projects/gone")

    assert fetched == deleted
    assert fetched.state == Project.STATE_DELETED
    assert fetched.HasField("delete_time")


async def test_get_after_an_update_never_serves_the_old_version(projects: ProjectsClient) -> None:
    created = await projects.create_project(a_project(), project_id="fresh")
    assert await projects.get_project(created.name) == created  # now cached

    updated = await projects.update_project(Project(name=created.name, display_name="New"))

    assert await projects.get_project(created.name) == updated


async def test_batch_get_returns_projects_in_the_order_asked(projects: ProjectsClient) -> None:
    for project_id in ("alpha", "bravo", "charlie"):
        await projects.create_project(a_project(display_name=project_id), project_id=project_id)

    found = await projects.batch_get_projects(
        ["projects/charlie", "projects/alpha", "projects/bravo", "projects/alpha"]
    )

    assert [p.name for p in found] == [
        "projects/charlie",
        "projects/alpha",
        "projects/bravo",
        "projects/alpha",
    ]
    assert found[1] == await projects.get_project("projects/alpha")
    assert await projects.batch_get_projects([]) == []


async def test_batch_get_is_all_or_nothing_naming_the_first_missing(
    projects: ProjectsClient,
) -> None:
    await projects.create_project(a_project(), project_id="alpha")

    with pytest.raises(NotFoundError) as caught:
        await projects.batch_get_projects(["projects/alpha", "projects/nope", "projects/nada"])

    assert caught.value.reason == "PROJECT_NOT_FOUND"
    assert caught.value.metadata == {"resource": "projects/nope"}


async def test_batch_get_includes_soft_deleted_projects(projects: ProjectsClient) -> None:
    await projects.create_project(a_project(), project_id="alive")
    await projects.create_project(a_project(), project_id="gone")
    await projects.delete_project("projects/gone")

    found = await projects.batch_get_projects(["projects/gone", "projects/alive"])

    assert [p.state for p in found] == [Project.STATE_DELETED, Project.STATE_ACTIVE]


async def test_batch_get_of_a_malformed_name_is_invalid_naming_its_index(
    projects: ProjectsClient,
) -> None:
    await projects.create_project(a_project(), project_id="alpha")

    with pytest.raises(InvalidArgumentError) as caught:
        await projects.batch_get_projects(["projects/alpha", "projects/Bad"])

    assert violated_fields(caught.value) == ["names[1]"]


async def test_batch_get_takes_at_most_1000_names(projects: ProjectsClient) -> None:
    await projects.create_project(a_project(), project_id="p0999")

    found = await projects.batch_get_projects(["projects/p0999"] * 1000)
    with pytest.raises(InvalidArgumentError) as caught:
        await projects.batch_get_projects(["projects/p0999"] * 1001)

    assert len(found) == 1000
    assert violated_fields(caught.value) == ["names"]
