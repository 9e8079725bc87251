"""A service in another process, as a component of this one.

`RemoteService` holds any typed client: it opens the client when the process starts,
closes it when the process stops, and reports the remote's health as the remote's
standard `grpc.health.v1` Check of its service says it. A remote that is down makes the
component DEGRADED, never UNHEALTHY: this process goes on, and whatever needs the remote
waits or retries (the caller says what, for the reason). Starting needs no remote:
channels connect on first use.

Usage::

    events = RemoteService(
        EventsClient(settings.events.address, channel=settings.channel()),
        name="events-client",
        label="events service",
        while_down="events wait in the outbox",
    )
    container.register(events, OutboxRelay(db, events.client.publish_batch))
"""

from __future__ import annotations

import contextlib
from typing import Generic, TypeVar

from clients.base import Client
from clients.health import HealthClient
from core.errors import DomainError
from core.runtime.health import PROBE_TIMEOUT, Health
from core.runtime.lifecycle import Component

ClientT = TypeVar("ClientT", bound=Client)


class RemoteService(Component, Generic[ClientT]):
    """A typed client opened and closed with the process, healthy while its remote serves.

    Args:
        client: The typed client, not yet opened; use it as `.client` once started.
        name: The component's name, e.g. "events-client".
        label: How health reasons name the remote, e.g. "events service".
        while_down: What happens while the remote is down, added to the reasons, e.g.
            "events wait in the outbox".
        health_service: The name the remote's health service checks (default: the
            client's own service, e.g. "mesh.events.v1.EventService").
    """

    check_timeout = PROBE_TIMEOUT  # seconds a health check waits for the remote

    def __init__(
        self,
        client: ClientT,
        *,
        name: str,
        label: str,
        while_down: str = "",
        health_service: str | None = None,
    ) -> None:
        self.name = name
        self.client = client
        self.address = client.address
        self._label = label
        self._while_down = while_down
        self._health_service = client.service if health_service is None else health_service
        self._health = HealthClient(client.address, channel=client.channel_settings)
        self._opened = contextlib.AsyncExitStack()

    async def start(self) -> None:
        async with contextlib.AsyncExitStack() as opening:
            await opening.enter_async_context(self.client)
            await opening.enter_async_context(self._health)
            self._opened = opening.pop_all()  # closed by stop; by the block if opening fails

    async def stop(self) -> None:
        await self._opened.aclose()

    async def check_health(self) -> Health:
        try:
            status = await self._health.check(self._health_service, timeout=self.check_timeout)
        except DomainError as exc:
            return self._down(f"unreachable ({exc.code.name})")
        if status != "SERVING":
            return self._down(f"is {status}")
        return Health.healthy(address=self.address)

    def _down(self, what: str) -> Health:
        reason = f"{self._label} at {self.address} {what}"
        return Health.degraded(f"{reason}; {self._while_down}" if self._while_down else reason)
