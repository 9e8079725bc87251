"""Secrets that every instance of a service shares, kept in its database (`mesh_secrets`).

Core's first migration creates the table with a random `page_token` secret, so a page
token that one replica signed is accepted by every other replica on the same database.
"""

from __future__ import annotations

import sqlalchemy as sa

from core.data.database import Database
from core.events.outbox import metadata

PAGE_TOKEN = "page_token"

# Mirrors core/data/migrations/versions/0001_core.py.
secrets_table = sa.Table(
    "mesh_secrets",
    metadata,
    sa.Column("name", sa.String(100), primary_key=True),
    sa.Column("value", sa.String(200), nullable=False),
)

_LOOKUP = sa.select(secrets_table.c.value).where(secrets_table.c.name == sa.bindparam("name"))


async def read_secret(database: Database, name: str) -> bytes:
    """The secret called `name` (stored as hex).

    Raises:
        sqlalchemy.exc.NoResultFound: the database has no such secret.
    """
    async with database.connect(autocommit=True) as conn:
        value = (await conn.execute(_LOOKUP, {"name": name})).scalar_one()
    return bytes.fromhex(value)
