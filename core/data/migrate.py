"""Schema migrations with Alembic: upgrade to head, or check that the schema is current.

Each package that owns tables keeps an Alembic version folder (core's is
`core/data/migrations/versions`, a service's is e.g. `servers/projects/migrations`); every
folder is its own branch, and `upgrade` brings all of them to their heads. On
PostgreSQL an advisory lock makes concurrent upgrades from several instances safe.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from core.data.revisions import CORE_MIGRATIONS
from core.runtime.lifecycle import FatalStartError

_SCRIPT_LOCATION = Path(__file__).parent / "migrations"
_LOCK_KEY = 0x6D657368  # "mesh": one advisory lock for all schema changes


def _config(folders: Sequence[Path]) -> Config:
    config = Config()
    config.set_main_option("script_location", str(_SCRIPT_LOCATION))
    config.set_main_option("path_separator", "os")
    locations = [CORE_MIGRATIONS, *(f for f in folders if f != CORE_MIGRATIONS)]
    config.set_main_option("version_locations", ":".join(str(f) for f in locations))
    return config


async def upgrade(engine: AsyncEngine, folders: Sequence[Path]) -> None:
    """Upgrades every branch to its head in one transaction."""
    config = _config(folders)

    def run(conn: Connection) -> None:
        config.attributes["connection"] = conn
        command.upgrade(config, "heads")

    async with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            await conn.execute(select(func.pg_advisory_xact_lock(_LOCK_KEY)))
        await conn.run_sync(run)


async def require_current(engine: AsyncEngine, folders: Sequence[Path]) -> None:
    """Raises FatalStartError unless the schema is at every head of `folders`."""
    script = ScriptDirectory.from_config(_config(folders))

    def current(conn: Connection) -> set[str]:
        return set(MigrationContext.configure(conn).get_current_heads())

    async with engine.connect() as conn:
        have = await conn.run_sync(current)
    # Alembic records only the tips: a head another branch depends on is implied by it.
    applied = {r.revision for r in script.revision_map.iterate_revisions(tuple(have), "base")}
    want = set(script.get_heads())
    if not want <= applied:
        raise FatalStartError(
            f"the database schema is at {sorted(have) or 'nothing'} but this build needs "
            f"{sorted(want)}: run `mesh db upgrade`"
        )
