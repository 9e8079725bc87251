"""The transactional outbox: every committed change writes its event in the same transaction.

Rows are written here; delivering them is the job of the events system's relay
(`core.events.relay`). A rolled-back transaction leaves no row, a committed one exactly
one. An event written inside a span carries its W3C `traceparent` in its attributes, so
whoever handles it can link back to the call that made the change.

Usage::

    async with db.transaction() as tx:
        await tx.conn.execute(insert(projects).values(...))
        await emit(tx, type="mesh.projects.v1.project.created", source=SOURCE,
                   subject="projects/demo", data=project)
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from google.protobuf import any_pb2
from google.protobuf.message import Message
from opentelemetry import propagate, trace

from core.data.transaction import Transaction

metadata = sa.MetaData()

# Mirrors core/data/migrations/versions/0001_core.py; queries use this, migrations own the DDL.
outbox = sa.Table(
    "mesh_outbox",
    metadata,
    sa.Column("position", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
    sa.Column("event_id", sa.String(64), nullable=False, unique=True),
    sa.Column("type", sa.String(200), nullable=False),
    sa.Column("source", sa.String(200), nullable=False),
    sa.Column("subject", sa.String(500), nullable=False),
    sa.Column("time", sa.DateTime(timezone=True), nullable=False),
    sa.Column("data_version", sa.String(32), nullable=False),
    sa.Column("data", sa.LargeBinary(), nullable=False),
    sa.Column("attributes", sa.JSON(), nullable=False),
    sa.Column("sent_time", sa.DateTime(timezone=True), nullable=True),
)

_INSERT = outbox.insert()


def event_row(
    *,
    type: str,
    source: str,
    subject: str,
    data: Message,
    data_version: str = "1",
    attributes: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The outbox row of one event, with a new event id and the current trace context."""
    packed = any_pb2.Any()
    packed.Pack(data)
    attributes = dict(attributes or {})
    if "traceparent" not in attributes and trace.get_current_span().get_span_context().is_valid:
        propagate.inject(attributes)
    return {
        "event_id": str(uuid.uuid4()),
        "type": type,
        "source": source,
        "subject": subject,
        "time": datetime.now(UTC),
        "data_version": data_version,
        "data": packed.SerializeToString(),
        "attributes": attributes,
    }


async def emit(tx: Transaction, **event: Any) -> str:
    """Writes one event (the arguments of `event_row`) into the outbox inside `tx`.

    Returns its event id.
    """
    row = event_row(**event)
    await tx.conn.execute(_INSERT, row)
    return str(row["event_id"])


def insert_with_event(table: sa.Table) -> sa.Insert:
    """One statement that inserts a row of `table` and, only if that succeeds, its event.

    Parameters: the row's columns by name, and the event row's with an `event_` prefix
    (see `with_event`). PostgreSQL runs a data-modifying WITH as one atomic statement, so
    a single autocommit round trip replaces BEGIN, two INSERTs and COMMIT. Build it once:
    SQLAlchemy then compiles it once.
    """
    row = {c.name: sa.bindparam(c.name, type_=c.type) for c in table.c}
    created = table.insert().values(row).returning(*table.primary_key.columns).cte("created")
    event = [sa.bindparam(f"event_{c.name}", type_=c.type).label(c.name) for c in _EVENT_COLUMNS]
    names = [c.name for c in _EVENT_COLUMNS]
    return (
        outbox.insert().from_select(names, sa.select(*event).select_from(created)).add_cte(created)
    )


def with_event(row: dict[str, Any], event: dict[str, Any]) -> dict[str, Any]:
    """The parameters of `insert_with_event` for this row and event row."""
    return {**row, **{f"event_{name}": value for name, value in event.items()}}


_EVENT_COLUMNS = [c for c in outbox.c if c.name not in ("position", "sent_time")]
