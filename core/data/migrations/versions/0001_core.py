"""core: the outbox, the request-id store and the service secrets.

Revision ID: core_0001
Revises:
Create Date: 2026-11-21
"""

from __future__ import annotations

import secrets

import sqlalchemy as sa
from alembic import op

revision = "core_0001"
down_revision = None
branch_labels = ("core",)
depends_on = None


def upgrade() -> None:
    op.create_table(
        "mesh_outbox",
        sa.Column(
            "position", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True
        ),
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
    op.create_index("mesh_outbox_unsent", "mesh_outbox", ["sent_time", "position"])
    op.create_table(
        "mesh_request_ids",
        sa.Column("request_id", sa.String(64), primary_key=True),
        sa.Column("method", sa.String(200), nullable=False),
        sa.Column("request_hash", sa.String(64), nullable=False),
        sa.Column("response", sa.LargeBinary(), nullable=False),
        sa.Column("expire_time", sa.DateTime(timezone=True), nullable=False, index=True),
    )
    secrets_table = op.create_table(
        "mesh_secrets",
        sa.Column("name", sa.String(100), primary_key=True),
        sa.Column("value", sa.String(200), nullable=False),
    )
    # Shared by every instance on this database, so page tokens work across replicas.
    op.bulk_insert(secrets_table, [{"name": "page_token", "value": secrets.token_hex(32)}])


def downgrade() -> None:
    op.drop_table("mesh_secrets")
    op.drop_table("mesh_request_ids")
    op.drop_index("mesh_outbox_unsent", "mesh_outbox")
    op.drop_table("mesh_outbox")
