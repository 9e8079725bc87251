"""Declared services started for a test: in this process, on 127.0.0.1:0, with their real
components, and stopped afterwards.

`serving(*declarations, settings=...)` does what `mesh serve` does with the declarations
(each register function adds its components and services to one container; the gRPC
server with health and reflection comes last), applies every declared migration folder,
and yields a `Running`: the address, the declarations' typed clients, and a bounded wait
for the events the process publishes.

Usage::

    settings = settings_for(f"sqlite+aiosqlite:///{tmp_path / 'notes.db'}")
    async with serving(SERVICE, settings=settings) as notes:
        client = await notes.client()
        created = await client.create_note(title="Groceries")
        event = await notes.wait_for_event("notes.v1.note.created")
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AsyncExitStack, aclosing, asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from core.config import Settings, StartPolicy
from core.runtime.container import Container
from core.runtime.declaration import ServiceDeclaration, discover
from core.runtime.host import container_for, host
from core.runtime.lifecycle import Component
from core.runtime.server import GrpcServer
from core.testing.doubles import StandInContainer

if TYPE_CHECKING:
    from core.events.bus import EventBus
    from core.events.model import Event

# Test components start at once or fail fast: two tries, 10 ms apart.
FAST_START = StartPolicy(
    attempts=2, base_delay=0.01, max_delay=0.02, start_timeout=5, stop_timeout=5
)


def settings_for(database_url: str, *, redis_url: str = "", **overrides: Any) -> Settings:
    """Settings of a test server: 127.0.0.1:0, migrated at start, a cache namespace of its
    own, a short grace, fast starts and health checks five times a second."""
    values: dict[str, Any] = {
        "address": "127.0.0.1:0",
        "database_url": database_url,
        "redis_url": redis_url,
        "migrate_on_start": True,
        "cache_namespace": f"test-{uuid.uuid4().hex[:12]}",
        "grace_seconds": 2.0,
        "start_policy": FAST_START,
        "health_interval": 0.2,
        "health_timeout": 1.0,
    }
    return Settings(**(values | overrides))


@dataclass
class Running:
    """A started container and its gRPC server, and what a test does with them.

    Attributes:
        container: Its components, e.g. `container.get(Database)`.
        server: The gRPC server; `server.port` is the port the system picked.
        declarations: The services it hosts, in the order they were registered.
    """

    container: Container
    server: GrpcServer
    declarations: tuple[ServiceDeclaration, ...] = ()
    _clients: AsyncExitStack = field(default_factory=AsyncExitStack, repr=False)
    _events_after: str = field(default="", repr=False)
    _events_seen: set[str] = field(default_factory=set, repr=False)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server.port}"

    async def client(self, service: str = "") -> Any:
        """The typed client of a hosted service (named, or the only one with a client),
        opened on this server; it is closed before the server stops."""
        declaration = self._declaration(service)
        kind = declaration.load_client()
        if kind is None:
            raise LookupError(f"service {declaration.name!r} declares no client")
        return await self._clients.enter_async_context(kind(self.address))

    async def wait_for_event(self, type: str, *, subject: str = "", timeout: float = 5.0) -> Event:
        """The first event of `type` (exact, or a prefix such as `notes.v1.*`), and of
        `subject` if given, that this process's event bus stored since the start and that
        no earlier wait returned.

        Raises:
            LookupError: The process has no event bus.
            TimeoutError: No such event within `timeout` seconds.
        """
        from core.events.model import Event, Selector  # loads the events contract: on use

        selector = Selector.parse([type], subject)
        deadline = asyncio.timeout(timeout)
        try:
            async with (
                deadline,
                aclosing(self._bus().subscribe(selector, self._events_after)) as feed,
            ):
                async for item in feed:
                    if isinstance(item, Event) and item.id not in self._events_seen:
                        self._events_seen.add(item.id)
                        return item
        except TimeoutError:
            if not deadline.expired():  # the store's own, not our bound
                raise
            about = f"{type!r}" + (f" about {subject!r}" if subject else "")
            raise TimeoutError(f"no event {about} within {timeout:g}s") from None
        raise AssertionError("an event subscription ended")  # it only ends by raising

    async def _start_watching_events(self) -> None:
        try:
            bus = self._bus()
        except LookupError:
            return
        self._events_after = await bus.resolve()

    def _bus(self) -> EventBus:
        from core.events.bus import EventBus  # a process without events never loads it

        found = [c for c in self.container.components if isinstance(c, EventBus)]
        if not found:
            raise LookupError("this process has no event bus")
        return found[0]

    def _declaration(self, name: str) -> ServiceDeclaration:
        with_client = [d for d in self.declarations if d.client is not None]
        if not name and len(with_client) == 1:
            return with_client[0]
        for declaration in self.declarations:
            if declaration.name == name:
                return declaration
        hosted = ", ".join(d.name for d in self.declarations) or "none"
        raise LookupError(f"name one of the hosted services ({hosted}), not {name!r}")


def assemble(
    declarations: Sequence[ServiceDeclaration],
    settings: Settings,
    *,
    replace: Mapping[str, Component] | None = None,
) -> tuple[Container, GrpcServer]:
    """The container and server that `mesh serve` would build for `declarations`.

    Args:
        declarations: Registered in this order into one container.
        settings: Passed to each register function; the container's start policy and
            health interval come from them too.
        replace: Test doubles by component name (see `core.testing.doubles`).

    Raises:
        RegistrationError: A name in `replace` matched no component.
    """
    if replace:
        container: Container = StandInContainer(
            replace,
            settings.start_policy,
            health_interval=settings.health_interval,
            health_timeout=settings.health_timeout,
            health_failures=settings.health_failures,
            health_recoveries=settings.health_recoveries,
        )
    else:
        container = container_for(settings)
    server = host(declarations, settings, container)
    if isinstance(container, StandInContainer):
        container.check_replaced()
    return container, server


@asynccontextmanager
async def running(
    container: Container, server: GrpcServer, declarations: Sequence[ServiceDeclaration] = ()
) -> AsyncIterator[Running]:
    """Starts `container` (whose last component is `server`) for the block, then closes
    the clients the block opened and stops it."""
    async with container.running():
        service = Running(container, server, tuple(declarations))
        async with service._clients:
            await service._start_watching_events()
            yield service


@asynccontextmanager
async def serving(
    *declarations: ServiceDeclaration,
    settings: Settings,
    replace: Mapping[str, Component] | None = None,
) -> AsyncIterator[Running]:
    """`assemble`, then `running`: the declared services, started for the block."""
    container, server = assemble(declarations, settings, replace=replace)
    async with running(container, server, declarations) as service:
        yield service


class StartService:
    """Starts declared services for one test (the `start_service` fixture); each stops
    when the test ends, the last started first.

    Args:
        stack: Owns what was started.
        settings: The default settings of every service started.
    """

    def __init__(self, stack: AsyncExitStack, settings: Settings) -> None:
        self._stack = stack
        self.settings = settings

    async def __call__(
        self,
        *services: ServiceDeclaration | str,
        settings: Settings | None = None,
        replace: Mapping[str, Component] | None = None,
    ) -> Running:
        """Starts `services` in one process and returns it running.

        Args:
            services: Declarations, or the names of installed ones (`discover()`).
            settings: Instead of the fixture's `mesh_settings`.
            replace: Test doubles by component name, registered in their place.
        """
        declarations = [_declared(s) if isinstance(s, str) else s for s in services]
        started = serving(*declarations, settings=settings or self.settings, replace=replace)
        return await self._stack.enter_async_context(started)


def _declared(name: str) -> ServiceDeclaration:
    installed = discover()
    if name not in installed:
        known = ", ".join(installed) or "none"
        raise LookupError(f"no installed service is named {name!r} (installed: {known})")
    return installed[name]
