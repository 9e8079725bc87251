"""A test server process built on core: `python -m tests.mesh._replica`.

It hosts the admin service and a probe implementation of `mesh.projects.v1.ProjectService`
whose answers are chosen by the request, so resilience tests can drive a real server in
a process of its own through the real `ProjectsClient`:

- GetProject("projects/remaining"): `description` holds the seconds left of the deadline.
- GetProject/DeleteProject("projects/unavailable"): UNAVAILABLE; "projects/slow-unavailable"
  waits 0.3 s first. Tests count tries by the `rpc.finished` log lines.
- GetProject/DeleteProject("projects/dropped"): CANCELLED without an answer's details, as
  a stopping server ends the calls it had not started.
- GetProject("projects/sleep"): sleeps 30 s (for deadlines and the circuit breaker).
- UpdateProject: asks the replica at MESH_TEST_NEXT_ADDRESS for GetProject("projects/
  remaining") with a 60 s timeout and returns its answer (deadline propagation).
- CreateProject: inserts `project_id` into table `probe_rows` of MESH_DATABASE_URL in a
  transaction, logs `probe.inserted`, then sleeps `description` seconds and commits.

Its readiness follows a file: while MESH_TEST_HEALTH_FILE holds "unhealthy", the `flag`
component is UNHEALTHY, so readiness is NOT_SERVING.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import grpc
import structlog
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from clients.projects import ProjectsClient
from core.config import Settings
from core.errors import NotFoundError, UnavailableError
from core.logging import configure_logging
from core.runtime.boundary import Context
from core.runtime.container import Container
from core.runtime.health import Health
from core.runtime.lifecycle import Component
from core.runtime.process import serve
from core.runtime.server import GrpcServer, Service
from mesh.projects.v1 import projects_pb2 as pb
from mesh.projects.v1 import projects_pb2_grpc
from servers.admin.server import admin_service

log = structlog.get_logger()


class Flag(Component):
    """UNHEALTHY while its file says "unhealthy"."""

    name = "flag"

    def __init__(self, path: str) -> None:
        self._path = Path(path) if path else None

    async def check_health(self) -> Health:
        said = self._path.read_text().strip() if self._path and self._path.exists() else ""
        if said == "unhealthy":
            return Health.unhealthy("the test said so")
        return Health.healthy()


class ProbeTable(Component):
    name = "probe-table"

    def __init__(self, url: str) -> None:
        self._url = url
        self.engine: AsyncEngine | None = None

    async def start(self) -> None:
        self.engine = create_async_engine(self._url)
        async with self.engine.begin() as conn:
            await conn.execute(text("create table if not exists probe_rows (id text primary key)"))

    async def stop(self) -> None:
        if self.engine is not None:
            await self.engine.dispose()


class Probe(projects_pb2_grpc.ProjectServiceServicer):
    def __init__(self, table: ProbeTable | None, next_address: str) -> None:
        self._table = table
        self._next = next_address

    async def GetProject(
        self, request: pb.GetProjectRequest, context: Context
    ) -> pb.GetProjectResponse:
        if request.name == "projects/remaining":
            left = context.time_remaining()
            described = "none" if left is None else f"{left:.6f}"
            return pb.GetProjectResponse(project=pb.Project(description=described))
        if request.name == "projects/slow-unavailable":
            await asyncio.sleep(0.3)
            raise UnavailableError("probe: unavailable after a while", reason="PROBE")
        if request.name == "projects/unavailable":
            raise UnavailableError("probe: unavailable", reason="PROBE")
        if request.name == "projects/sleep":
            await asyncio.sleep(30)
        if request.name == "projects/dropped":
            await context.abort(grpc.StatusCode.CANCELLED, "dropped")
        raise NotFoundError(f"probe: {request.name} is nothing")

    async def DeleteProject(
        self, request: pb.DeleteProjectRequest, context: Context
    ) -> pb.DeleteProjectResponse:
        if request.name == "projects/dropped":
            await context.abort(grpc.StatusCode.CANCELLED, "dropped")
        raise UnavailableError("probe: unavailable", reason="PROBE")

    async def UpdateProject(
        self, request: pb.UpdateProjectRequest, context: Context
    ) -> pb.UpdateProjectResponse:
        async with ProjectsClient(self._next) as following:
            project = await following.get_project("projects/remaining", timeout=60)
        return pb.UpdateProjectResponse(project=project)

    async def CreateProject(
        self, request: pb.CreateProjectRequest, context: Context
    ) -> pb.CreateProjectResponse:
        engine = self._table.engine if self._table is not None else None
        assert engine is not None, "CreateProject needs MESH_DATABASE_URL"
        try:
            async with engine.begin() as conn:
                await conn.execute(
                    text("insert into probe_rows (id) values (:id)"), {"id": request.project_id}
                )
                log.info("probe.inserted", row=request.project_id)
                await asyncio.sleep(float(request.project.description or 0))
        except asyncio.CancelledError:
            log.info("probe.cancelled", row=request.project_id)
            raise
        return pb.CreateProjectResponse(project=pb.Project(name=request.project_id))


def main() -> None:
    settings = Settings.from_env()
    configure_logging(service=settings.service_name, version="0", log_format="json")
    container = Container(settings.start_policy, health_interval=settings.health_interval)
    container.register(Flag(os.environ.get("MESH_TEST_HEALTH_FILE", "")))
    table = None
    if settings.database_url:
        table = ProbeTable(settings.database_url)
        container.register(table)
    names: list[str] = []
    probe = Probe(table, os.environ.get("MESH_TEST_NEXT_ADDRESS", ""))
    services = [
        admin_service(
            container, service=settings.service_name, version="0", grpc_services=lambda: names
        ),
        Service(
            pb.DESCRIPTOR.services_by_name["ProjectService"],
            probe,
            projects_pb2_grpc.add_ProjectServiceServicer_to_server,
        ),
    ]
    server = GrpcServer.for_container(container, services, settings)
    names.extend(server.service_names)
    sys.exit(asyncio.run(serve(container)))


if __name__ == "__main__":
    main()
