"""The event system: an envelope, two stores behind one interface, the bus, the relay.

The bus (`core.events.bus`) publishes (`publisher`), feeds plain subscriptions (`feed`,
`reads`) and serves consumer groups (`groups`); `requests` holds the rules of
EventService's requests (limits, ack ids, page tokens) over it. The stores are
`core.events.sql` and `core.events.redis`, each a stream half and a groups half.

`event_bus(container, settings, serving=...)` builds the bus a process uses: on Redis Streams when
MESH_REDIS_URL is set (or MESH_EVENTS_BACKEND=redis), else on the SQL database.
With MESH_EVENTS_SYSTEM_EVENTS on (the default) it also registers `SystemNotices`, which
publishes the process's `mesh.system.v1.*` events (see core.events.notices) on that bus.
`consumer_span(event, group=...)` wraps the handling of one received event in a CONSUMER
span linked to the span that published it (see core.events.tracing).
"""

from __future__ import annotations

from core.config import Settings
from core.events.bus import EventBus
from core.events.model import EventStore, Policy
from core.events.notices import SystemNotices
from core.events.tracing import consumer_span, producer_of
from core.runtime.container import Container

__all__ = ["consumer_span", "event_bus", "producer_of"]


def event_bus(container: Container, settings: Settings, *, serving: bool) -> EventBus:
    """The process's one bus, registered in `container` on first use.

    `serving`: whether the caller serves EventService from it. A bus that only feeds the
    outbox relay is DEGRADED, not UNHEALTHY, when its store is unreachable: the service
    writing the outbox works on, and its events wait until the store is back.
    """
    bus = container.provide(EventBus, lambda: _build(container, settings))
    bus.serving = bus.serving or serving
    # Not on a test double standing in for the bus (core.testing.doubles): it gets only
    # what the service itself publishes.
    if settings.events.system_events and isinstance(bus, EventBus):
        container.provide(SystemNotices, lambda: _notices(container, settings, bus))
    return bus


def _notices(container: Container, settings: Settings, bus: EventBus) -> SystemNotices:
    notices = SystemNotices(bus.publish, source=settings.service_name, depends_on=(bus.name,))
    notices.follow(container.monitor)
    bus.watch_dead_letters(notices.dead_lettered)
    return notices


def _build(container: Container, settings: Settings) -> EventBus:
    config = settings.events
    store: EventStore
    depends_on: tuple[str, ...] = ()
    if config.uses_redis(settings.redis_url):
        from core.events.redis import RedisEventStore  # only the distributed mode needs it

        store = RedisEventStore(
            settings.redis_url, namespace=settings.cache_namespace, retention=config.retention
        )
    else:
        from core.data.database import Database  # the SQL backend alone needs SQLAlchemy
        from core.events.sql import SqlEventStore

        db = container.provide(Database, lambda: Database.from_settings(settings))
        store, depends_on = SqlEventStore(db), (db.name,)
    return EventBus(
        store,
        depends_on=depends_on,
        max_batch=config.max_batch,
        max_event_bytes=config.max_event_bytes,
        policy=Policy(visibility=config.visibility, max_attempts=config.max_attempts),
    )
