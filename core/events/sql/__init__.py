"""The embedded event store: events, groups and deliveries in the service's SQL database.

`SqlEventStore` (`store`) is its stream half (`stream`: appends in position order, reads,
history) and its consumer-group half (`groups`) over the tables of `tables`. Events reach
this process's subscribers through `on_append`; the backend is meant for one instance.
Several instances that must share streams use the Redis backend (`core.events.redis`).
"""

from __future__ import annotations

from core.events.sql.store import SqlEventStore

__all__ = ["SqlEventStore"]
