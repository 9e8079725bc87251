"""The cache from the command line, on two `mesh serve projects` processes sharing one
PostgreSQL database and one Redis: `mesh projects get --verbose` says how a read was
served, `mesh cache clear` drops what both processes and Redis hold."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from clients.projects import Project, ProjectsClient
from tests.mesh._processes import (
    fresh_database,
    mesh_env,
    pg_url,
    redis_client,
    run_mesh,
    serving,
)

SHARED_REDIS = "redis://127.0.0.1:6379/0"


@pytest.fixture
async def env() -> AsyncIterator[dict[str, str]]:
    """The environment of both servers and of the `mesh` commands."""
    namespace = f"test-{uuid.uuid4().hex[:12]}"
    async with fresh_database() as database:
        yield mesh_env(
            MESH_DATABASE_URL=pg_url(database),
            MESH_REDIS_URL=SHARED_REDIS,
            MESH_CACHE_NAMESPACE=namespace,
        )
        async with redis_client(SHARED_REDIS) as client:
            keys = [key async for key in client.scan_iter(match=f"{namespace}:*")]
            if keys:
                await client.delete(*keys)


async def get_verbose(env: dict[str, str], address: str, name: str) -> tuple[str, str]:
    """(description, what --verbose said on stderr) of `mesh projects get --verbose`."""
    code, out, err = await run_mesh(
        "projects", "get", name, "--verbose", "--address", address, env=env
    )
    assert code == 0, err
    return json.loads(out).get("description", ""), err.strip()


async def test_cli_shows_how_reads_were_served_and_clears_every_instance(
    env: dict[str, str],
) -> None:
    async with (
        serving("projects", env=env | {"MESH_MIGRATE_ON_START": "true"}) as a,
        serving("projects", env=env | {"MESH_MIGRATE_ON_START": "false"}) as b,
        ProjectsClient(a.address, attempts=1) as on_a,
    ):
        created = await on_a.create_project(
            Project(
                display_name="Demo",
                project_type=Project.PROJECT_TYPE_MUSIC_CLIP,
                owner="users/alice",
                description="old",
            ),
            project_id="cli-cache",
        )
        assert await get_verbose(env, a.address, "cli-cache") == ("old", "mesh: cache: miss")
        assert await get_verbose(env, a.address, "cli-cache") == ("old", "mesh: cache: local-hit")
        assert (await get_verbose(env, b.address, "cli-cache"))[0] == "old"
        assert await get_verbose(env, b.address, "cli-cache") == ("old", "mesh: cache: local-hit")

        await change_behind_the_cache(env["MESH_DATABASE_URL"])
        assert (await get_verbose(env, b.address, "cli-cache"))[0] == "old"  # still cached

        code, out, err = await run_mesh(
            "cache", "clear", "--resource", "projects", "--address", a.address, env=env
        )
        assert code == 0, err
        assert json.loads(out) == {"notified_instances": 2, "confirmed_instances": 2}
        assert await get_verbose(env, b.address, "cli-cache") == ("new", "mesh: cache: miss")
        assert await get_verbose(env, a.address, "cli-cache") == (
            "new",
            "mesh: cache: shared-hit",
        )

        code, _, err = await run_mesh(
            "cache", "clear", "--resource", "widgets", "--address", a.address, env=env
        )
        assert code == 1
        assert json.loads(err)["reason"] == "UNKNOWN_RESOURCE"
    assert created.name == "projects/cli-cache"


async def change_behind_the_cache(url: str) -> None:
    """Updates the row in SQL, as a migration or a hand-made fix would: no invalidation."""
    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.execute(
                text("update projects set description = 'new' where id = 'cli-cache'")
            )
    finally:
        await engine.dispose()
