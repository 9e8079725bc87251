"""The outbox: one event per committed change, none for a rolled-back one, on both databases."""

from __future__ import annotations

import pytest

from clients.projects import ProjectsClient
from core.data.database import Database
from core.data.transaction import Transaction
from core.errors import AbortedError, AlreadyExistsError, InvalidArgumentError, NotFoundError
from core.events.outbox import emit
from mesh.projects.v1.projects_pb2 import Project
from servers.projects.resource import projects as projects_table
from tests.conftest import Running
from tests.integration._projects import (
    EVENT,
    SOURCE,
    a_project,
    event_types,
    events,
    project_rows,
)

NAME = "projects/demo"


class BoomError(Exception):
    pass


async def test_each_committed_change_writes_one_event_with_the_new_project(
    projects_server: Running, projects: ProjectsClient
) -> None:
    created = await projects.create_project(a_project(), project_id="demo")
    updated = await projects.update_project(Project(name=NAME, display_name="Renamed"))
    deleted = await projects.delete_project(NAME)
    restored = await projects.undelete_project(NAME)

    found = await events(projects_server)

    assert [e.type for e in found] == [
        f"{EVENT}.created",
        f"{EVENT}.updated",
        f"{EVENT}.deleted",
        f"{EVENT}.undeleted",
    ]
    assert [e.project for e in found] == [created, updated, deleted, restored]
    assert [e.project.etag for e in found] == [
        p.etag for p in (created, updated, deleted, restored)
    ]
    assert {e.subject for e in found} == {NAME}
    assert {e.source for e in found} == {SOURCE}


async def test_an_upsert_writes_a_created_event(
    projects_server: Running, projects: ProjectsClient
) -> None:
    created = await projects.update_project(a_project(name=NAME), allow_missing=True)

    found = await events(projects_server)

    assert [(e.type, e.project) for e in found] == [(f"{EVENT}.created", created)]


async def test_reads_and_validate_only_write_no_events(
    projects_server: Running, projects: ProjectsClient
) -> None:
    await projects.create_project(a_project(), project_id="demo")
    await projects.create_project(a_project(), project_id="dry-run", validate_only=True)
    await projects.get_project(NAME)
    await projects.batch_get_projects([NAME])
    await projects.list_projects()
    await projects.count_projects()

    assert await event_types(projects_server) == ["created"]


async def test_failed_writes_leave_no_event(
    projects_server: Running, projects: ProjectsClient
) -> None:
    demo = await projects.create_project(a_project(), project_id="demo")
    await projects.update_project(Project(name=NAME, display_name="Changed"))

    with pytest.raises(AlreadyExistsError):
        await projects.create_project(a_project(), project_id="demo")
    with pytest.raises(InvalidArgumentError):
        await projects.create_project(a_project(display_name=""), project_id="other")
    with pytest.raises(AbortedError):
        await projects.update_project(Project(name=NAME, display_name="x"), etag=demo.etag)
    with pytest.raises(InvalidArgumentError):
        await projects.update_project(Project(name=NAME, display_name=""), update_mask=["*"])
    with pytest.raises(NotFoundError):
        await projects.update_project(Project(name="projects/nope", display_name="x"))
    with pytest.raises(AbortedError):
        await projects.delete_project(NAME, etag=demo.etag)

    assert await event_types(projects_server) == ["created", "updated"]
    assert await project_rows(projects_server) == 1


async def test_a_transaction_that_raises_after_emitting_leaves_no_event(
    projects_server: Running,
) -> None:
    database = projects_server.container.get(Database)

    async def emit_then_fail() -> None:
        async with database.transaction() as tx:
            await emit(tx, type=f"{EVENT}.created", source=SOURCE, subject=NAME, data=Project())
            raise BoomError

    with pytest.raises(BoomError):
        await emit_then_fail()

    assert await events(projects_server) == []


async def test_a_unit_of_work_that_raises_after_writing_leaves_nothing(
    projects_server: Running,
) -> None:
    database = projects_server.container.get(Database)
    hooks: list[str] = []

    async def work(tx: Transaction) -> None:
        await tx.conn.execute(projects_table.delete())
        await emit(tx, type=f"{EVENT}.deleted", source=SOURCE, subject=NAME, data=Project())
        tx.after_commit(lambda: hooks.append("ran"))
        raise BoomError

    with pytest.raises(BoomError):
        await database.run(work)

    assert await events(projects_server) == []
    assert hooks == []
    async with database.transaction() as tx:  # the same, committed, keeps its event
        await emit(tx, type=f"{EVENT}.created", source=SOURCE, subject=NAME, data=Project())
    assert await event_types(projects_server) == ["created"]
