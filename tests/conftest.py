"""Shared fixtures: real servers on 127.0.0.1:0 over real sockets."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass

import pytest

from core.config import Settings, StartPolicy
from core.container import Container
from core.lifecycle import Component
from core.server import GrpcServer, Service
from servers.admin.server import admin_service

FAST = StartPolicy(attempts=2, base_delay=0.01, max_delay=0.02, start_timeout=5, stop_timeout=5)


@dataclass
class Running:
    container: Container
    server: GrpcServer

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server.port}"


def make_container(*components: Component, health_interval: float = 0.05) -> Container:
    container = Container(FAST, health_interval=health_interval, health_timeout=0.5)
    container.register(*components)
    return container


def add_server(
    container: Container,
    services: Sequence[Service] = (),
    *,
    grace: float = 2.0,
    admin: bool = True,
) -> GrpcServer:
    """Registers a GrpcServer on 127.0.0.1:0 hosting `services` and (by default) admin."""
    settings = Settings(address="127.0.0.1:0", grace_seconds=grace)
    names: list[str] = []
    if admin:
        services = [
            admin_service(container, service="test", version="0", grpc_services=lambda: names),
            *services,
        ]
    server = GrpcServer.for_container(container, services, settings)
    names.extend(server.service_names)
    return server


@asynccontextmanager
async def running(container: Container, server: GrpcServer) -> AsyncIterator[Running]:
    async with container.running():
        yield Running(container, server)


@pytest.fixture
async def mesh() -> AsyncIterator[Running]:
    """A server with no components but itself."""
    container = make_container()
    async with running(container, add_server(container)) as r:
        yield r
