"""Where a service's outbox goes: the events service in another process, or this one's bus.

Every service that writes events through the transactional outbox
(`core.events.outbox`) needs the same wiring, so it is written once here.

Usage (in a service's register function)::

    db = container.provide(Database, lambda: Database.from_settings(settings))
    relay_outbox(container, settings, db)
"""

from __future__ import annotations

from clients.events import EventsClient
from clients.remote import RemoteService
from core.config import Settings
from core.data.database import Database
from core.events import event_bus
from core.events.notices import SystemNotices
from core.events.relay import OutboxRelay
from core.runtime.container import Container


def relay_outbox(container: Container, settings: Settings, db: Database) -> None:
    """Registers the outbox relay of `db`, and what it publishes to.

    With MESH_EVENTS_ADDRESS set, that is the events service there, through an
    "events-client" component that is DEGRADED while the service is down: its client
    retries UNAVAILABLE within its deadline and the relay's loop after that, so the
    outbox holds the events meanwhile; the process's system events (`mesh.system.v1.*`,
    see core.events.notices) go there too. Otherwise it is this process's event bus
    (which `mesh serve events` in the same process also serves).
    """
    if settings.events.address:
        events = RemoteService(
            EventsClient(settings.events.address, channel=settings.channel()),
            name="events-client",
            label="events service",
            while_down="events wait in the outbox",
        )
        relay = OutboxRelay(db, events.client.publish_batch, depends_on=(db.name,))
        container.register(events, relay)
        if settings.events.system_events:
            container.provide(SystemNotices, lambda: _notices(container, settings, events))
        return
    bus = event_bus(container, settings, serving=False)
    relay = OutboxRelay(db, bus.publish, depends_on=(db.name, bus.name), batch=bus.max_batch)
    container.register(relay)


def _notices(
    container: Container, settings: Settings, events: RemoteService[EventsClient]
) -> SystemNotices:
    publish = events.client.publish_batch
    notices = SystemNotices(publish, source=settings.service_name, depends_on=(events.name,))
    notices.follow(container.monitor)
    return notices
