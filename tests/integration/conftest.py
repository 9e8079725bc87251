"""Fixtures of the projects integration tests: a client of a fresh server, a first project."""

from __future__ import annotations

import pytest

from clients.projects import Project, ProjectsClient
from tests.conftest import Running
from tests.integration._projects import a_project


@pytest.fixture
async def projects(projects_server: Running) -> ProjectsClient:
    """The projects service's typed client, closed before its server stops."""
    client: ProjectsClient = await projects_server.client("projects")
    return client


@pytest.fixture
async def demo(projects: ProjectsClient) -> Project:
    """projects/demo, created with the defaults of `a_project`."""
    return await projects.create_project(a_project(), project_id="demo")
