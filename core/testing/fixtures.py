"""The fixtures of the test kit's pytest plugin; override any of them in a conftest.py.

- `mesh_postgres_url` (session): a PostgreSQL server on which tests may create databases,
  from MESH_TEST_DATABASE_URL (e.g. `postgresql://postgres@127.0.0.1:5432/postgres`);
  "" when unset.
- `mesh_redis_url` (session): MESH_TEST_REDIS_URL, or a URL given by indirect
  parametrization; "" when neither (caches stay in process, events in the SQL database).
- `mesh_database_url`: a fresh database for the test: on the PostgreSQL server when one
  is configured, else a SQLite file in `tmp_path`. Parametrize it indirectly with
  "sqlite" or "postgresql" to choose (a test for PostgreSQL skips without a server).
- `mesh_settings`: `settings_for(mesh_database_url, redis_url=mesh_redis_url)`; the
  test's Redis keys are deleted after it.
- `start_service`: a `core.testing.services.StartService`, which starts declared
  services with `mesh_settings`.

The kit's modules are imported when a fixture is first used, not when pytest starts.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import pytest_asyncio

if TYPE_CHECKING:
    from core.config import Settings
    from core.testing.services import StartService


@pytest.fixture(scope="session")
def mesh_postgres_url() -> str:
    """MESH_TEST_DATABASE_URL: where tests may create databases; "" for none."""
    return os.environ.get("MESH_TEST_DATABASE_URL", "")


@pytest.fixture(scope="session")
def mesh_redis_url(request: pytest.FixtureRequest) -> str:
    """The Redis of the test's services: a parameter, MESH_TEST_REDIS_URL, or "" for none."""
    url: str = getattr(request, "param", os.environ.get("MESH_TEST_REDIS_URL", ""))
    return url


@pytest_asyncio.fixture
async def mesh_database_url(
    request: pytest.FixtureRequest, tmp_path: Path, mesh_postgres_url: str
) -> AsyncIterator[str]:
    """The URL of a new, empty database for this test, dropped after it."""
    from core.testing.databases import fresh_database

    kind: str = getattr(request, "param", "postgresql" if mesh_postgres_url else "sqlite")
    if kind == "postgresql" and not mesh_postgres_url:
        pytest.skip("no PostgreSQL server to test on: set MESH_TEST_DATABASE_URL")
    async with fresh_database(kind, tmp_path, server=mesh_postgres_url) as url:
        yield url


@pytest_asyncio.fixture
async def mesh_settings(
    mesh_database_url: str, mesh_redis_url: str, tmp_path: Path
) -> AsyncIterator[Settings]:
    """Settings of a test server on the test's database (and Redis, when configured)."""
    from core.testing.databases import forget_namespace
    from core.testing.services import settings_for

    settings = settings_for(mesh_database_url, redis_url=mesh_redis_url, data_dir=tmp_path)
    yield settings
    if mesh_redis_url:
        await forget_namespace(mesh_redis_url, settings.cache_namespace)


@pytest_asyncio.fixture
async def start_service(mesh_settings: Settings) -> AsyncIterator[StartService]:
    """Starts declared services for this test: `await start_service(SERVICE)`."""
    from core.testing.services import StartService

    async with AsyncExitStack() as stack:
        yield StartService(stack, mesh_settings)
