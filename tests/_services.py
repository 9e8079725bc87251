"""meshkit's own services as the test kit starts them: a declaration each."""

from __future__ import annotations

from pathlib import Path

import servers.projects
from core.config import Settings
from core.runtime.container import Container
from core.runtime.server import GrpcServer, Service
from core.runtime.service import ServiceDeclaration
from servers.admin.server import admin_service


def host_admin(container: Container, settings: Settings) -> list[Service]:
    """The admin service of a test process (service "test", version "0")."""

    def hosted() -> list[str]:
        return container.get(GrpcServer).service_names

    return [admin_service(container, service="test", version="0", grpc_services=hosted)]


ADMIN = ServiceDeclaration(
    name="admin", register="tests._services:host_admin", client="clients.admin:AdminClient"
)
PROJECTS = ServiceDeclaration(
    name="projects",
    register="servers.projects.server:register",
    migrations=Path(servers.projects.__file__).parent / "migrations",
    client="clients.projects:ProjectsClient",
)
EVENTS = ServiceDeclaration(
    name="events", register="servers.events.server:register", client="clients.events:EventsClient"
)
