"""core.faults' hook points in a real server: a handler aborted before its commit leaves
nothing behind, and a delayed database is slow but correct."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from clients.projects import ProjectsClient
from core import faults
from core.data.database import Database
from core.errors import InternalError, NotFoundError
from core.events.outbox import outbox
from core.testing.services import Running
from tests.integration._projects import a_project


@pytest.fixture(autouse=True)
def disarmed() -> Iterator[None]:
    yield
    faults.clear()


async def unsent_events(server: Running) -> int:
    async with server.container.get(Database).connect(autocommit=True) as conn:
        return int(await conn.scalar(sa.select(sa.func.count()).select_from(outbox)) or 0)


async def test_a_create_aborted_before_its_commit_leaves_no_project_and_no_event(
    projects_server: Running, projects: ProjectsClient
) -> None:
    before = await unsent_events(projects_server)
    faults.install(faults.parse("database.commit=raise"))
    with pytest.raises(InternalError):
        await projects.create_project(a_project(), project_id="aborted")
    faults.clear()

    with pytest.raises(NotFoundError):
        await projects.get_project("projects/aborted")
    assert await unsent_events(projects_server) == before
    created = await projects.create_project(a_project(), project_id="aborted")
    assert created.name == "projects/aborted"


async def test_a_delayed_database_answers_late_but_right(projects: ProjectsClient) -> None:
    created = await projects.create_project(a_project(), project_id="slow")
    faults.install(faults.parse("database.statement=delay:300"))
    started = time.perf_counter()
    assert (await projects.get_project(created.name)).name == created.name
    assert time.perf_counter() - started >= 0.3
