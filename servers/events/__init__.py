"""The events service: publish, subscribe, consumer groups, dead letters and event status.

Its tables are core's (`core/data/migrations`), so it declares no migrations of its own.
"""

from core.runtime.declaration import ServiceDeclaration

SERVICE = ServiceDeclaration(
    name="events",
    register="servers.events.server:register",
    summary="events: publish, subscribe, consumer groups, dead letters, status, history",
    commands="cli.events:add_commands",
    client="clients.events:EventsClient",
)
