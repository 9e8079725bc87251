"""DeleteProject, UndeleteProject and purging through the typed client, on both databases."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from clients.projects import ProjectsClient
from core.errors import AbortedError, FailedPreconditionError, InvalidArgumentError, NotFoundError
from mesh.projects.v1.projects_pb2 import Project
from tests.conftest import Running, projects_container, running, settings_for
from tests.integration._projects import (
    EVENT,
    a_project,
    client_of,
    crud_of,
    events,
    project_rows,
    set_purge_time,
    until,
)

NAME = "projects/demo"


async def test_delete_is_soft_setting_delete_and_purge_times(
    projects: ProjectsClient, demo: Project
) -> None:
    deleted = await projects.delete_project(NAME)

    assert deleted.state == Project.STATE_DELETED
    assert deleted.HasField("delete_time")
    assert deleted.HasField("purge_time")
    delete_time = deleted.delete_time.ToDatetime()
    assert deleted.purge_time.ToDatetime() > delete_time
    assert delete_time >= demo.create_time.ToDatetime()
    assert deleted.etag != demo.etag
    assert (deleted.display_name, deleted.owner) == (demo.display_name, demo.owner)
    assert await projects.get_project(NAME) == deleted


async def test_a_delete_with_a_stale_etag_is_aborted_and_with_the_current_one_deletes(
    projects: ProjectsClient, demo: Project
) -> None:
    await projects.update_project(Project(name=NAME, display_name="Changed"))

    with pytest.raises(AbortedError) as caught:
        await projects.delete_project(NAME, etag=demo.etag)

    assert caught.value.reason == "ETAG_MISMATCH"
    current = await projects.get_project(NAME)
    assert current.state == Project.STATE_ACTIVE
    deleted = await projects.delete_project(NAME, etag=current.etag)
    assert deleted.state == Project.STATE_DELETED


async def test_deleting_twice_fails_its_precondition(
    projects: ProjectsClient, demo: Project
) -> None:
    deleted = await projects.delete_project(NAME)

    with pytest.raises(FailedPreconditionError) as caught:
        await projects.delete_project(NAME)

    assert caught.value.reason == "PROJECT_ALREADY_DELETED"
    assert await projects.get_project(NAME) == deleted


async def test_delete_and_undelete_of_missing_or_malformed_names_fail(
    projects: ProjectsClient,
) -> None:
    for rpc in (projects.delete_project, projects.undelete_project):
        with pytest.raises(NotFoundError) as missing:
            await rpc("projects/missing")
        assert missing.value.reason == "PROJECT_NOT_FOUND"
        assert missing.value.metadata == {"resource": "projects/missing"}
        with pytest.raises(InvalidArgumentError) as malformed:
            await rpc("projects/X")
        assert malformed.value.reason == "INVALID_NAME"


async def test_undelete_restores_and_clears_the_times(
    projects: ProjectsClient, demo: Project
) -> None:
    deleted = await projects.delete_project(NAME)

    restored = await projects.undelete_project(NAME, etag=deleted.etag)

    assert restored.state == Project.STATE_ACTIVE
    assert not restored.HasField("delete_time")
    assert not restored.HasField("purge_time")
    assert restored.etag not in (demo.etag, deleted.etag)
    assert await projects.get_project(NAME) == restored
    listed = await projects.list_projects()
    assert [p.name for p in listed.projects] == [NAME]
    updated = await projects.update_project(Project(name=NAME, display_name="Back"))
    assert updated.display_name == "Back"


async def test_undelete_of_an_active_project_fails_its_precondition(
    projects: ProjectsClient, demo: Project
) -> None:
    with pytest.raises(FailedPreconditionError) as caught:
        await projects.undelete_project(NAME)

    assert caught.value.reason == "PROJECT_NOT_DELETED"


async def test_an_undelete_with_a_stale_etag_is_aborted(
    projects: ProjectsClient, demo: Project
) -> None:
    await projects.delete_project(NAME)

    with pytest.raises(AbortedError) as caught:
        await projects.undelete_project(NAME, etag=demo.etag)

    assert caught.value.reason == "ETAG_MISMATCH"
    assert (await projects.get_project(NAME)).state == Project.STATE_DELETED


# -- purge ------------------------------------------------------------------------------------


async def test_purge_removes_only_projects_past_their_purge_time(
    projects_server: Running, projects: ProjectsClient
) -> None:
    for project_id in ("expired", "waiting", "active"):
        await projects.create_project(a_project(), project_id=project_id)
    await projects.delete_project("projects/expired")
    waiting = await projects.delete_project("projects/waiting")
    await projects.get_project("projects/expired")  # cached before the purge
    await set_purge_time(projects_server, "projects/expired", datetime.now(UTC) - timedelta(1))

    purged = await crud_of(projects_server).purge_expired()

    assert purged == 1
    with pytest.raises(NotFoundError):
        await projects.get_project("projects/expired")
    with pytest.raises(NotFoundError):
        await projects.undelete_project("projects/expired")
    assert await projects.get_project("projects/waiting") == waiting
    assert await projects.count_projects(show_deleted=True) == 2
    assert await crud_of(projects_server).purge_expired() == 0
    purge_events = await events(projects_server, subject="projects/expired")
    assert [e.type for e in purge_events][-1] == f"{EVENT}.purged"
    assert purge_events[-1].project.name == "projects/expired"


async def test_a_purge_backlog_is_worked_off_in_batches(
    projects_server: Running, projects: ProjectsClient
) -> None:
    names = [f"projects/old-{i}" for i in range(5)]
    for name in names:
        await projects.create_project(a_project(), project_id=name.split("/")[1])
        await projects.delete_project(name)
        await set_purge_time(projects_server, name, datetime.now(UTC) - timedelta(1))

    assert await crud_of(projects_server).purge_expired(batch=2) == 5
    assert await projects.count_projects(show_deleted=True) == 0
    purged = [e for e in await events(projects_server) if e.type == f"{EVENT}.purged"]
    assert sorted(e.subject for e in purged) == names


async def test_the_background_purger_purges_expired_projects(database_url: str) -> None:
    container, server = projects_container(settings_for(database_url, purge_interval=0.05))
    async with running(container, server) as server_running, client_of(server_running) as projects:
        await projects.create_project(a_project(), project_id="expired")
        await projects.delete_project("projects/expired")
        await projects.get_project("projects/expired")  # cached before the purge
        past = datetime.now(UTC) - timedelta(seconds=1)
        await set_purge_time(server_running, "projects/expired", past)

        async def purged() -> bool:
            return await project_rows(server_running) == 0

        await until(purged)
        with pytest.raises(NotFoundError):
            await projects.get_project("projects/expired")
        types = [e.type for e in await events(server_running)]
        assert types == [f"{EVENT}.created", f"{EVENT}.deleted", f"{EVENT}.purged"]
        with pytest.raises(NotFoundError):  # the id may not come back as a ghost
            await projects.undelete_project("projects/expired")
        created = await projects.create_project(a_project(), project_id="expired")
        assert created.state == Project.STATE_ACTIVE
