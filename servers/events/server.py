"""What `mesh serve events` runs: the event bus on its backend, and EventService."""

from __future__ import annotations

from core.config import Settings
from core.container import Container
from core.database import Database
from core.events.bus import EventBus
from core.events.model import EventStore, Policy
from core.server import Service
from mesh.events.v1 import events_pb2, events_pb2_grpc
from servers.events.servicer import EventServicer

SERVICE = events_pb2.DESCRIPTOR.services_by_name["EventService"]


def bus_for(container: Container, settings: Settings) -> EventBus:
    """The bus on Redis Streams when configured, else on the service's SQL database."""
    config = settings.events
    store: EventStore
    if config.uses_redis(settings.redis_url):
        from core.events.redis import RedisEventStore  # only the distributed mode needs it

        store = RedisEventStore(
            settings.redis_url, namespace=settings.cache_namespace, retention=config.retention
        )
        depends_on: tuple[str, ...] = ()
    else:
        from core.events.sql import SqlEventStore

        store = SqlEventStore(container.provide(Database, lambda: Database.from_settings(settings)))
        depends_on = ("database",)
    return EventBus(
        store,
        depends_on=depends_on,
        max_batch=config.max_batch,
        max_event_bytes=config.max_event_bytes,
        policy=Policy(visibility=config.visibility, max_attempts=config.max_attempts),
    )


def register(container: Container, settings: Settings) -> list[Service]:
    """Adds the events service's components to `container`; returns what it serves."""
    bus = container.provide(EventBus, lambda: bus_for(container, settings))
    add = events_pb2_grpc.add_EventServiceServicer_to_server
    needs = (bus.name, *bus.depends_on)
    return [Service(SERVICE, EventServicer(bus), add, needs=needs, closing=bus.close_streams)]
