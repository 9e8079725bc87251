"""What `mesh serve projects` runs: the database, the cache, the purger, the outbox relay
and the service."""

from __future__ import annotations

from datetime import timedelta

from clients.outbox import relay_outbox
from core.config import Settings
from core.data.database import Database
from core.resources.cache import Cache
from core.resources.crud import Crud
from core.resources.purger import Purger
from core.runtime.container import Container
from core.runtime.server import Service
from mesh.projects.v1 import projects_pb2_grpc
from servers.projects.resource import DESCRIPTOR, PROJECTS
from servers.projects.servicer import ProjectServicer


def register(container: Container, settings: Settings) -> list[Service]:
    """Adds the projects service's components to `container`; returns what it serves."""
    db = container.provide(Database, lambda: Database.from_settings(settings))
    cache = container.provide(Cache, lambda: Cache.from_settings(settings))
    retention = timedelta(days=settings.audit_retention_days)
    projects = Crud(PROJECTS, db, cache, audit_retention=retention)
    container.register(Purger(projects, settings.purge_interval))
    relay_outbox(container, settings, db)
    servicer = ProjectServicer(projects)
    add = projects_pb2_grpc.add_ProjectServiceServicer_to_server
    # Only the database decides readiness: without the event bus or the events service,
    # writes go on and their events wait in the outbox.
    return [Service(DESCRIPTOR, servicer, add, needs=("database",))]
