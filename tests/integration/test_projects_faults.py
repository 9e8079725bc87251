"""A database that cannot be reached is UNAVAILABLE, never INTERNAL, and the service recovers."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import pytest
from structlog.testing import capture_logs

from clients.projects import ProjectsClient
from core.errors import DomainError, UnavailableError
from tests.conftest import PG_ADMIN_DSN
from tests.integration._projects import a_project


@asynccontextmanager
async def refusing_connections(database_url: str) -> AsyncIterator[None]:
    """PostgreSQL drops every session of the database and refuses new ones, until the end."""
    name = database_url.rsplit("/", 1)[1]
    admin = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", name
        )
        yield
    finally:
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        await admin.close()


async def failure(call: Awaitable[Any]) -> DomainError | None:
    try:
        await call
    except DomainError as exc:
        return exc
    return None


async def test_calls_are_unavailable_while_postgresql_refuses_connections(
    database_url: str, projects: ProjectsClient
) -> None:
    if not database_url.startswith("postgresql"):
        pytest.skip("an SQLite file cannot refuse connections")
    created = await projects.create_project(a_project(), project_id="before")
    # Without health checking: a balancing client stops calling a server that is not
    # ready, and this test is about what the server answers when called anyway.
    direct = ProjectsClient(projects.address, health_checked=False)
    calls: dict[str, Callable[[], Awaitable[Any]]] = {
        "get": lambda: direct.get_project(created.name),
        "list": lambda: direct.list_projects(),
        "count": lambda: direct.count_projects(),
        "create": lambda: direct.create_project(a_project(), project_id="during"),
        "update": lambda: direct.update_project(a_project(name=created.name)),
        "delete": lambda: direct.delete_project(created.name),
    }

    with capture_logs():  # an internal error's traceback is slow to render
        async with direct, refusing_connections(database_url):
            failures = {name: await failure(call()) for name, call in calls.items()}

    wrong = {
        name: f"{type(exc).__name__}: {exc}"
        for name, exc in failures.items()
        if not isinstance(exc, UnavailableError)
    }
    # The database's own error, or, once its health checks failed, the server refusing
    # calls at once because what they need is down.
    reasons = {exc.reason for exc in failures.values() if exc is not None}
    assert reasons <= {"DATABASE_UNAVAILABLE", "SERVER_NOT_READY"}, reasons
    assert wrong == {}
    assert (await projects.get_project(created.name)).name == created.name
    await projects.create_project(a_project(), project_id="after")
