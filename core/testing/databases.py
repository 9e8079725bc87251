"""Fresh databases for tests, and the cleanup of a test's Redis keys.

A test gets a database of its own: a new SQLite file (the embedded default), or a new
database created on a PostgreSQL server for the test and dropped after it. Nothing is
shared between tests, so they can run in any order.

Usage::

    server = "postgresql://postgres@127.0.0.1:5432/postgres"
    async with fresh_database("postgresql", tmp_path, server=server) as url:
        settings = settings_for(url)
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from sqlalchemy.engine import make_url

from core.errors import ConfigError

KINDS = ("sqlite", "postgresql")


def database_on(server: str, database: str) -> str:
    """The SQLAlchemy URL of `database` on the PostgreSQL server of the URL `server`."""
    url = make_url(server).set(drivername="postgresql+asyncpg", database=database)
    return url.render_as_string(hide_password=False)


async def execute_on(server: str, statement: str) -> None:
    """Runs one statement on `server` (a PostgreSQL URL), outside any transaction."""
    import asyncpg  # only PostgreSQL needs it

    dsn = make_url(server).set(drivername="postgresql").render_as_string(hide_password=False)
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


@asynccontextmanager
async def fresh_database(kind: str, directory: Path, *, server: str = "") -> AsyncIterator[str]:
    """The URL of a new, empty database, removed afterwards.

    Args:
        kind: "sqlite" for a file in `directory`, "postgresql" for a database created on
            `server`.
        directory: Where the SQLite file goes (a test's tmp_path).
        server: A PostgreSQL URL (`postgresql://user@host:5432/db`) whose user may create
            databases; needed for "postgresql".
    """
    if kind not in KINDS:
        raise ConfigError(f"a test database is one of {', '.join(KINDS)}, not {kind!r}")
    if kind == "sqlite":
        yield f"sqlite+aiosqlite:///{directory / 'mesh.db'}"
        return
    if not server:
        raise ConfigError("a PostgreSQL test database needs a server URL (MESH_TEST_DATABASE_URL)")
    name = f"mesh_test_{uuid.uuid4().hex[:12]}"
    await execute_on(server, f'CREATE DATABASE "{name}"')
    try:
        yield database_on(server, name)
    finally:
        await execute_on(server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def forget_namespace(redis_url: str, namespace: str) -> None:
    """Deletes every Redis key under `namespace:` (a test's cache and event streams)."""
    import redis.asyncio as redis  # only tests with Redis need it

    client = redis.Redis.from_url(redis_url)
    try:
        keys = [k async for k in client.scan_iter(match=f"{namespace}:*", count=1000)]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()
