"""core: the audit log of resource writes.

Revision ID: core_0003
Revises: core_0002
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "core_0003"
down_revision = "core_0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "mesh_audit_records",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
        sa.Column("time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("principal", sa.String(500), nullable=False),
        sa.Column("method", sa.String(200), nullable=False),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("request_id", sa.String(64), nullable=False),
        sa.Column("resource", sa.String(500), nullable=False),
        sa.Column("changes", sa.JSON(), nullable=False),
    )
    # Reads filter by resource or principal and go newest first; purges go by time.
    op.create_index("mesh_audit_records_resource", "mesh_audit_records", ["resource", "id"])
    op.create_index("mesh_audit_records_principal", "mesh_audit_records", ["principal", "id"])
    op.create_index("mesh_audit_records_time", "mesh_audit_records", ["time"])


def downgrade() -> None:
    op.drop_table("mesh_audit_records")
