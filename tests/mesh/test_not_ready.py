"""A server that is not ready says so: which service, where, and which dependency is down.

A real `mesh serve projects` on a PostgreSQL database of its own, which is then dropped:
the server's readiness turns NOT_SERVING, so health-checked clients cannot call it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from clients.base import SERVER_NOT_READY
from clients.projects import ProjectsClient
from core.errors import UnavailableError
from tests.mesh._processes import (
    MeshProcess,
    fresh_database,
    mesh_env,
    pg_admin,
    pg_url,
    run_mesh,
    serving,
    wait_health,
)

PROJECT_SERVICE = "mesh.projects.v1.ProjectService"


@pytest.fixture
async def not_ready() -> AsyncIterator[MeshProcess]:
    """A projects server whose database was dropped after it started, reporting NOT_SERVING."""
    async with fresh_database() as database:
        env = mesh_env(
            MESH_DATABASE_URL=pg_url(database),
            MESH_HEALTH_INTERVAL_SECONDS="0.2",
            MESH_HEALTH_TIMEOUT_SECONDS="1",
            MESH_MIGRATE_ON_START="true",
        )
        async with serving("projects", env=env) as server:
            await wait_health(server.address, "readiness", "SERVING")
            await pg_admin(f'DROP DATABASE "{database}" WITH (FORCE)')  # unreachable from now on
            await wait_health(server.address, "readiness", "NOT_SERVING")
            yield server


async def test_a_typed_client_names_the_service_that_is_not_ready(not_ready: MeshProcess) -> None:
    async with ProjectsClient(not_ready.address, attempts=1, deadline=5) as projects:
        with pytest.raises(UnavailableError) as raised:
            await projects.get_project("projects/any")

    error = raised.value
    assert error.reason == SERVER_NOT_READY
    assert error.metadata["service"] == PROJECT_SERVICE
    assert error.metadata["target"] == not_ready.address
    assert error.message.startswith(f"{PROJECT_SERVICE} at {not_ready.address} is not ready")
    assert "backend unhealthy" in error.metadata["grpc_message"]  # gRPC's own text, kept


async def test_the_mesh_command_says_which_dependency_is_down(not_ready: MeshProcess) -> None:
    code, out, err = await run_mesh(
        "projects", "get", "any", "--address", not_ready.address, env=mesh_env()
    )

    assert (code, out) == (1, "")
    assert err.startswith(
        f"mesh: {PROJECT_SERVICE} at {not_ready.address} is not ready: "
        "database UNHEALTHY (database unreachable: "
    ), err
    assert "backend unhealthy" not in err
