"""Fixtures of the projects integration tests: a client of a fresh server, a first project."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from clients.projects import Project, ProjectsClient
from tests.conftest import Running
from tests.integration._projects import a_project, client_of


@pytest.fixture
async def projects(projects_server: Running) -> AsyncIterator[ProjectsClient]:
    async with client_of(projects_server) as client:
        yield client


@pytest.fixture
async def demo(projects: ProjectsClient) -> Project:
    """projects/demo, created with the defaults of `a_project`."""
    return await projects.create_project(a_project(), project_id="demo")
