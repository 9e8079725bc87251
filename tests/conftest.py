"""Shared fixtures: real servers on 127.0.0.1:0 over real sockets."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest

from core.config import Settings, StartPolicy
from core.runtime.container import Container
from core.runtime.lifecycle import Component
from core.runtime.server import GrpcServer, Service
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


# -- databases -------------------------------------------------------------------------------

PG_ADMIN_DSN = os.environ.get("MESH_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")


def _pg_url(database: str) -> str:
    base = PG_ADMIN_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://", 1)
    return f"{base}/{database}"


async def _pg_admin(statement: str) -> None:
    conn = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


@pytest.fixture(params=["sqlite", "postgresql"])
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A fresh, empty database per test: a SQLite file, or a new PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'mesh.db'}"
        return
    name = f"mesh_test_{uuid.uuid4().hex[:12]}"
    await _pg_admin(f'CREATE DATABASE "{name}"')
    try:
        yield _pg_url(name)
    finally:
        await _pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def settings_for(database_url: str, *, redis_url: str = "", **overrides: object) -> Settings:
    """Settings for a test server on 127.0.0.1:0, with a cache namespace of its own."""
    values: dict[str, object] = {
        "address": "127.0.0.1:0",
        "database_url": database_url,
        "redis_url": redis_url,
        "migrate_on_start": True,
        "cache_namespace": f"test-{uuid.uuid4().hex[:12]}",
        "grace_seconds": 2.0,
    }
    return Settings(**(values | overrides))  # type: ignore[arg-type]


def projects_container(settings: Settings) -> tuple[Container, GrpcServer]:
    """A container running the projects service (and admin) the way `mesh serve` does."""
    from servers.projects import server as projects

    container = Container(FAST, health_interval=0.2, health_timeout=1.0)
    names: list[str] = []
    services = [
        admin_service(container, service="test", version="0", grpc_services=lambda: names),
        *projects.register(container, settings),
    ]
    server = GrpcServer.for_container(container, services, settings)
    names.extend(server.service_names)
    return container, server


@pytest.fixture
async def projects_server(database_url: str) -> AsyncIterator[Running]:
    """The projects service on a fresh database (SQLite and PostgreSQL), in-process cache."""
    container, server = projects_container(settings_for(database_url))
    async with running(container, server) as r:
        yield r
