"""meshkit's own services as the test kit starts them: their declarations, with an admin
service that names the process "test", version "0"."""

from __future__ import annotations

import servers.events
import servers.projects
from core.config import Settings
from core.runtime.container import Container
from core.runtime.declaration import ServiceDeclaration
from core.runtime.server import GrpcServer, Service
from servers.admin.server import admin_service


def host_admin(container: Container, settings: Settings) -> list[Service]:
    """The admin service of a test process (service "test", version "0")."""

    def hosted() -> list[str]:
        return container.get(GrpcServer).service_names

    return [
        admin_service(
            container,
            service="test",
            version="0",
            grpc_services=hosted,
            profile=settings.profile,
            overrides=settings.overrides,
        )
    ]


ADMIN = ServiceDeclaration(
    name="admin", register="tests._services:host_admin", client="clients.admin:AdminClient"
)
PROJECTS = servers.projects.SERVICE
EVENTS = servers.events.SERVICE
