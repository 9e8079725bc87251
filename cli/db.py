"""`mesh db upgrade`: bring MESH_DATABASE_URL to the latest schema of every installed service.

The schema is core's tables plus every migrations folder a service declares, so a
service installed beside meshkit is upgraded with it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cli import VERSION, output
from core.config import Settings
from core.logging import configure_logging
from core.runtime.declaration import ServiceDeclaration


def add_commands(commands: Any, services: Mapping[str, ServiceDeclaration]) -> None:
    """Adds `db` and its `upgrade` action to the `mesh` parser."""
    db = commands.add_parser("db", help="manage the database schema")
    actions = db.add_subparsers(required=True, metavar="ACTION")
    upgrade = actions.add_parser("upgrade", help="upgrade MESH_DATABASE_URL to the latest schema")
    folders = [s.migrations for s in services.values() if s.migrations is not None]
    upgrade.set_defaults(run=lambda args, settings: asyncio.run(_upgrade(settings, folders)))


async def _upgrade(settings: Settings, folders: list[Path]) -> int:
    configure_logging(
        service="mesh", version=VERSION, log_format=settings.log_format, level="warning"
    )
    from core.data.database import Database, redacted  # SQLAlchemy only for this command

    database = Database(settings.database(), migrations=folders, migrate=True)
    try:
        await database.start()
    except Exception as exc:
        return output.fail(f"upgrade of {redacted(database.url)} failed: {exc}")
    await database.stop()
    print(f"{redacted(database.url)} is at the latest schema")
    return 0
