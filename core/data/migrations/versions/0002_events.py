"""core: the embedded event store (events, groups, deliveries) and leases.

Revision ID: core_0002
Revises: core_0001
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "core_0002"
down_revision = "core_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "mesh_events",
        sa.Column(
            "position", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True
        ),
        sa.Column("event_id", sa.String(64), nullable=False, unique=True),
        sa.Column("type", sa.String(200), nullable=False),
        sa.Column("subject", sa.String(500), nullable=False),
        sa.Column("time_us", sa.BigInteger(), nullable=False),
        sa.Column("body", sa.LargeBinary(), nullable=False),
    )
    op.create_index("mesh_events_time", "mesh_events", ["time_us"])
    op.create_index("mesh_events_subject", "mesh_events", ["subject", "position"])
    op.create_table(
        "mesh_event_groups",
        sa.Column("name", sa.String(100), primary_key=True),
        sa.Column("types", sa.JSON(), nullable=False),
        sa.Column("subject", sa.String(500), nullable=False),
        sa.Column("cursor", sa.BigInteger(), nullable=False),
    )
    op.create_table(
        "mesh_event_deliveries",
        sa.Column("group_name", sa.String(100), primary_key=True),
        sa.Column("event_id", sa.String(64), primary_key=True),
        sa.Column("position", sa.BigInteger(), nullable=False),
        sa.Column("state", sa.SmallInteger(), nullable=False),
        sa.Column("consumer", sa.String(200), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("due", sa.Float(), nullable=True),
        sa.Column("update_time", sa.Float(), nullable=False),
        sa.Column("errors", sa.JSON(), nullable=False),
    )
    op.create_index("mesh_event_deliveries_due", "mesh_event_deliveries", ["group_name", "due"])
    op.create_index(
        "mesh_event_deliveries_state",
        "mesh_event_deliveries",
        ["group_name", "state", "position"],
    )
    op.create_index("mesh_event_deliveries_event", "mesh_event_deliveries", ["event_id"])
    op.create_table(
        "mesh_leases",
        sa.Column("name", sa.String(100), primary_key=True),
        sa.Column("holder", sa.String(100), nullable=False),
        sa.Column("expire_time", sa.Float(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("mesh_leases")
    op.drop_table("mesh_event_deliveries")
    op.drop_table("mesh_event_groups")
    op.drop_index("mesh_events_subject", "mesh_events")
    op.drop_index("mesh_events_time", "mesh_events")
    op.drop_table("mesh_events")
