"""Shared fixtures: real servers on 127.0.0.1:0 over real sockets, started by the test kit
(core.testing)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest

from core.config import Settings
from core.runtime.container import Container
from core.runtime.lifecycle import Component
from core.runtime.server import GrpcServer, Service
from core.testing.databases import fresh_database
from core.testing.services import FAST_START, Running, assemble, running, serving, settings_for
from tests._services import ADMIN, PROJECTS, host_admin

__all__ = ["FAST", "PG_ADMIN_DSN", "Running", "running", "settings_for"]

FAST = FAST_START


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
    if admin:
        services = [*host_admin(container, settings), *services]
    return GrpcServer.for_container(container, services, settings)


@pytest.fixture
async def mesh() -> AsyncIterator[Running]:
    """A server with no components but itself."""
    settings = Settings(
        address="127.0.0.1:0",
        grace_seconds=2.0,
        start_policy=FAST,
        health_interval=0.05,
        health_timeout=0.5,
    )
    async with serving(ADMIN, settings=settings) as r:
        yield r


# -- databases -------------------------------------------------------------------------------

PG_ADMIN_DSN = os.environ.get("MESH_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")


@pytest.fixture(params=["sqlite", "postgresql"])
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A fresh, empty database per test: a SQLite file, or a new PostgreSQL database."""
    async with fresh_database(request.param, tmp_path, server=PG_ADMIN_DSN) as url:
        yield url


def projects_container(settings: Settings) -> tuple[Container, GrpcServer]:
    """A container running the projects service (and admin) the way `mesh serve` does."""
    return assemble([ADMIN, PROJECTS], settings)


@pytest.fixture
async def projects_server(database_url: str) -> AsyncIterator[Running]:
    """The projects service on a fresh database (SQLite and PostgreSQL), in-process cache."""
    async with serving(ADMIN, PROJECTS, settings=settings_for(database_url)) as r:
        yield r
