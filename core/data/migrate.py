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

from core.data.revisions import CORE_MIGRATIONS, revision_graph
from core.runtime.lifecycle import FatalStartError

_SCRIPT_LOCATION = Path(__file__).parent / "migrations"
_LOCK_KEY = 0x6D657368  # "mesh": one advisory lock for all schema changes


def _config(folders: Sequence[Path]) -> Config:
    config = Config()
    config.set_main_option("script_location", str(_SCRIPT_LOCATION))
    config.set_main_option("path_separator", "os")
    locations = dict.fromkeys([CORE_MIGRATIONS, *folders])  # each once, core's first
    config.set_main_option("version_locations", ":".join(str(f) for f in locations))
    return config


async def upgrade(engine: AsyncEngine, folders: Sequence[Path], known: Sequence[Path] = ()) -> None:
    """Upgrades the branches of `folders` (and core's) to their heads in one transaction.

    `known` are the folders of other services that may share the database: Alembic reads
    their revisions recorded in it, and leaves their tables alone.
    """
    config = _config([*folders, *known])
    _, heads = revision_graph([CORE_MIGRATIONS, *folders])

    def run(conn: Connection) -> None:
        config.attributes["connection"] = conn
        for head in sorted(heads):
            command.upgrade(config, head)

    async with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            await conn.execute(select(func.pg_advisory_xact_lock(_LOCK_KEY)))
        await conn.run_sync(run)


async def require_current(
    engine: AsyncEngine, folders: Sequence[Path], known: Sequence[Path] = ()
) -> None:
    """Raises FatalStartError unless the schema is at every head of `folders` (and core's);
    `known` as for `upgrade`."""
    script = ScriptDirectory.from_config(_config([*folders, *known]))

    def current(conn: Connection) -> set[str]:
        return set(MigrationContext.configure(conn).get_current_heads())

    async with engine.connect() as conn:
        have = await conn.run_sync(current)
    # Alembic records only the tips: a head another branch depends on is implied by it.
    applied = {r.revision for r in script.revision_map.iterate_revisions(tuple(have), "base")}
    _, want = revision_graph([CORE_MIGRATIONS, *folders])
    if not want <= applied:
        raise FatalStartError(
            f"the database schema is at {sorted(have) or 'nothing'} but this build needs "
            f"{sorted(want)}: run `mesh db upgrade`"
        )
