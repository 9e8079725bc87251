"""A process hosting declared services: what `mesh serve` runs and the test kit starts.

`host(declarations, settings, container)` lets each declaration's register function add
its components and gRPC services to `container`, gives the database every hosted
service's migration folder (and the other installed services' folders, so that their
revisions in a shared database are understood), and adds the gRPC server, with health
and reflection, as the last component.

Usage::

    container = container_for(settings)
    host([admin.SERVICE, projects.SERVICE], settings, container)
    exit_code = await serve(container)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

from core.config import Settings
from core.runtime.container import Container
from core.runtime.declaration import ServiceDeclaration, installed_migrations
from core.runtime.server import GrpcServer, Service


@runtime_checkable
class Schema(Protocol):
    """A component that keeps a database schema: `core.data.database.Database`."""

    def include(self, migrations: Path) -> None: ...
    def share_with(self, migrations: Sequence[Path]) -> None: ...


def host(
    declarations: Sequence[ServiceDeclaration], settings: Settings, container: Container
) -> GrpcServer:
    """Registers `declarations`, in this order, and then their gRPC server in `container`."""
    services: list[Service] = []
    for declaration in declarations:
        services += declaration.load_register()(container, settings)
    own = [d.migrations for d in declarations if d.migrations is not None]
    for schema in (c for c in container.components if isinstance(c, Schema)):
        for folder in own:
            schema.include(folder)
        schema.share_with(installed_migrations())
    return GrpcServer.for_container(container, services, settings)


def container_for(settings: Settings) -> Container:
    """An empty container with the start policy and health checks of `settings`."""
    return Container(
        settings.start_policy,
        health_interval=settings.health_interval,
        health_timeout=settings.health_timeout,
        health_failures=settings.health_failures,
        health_recoveries=settings.health_recoveries,
    )
