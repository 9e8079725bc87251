"""What `mesh serve projects` runs: the database, the cache, the purger, the outbox relay
and the service."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import structlog

from clients.events import EventsClient
from clients.health import HealthClient
from core.config import ChannelSettings, Settings
from core.data.database import Database
from core.errors import DomainError
from core.events import event_bus
from core.events.model import Event
from core.events.relay import OutboxRelay
from core.resources.cache import Cache
from core.resources.crud import Crud
from core.runtime.container import Container
from core.runtime.health import Health
from core.runtime.lifecycle import Component
from core.runtime.server import Service
from mesh.projects.v1 import projects_pb2, projects_pb2_grpc
from servers.projects.resource import MIGRATIONS, PROJECTS, SERVICE

__all__ = ["MIGRATIONS", "ProjectPurger", "register"]
from servers.projects.servicer import ProjectServicer

log = structlog.get_logger()

EVENT_SERVICE = "mesh.events.v1.EventService"  # its name in the events server's health


class ProjectPurger(Component):
    """Purges soft-deleted projects whose purge time has passed, at an interval."""

    name = "project-purger"
    depends_on = ("database",)

    def __init__(self, projects: Crud[projects_pb2.Project], interval: float) -> None:
        self._projects = projects
        self._interval = interval
        self._task: asyncio.Task[None] | None = None
        self._last_error = ""

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=self.name)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def check_health(self) -> Health:
        if self._last_error:
            return Health.degraded(f"last purge failed: {self._last_error}")
        return Health.healthy()

    async def _run(self) -> None:
        while True:
            try:
                purged = await self._projects.purge_expired()
                self._last_error = ""
                if purged:
                    log.info("project.purged", count=purged)
            except Exception as exc:
                self._last_error = type(exc).__name__
                log.exception("project.purge_failed")
            await asyncio.sleep(self._interval)


class RemoteEvents(Component):
    """The events service in another process (MESH_EVENTS_ADDRESS), for the outbox relay.

    The client retries UNAVAILABLE within its deadline; the relay's own loop retries
    after that, so the outbox holds events while the events service is down. Its health
    is the events service's own (grpc.health.v1 Check of EventService): DEGRADED, never
    UNHEALTHY, while that is down or NOT_SERVING, since writes go on meanwhile. Starting
    needs no events service: channels connect on first use.
    """

    name = "events-client"
    check_timeout = 1.0  # seconds the health check waits for the events service

    def __init__(self, address: str, channel: ChannelSettings) -> None:
        self._address = address
        self._client = EventsClient(address, channel=channel)
        self._health = HealthClient(address, channel=channel)

    async def start(self) -> None:
        await self._client.__aenter__()
        await self._health.__aenter__()

    async def stop(self) -> None:
        await self._health.__aexit__(None, None, None)
        await self._client.__aexit__(None, None, None)

    async def check_health(self) -> Health:
        try:
            status = await self._health.check(EVENT_SERVICE, timeout=self.check_timeout)
        except DomainError as exc:
            reason = f"events service at {self._address} unreachable ({exc.code.name})"
            return Health.degraded(f"{reason}; events wait in the outbox")
        if status != "SERVING":
            reason = f"events service at {self._address} is {status}"
            return Health.degraded(f"{reason}; events wait in the outbox")
        return Health.healthy(address=self._address)

    async def publish(self, events: Sequence[Event]) -> None:
        await self._client.publish_batch(events)


def register(container: Container, settings: Settings) -> list[Service]:
    """Adds the projects service's components to `container`; returns what it serves."""
    db = container.provide(Database, lambda: Database.from_settings(settings))
    db.include(MIGRATIONS)
    cache = container.provide(Cache, lambda: Cache.from_settings(settings))
    projects = Crud(PROJECTS, db, cache)
    container.register(ProjectPurger(projects, settings.purge_interval))
    if settings.events.address:  # the events service runs in another process
        remote = RemoteEvents(settings.events.address, settings.channel())
        container.register(remote, OutboxRelay(db, remote.publish, depends_on=(db.name,)))
    else:
        bus = event_bus(container, settings, serving=False)
        relay = OutboxRelay(db, bus.publish, depends_on=(db.name, bus.name), batch=bus.max_batch)
        container.register(relay)
    servicer = ProjectServicer(projects)
    add = projects_pb2_grpc.add_ProjectServiceServicer_to_server
    # Only the database decides readiness: without the event bus or the events service,
    # writes go on and their events wait in the outbox.
    return [Service(SERVICE, servicer, add, needs=("database",))]
