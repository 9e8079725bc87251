"""The projects service with no cache, for `make bench`: every GetProject reads PostgreSQL.

It is what `mesh serve projects` runs (the same Database component, CRUD engine,
servicer, error boundary, health and reflection on a core GrpcServer), except that the
Crud is built with `cache=None`.

    MESH_DATABASE_URL=postgresql+asyncpg://... python tests/bench/uncached.py

Settings come from the MESH_* environment as usual (MESH_LOG_LEVEL=warning for the
bench); the server binds 127.0.0.1:0, prints `PORT <n>` on stdout and runs until SIGTERM.
"""

from __future__ import annotations

import asyncio
import dataclasses
import signal

from core.config import Settings
from core.data.database import Database
from core.logging import configure_logging
from core.resources.crud import Crud
from core.runtime.container import Container
from core.runtime.server import GrpcServer, Service
from mesh.projects.v1 import projects_pb2_grpc
from servers.projects import MIGRATIONS
from servers.projects.resource import DESCRIPTOR, PROJECTS
from servers.projects.servicer import ProjectServicer


async def serve(settings: Settings) -> None:
    container = Container(settings.start_policy)
    db = container.provide(Database, lambda: Database.from_settings(settings))
    db.include(MIGRATIONS)
    servicer = ProjectServicer(Crud(PROJECTS, db, cache=None))
    add = projects_pb2_grpc.add_ProjectServiceServicer_to_server
    service = Service(DESCRIPTOR, servicer, add, needs=("database",))
    server = GrpcServer.for_container(container, [service], settings)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    async with container.running():
        print(f"PORT {server.port}", flush=True)
        await stop.wait()


def main() -> None:
    settings = dataclasses.replace(Settings.from_env(), address="127.0.0.1:0")
    configure_logging(
        service="bench-uncached",
        version="0",
        log_format=settings.log_format,
        level=settings.log_level,
    )
    asyncio.run(serve(settings))


if __name__ == "__main__":
    main()
