"""projects: the projects table.

Revision ID: projects_0001
Revises:
Create Date: 2026-11-21
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "projects_0001"
down_revision = None
branch_labels = ("projects",)
depends_on = "core_0001"


def upgrade() -> None:
    op.create_table(
        "projects",
        sa.Column("id", sa.String(63), primary_key=True),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("update_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("delete_time", sa.DateTime(timezone=True), nullable=True),
        sa.Column("purge_time", sa.DateTime(timezone=True), nullable=True),
        sa.Column("display_name", sa.String(200), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("project_type", sa.String(32), nullable=False),
        sa.Column("owner", sa.String(200), nullable=False),
        sa.Column(
            "labels", sa.JSON().with_variant(postgresql.JSONB(), "postgresql"), nullable=False
        ),
    )
    op.create_index("projects_create_time", "projects", ["create_time", "id"])
    op.create_index("projects_purge_time", "projects", ["purge_time"])


def downgrade() -> None:
    op.drop_table("projects")
