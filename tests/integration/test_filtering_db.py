"""The same filters select the same rows on a real SQLite file and a real PostgreSQL."""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
import pytest_asyncio
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from core.resources.filtering import FilterField, Kind, compile_filter
from core.resources.ordering import parse_order_by

pytestmark = pytest.mark.asyncio(loop_scope="module")

POSTGRES_URL = os.environ.get(
    "MESH_TEST_DATABASE_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
)
PROJECT_TYPES = ["MUSIC_CLIP", "VIDEO_EDIT", "AUDIO_EDIT", "IMAGE_EDIT", "CUSTOM"]
ALL = set(range(1, 11))
ACTIVE = ALL - {3, 7}


def make_table(schema: str | None) -> sa.Table:
    return sa.Table(
        "projects",
        sa.MetaData(schema=schema),
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("display_name", sa.String(200), nullable=False),
        sa.Column("description", sa.String(2000)),
        sa.Column("project_type", sa.String(20), nullable=False),
        sa.Column("owner", sa.String(200), nullable=False),
        sa.Column("state", sa.String(10), nullable=False),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("update_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("delete_time", sa.DateTime(timezone=True)),
        sa.Column("labels", sa.JSON().with_variant(postgresql.JSONB(), "postgresql")),
        sa.Column("revision", sa.Integer, nullable=False),
        sa.Column("score", sa.Float, nullable=False),
        sa.Column("starred", sa.Boolean, nullable=False),
    )


def fields_for(table: sa.Table) -> dict[str, FilterField]:
    c = table.c
    return {
        "display_name": FilterField(c.display_name, Kind.STRING),
        "description": FilterField(c.description, Kind.STRING),
        "project_type": FilterField.enum(c.project_type, PROJECT_TYPES),
        "owner": FilterField(c.owner, Kind.STRING),
        "state": FilterField.enum(c.state, ["ACTIVE", "DELETED"]),
        "create_time": FilterField(c.create_time, Kind.TIMESTAMP),
        "update_time": FilterField(c.update_time, Kind.TIMESTAMP),
        "delete_time": FilterField(c.delete_time, Kind.TIMESTAMP),
        "labels": FilterField(c.labels, Kind.MAP),
        "revision": FilterField(c.revision, Kind.INT),
        "score": FilterField(c.score, Kind.FLOAT),
        "starred": FilterField(c.starred, Kind.BOOL),
    }


# id: display_name, description, project_type, owner, deleted in month, labels
SAMPLES: dict[int, tuple[str, str | None, str, str, int | None, dict[str, str]]] = {
    1: ("Demo reel", "first", "MUSIC_CLIP", "alice", None, {"env": "prod", "team": "a"}),
    2: ("demo cut", None, "VIDEO_EDIT", "bob", None, {"env": "dev"}),
    3: ("Demo_1", "", "AUDIO_EDIT", "alice", 6, {}),
    4: ("Demo%1", None, "IMAGE_EDIT", "carol", None, {"env": "prod", "canary": "true"}),
    5: ("Demolition", 'has "quotes"', "CUSTOM", "bob", None, {"team": "b"}),
    6: ("It's a trap'; DROP TABLE x; --", None, "MUSIC_CLIP", "mallory", None, {"env": "'; DROP"}),
    7: ("Zebra", None, "VIDEO_EDIT", "alice", 8, {"team": "a"}),
    8: ("café ☕", None, "AUDIO_EDIT", "dave", None, {"lang": "fr"}),
    9: ("Demo/slash", None, "MUSIC_CLIP", "carol", None, {"env": "staging", "team-2": "x"}),
    10: ("DemoX", None, "IMAGE_EDIT", "eve", None, {}),
}


def sample_rows() -> list[dict[str, Any]]:
    rows = []
    for i, (name, description, kind, owner, deleted, labels) in SAMPLES.items():
        created = datetime(2024, i, 1, tzinfo=UTC)
        rows.append(
            {
                "id": i,
                "display_name": name,
                "description": description,
                "project_type": kind,
                "owner": owner,
                "state": "DELETED" if deleted else "ACTIVE",
                "create_time": created,
                "update_time": created,
                "delete_time": datetime(2024, deleted, 1, tzinfo=UTC) if deleted else None,
                "labels": labels,
                "revision": i,
                "score": i - 0.5,
                "starred": i in {1, 4, 7, 10},
            }
        )
    return rows


@pytest_asyncio.fixture(scope="module", loop_scope="module", params=["sqlite", "postgresql"])
async def db(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[tuple[AsyncEngine, sa.Table]]:
    """The sample table in a fresh SQLite file, or in a fresh PostgreSQL schema."""
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('filtering') / 'filtering.db'}"
        schema = None
    else:
        url, schema = POSTGRES_URL, f"test_filtering_{secrets.token_hex(6)}"
    engine = create_async_engine(url)
    table = make_table(schema)
    try:
        async with engine.begin() as conn:
            if schema is not None:
                await conn.execute(sa.schema.CreateSchema(schema))
            await conn.run_sync(table.metadata.create_all)
            await conn.execute(table.insert(), sample_rows())
        yield engine, table
    finally:
        if schema is not None:
            async with engine.begin() as conn:
                await conn.execute(sa.schema.DropSchema(schema, cascade=True))
        await engine.dispose()


async def select_ids(db: tuple[AsyncEngine, sa.Table], text: str) -> set[int]:
    engine, table = db
    statement = sa.select(table.c.id).where(compile_filter(text, fields_for(table)))
    async with engine.connect() as conn:
        return set((await conn.scalars(statement)).all())


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", ALL),
        ("state = ACTIVE", ACTIVE),
        ('state = "DELETED"', {3, 7}),
        ("-state = DELETED", ACTIVE),
        ("NOT state = DELETED", ACTIVE),
        ('project_type = MUSIC_CLIP OR project_type = "VIDEO_EDIT"', {1, 2, 6, 7, 9}),
        ("owner = alice state = ACTIVE", {1}),
        ("owner = alice OR owner = bob state = ACTIVE", {1, 2, 5}),
        ("owner = alice OR owner = bob AND project_type = VIDEO_EDIT", {2, 7}),
        ("state = ACTIVE AND (owner = carol OR labels.env = prod)", {1, 4, 9}),
        ('owner >= "d"', {6, 8, 10}),
        ('display_name = "Demo reel"', {1}),
        ('display_name = "Demo*"', {1, 3, 4, 5, 9, 10}),
        ('display_name = "demo*"', {2}),
        ('display_name = "Demo_*"', {3}),
        ('display_name = "Demo%*"', {4}),
        ('display_name = "Demo/*"', {9}),
        ('display_name != "Demo*"', {2, 6, 7, 8}),
        ("display_name = \"It's a trap'; DROP TABLE x; --\"", {6}),
        ("display_name = 'It\\'s a trap\\'; DROP TABLE x; --'", {6}),
        ('display_name = "café ☕"', {8}),
        ("description:*", {1, 5}),
        ('description = "has \\"quotes\\""', {5}),
        ("delete_time:*", {3, 7}),
        ("NOT delete_time:*", ACTIVE),
        ('create_time >= "2024-05-01T00:00:00Z" create_time < "2024-08-01T00:00:00Z"', {5, 6, 7}),
        ('create_time < "2024-03-01T01:00:00+01:00"', {1, 2}),
        ('create_time <= "2024-03-01T01:00:00+01:00"', {1, 2, 3}),
        ('create_time = "2024-04-01T00:00:00.000Z"', {4}),
        ('delete_time > "2024-07-01T00:00:00Z"', {7}),
        ("labels.env = prod", {1, 4}),
        ('labels.env != "prod"', {2, 6, 9}),
        ('labels.env = "st*"', {9}),
        ('labels.env = "\'; DROP"', {6}),
        ("labels:env", {1, 2, 4, 6, 9}),
        ("labels.env:*", {1, 2, 4, 6, 9}),
        ("-labels:env", {3, 5, 7, 8, 10}),
        ("labels:team-2", {9}),
        ('labels:canary labels.env = "prod"', {4}),
        ("labels.team = a OR labels.lang = fr", {1, 7, 8}),
        ("revision > 8", {9, 10}),
        ("revision != 1 revision <= 3", {2, 3}),
        ("score < 2", {1, 2}),
        ("score >= 9.5", {10}),
        ("starred = true", {1, 4, 7, 10}),
        ("starred = false state = DELETED", {3}),
    ],
)
async def test_filter_selects_the_expected_rows(
    db: tuple[AsyncEngine, sa.Table], text: str, expected: set[int]
) -> None:
    assert await select_ids(db, text) == expected


async def test_order_by_sorts_rows(db: tuple[AsyncEngine, sa.Table]) -> None:
    engine, table = db
    allowed = {"owner": table.c.owner, "create_time": table.c.create_time}
    ordering = parse_order_by("owner, create_time desc", allowed)
    statement = sa.select(table.c.id).order_by(*ordering.clauses)
    async with engine.connect() as conn:
        ids = list((await conn.scalars(statement)).all())
    assert ids == [7, 3, 1, 5, 2, 9, 4, 8, 10, 6]
