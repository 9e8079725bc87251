"""What `mesh serve events` runs: the event bus on its backend, and EventService."""

from __future__ import annotations

from core.config import Settings
from core.events import event_bus
from core.runtime.container import Container
from core.runtime.server import Service
from mesh.events.v1 import events_pb2, events_pb2_grpc
from servers.events.servicer import EventServicer

DESCRIPTOR = events_pb2.DESCRIPTOR.services_by_name["EventService"]


def register(container: Container, settings: Settings) -> list[Service]:
    """Adds the events service's components to `container`; returns what it serves."""
    bus = event_bus(container, settings, serving=True)
    add = events_pb2_grpc.add_EventServiceServicer_to_server
    needs = (bus.name, *bus.depends_on)
    servicer = EventServicer(bus, return_stacks=settings.events.return_stacks)
    return [Service(DESCRIPTOR, servicer, add, needs=needs, closing=bus.close_streams)]
