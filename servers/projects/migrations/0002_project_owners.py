"""projects: an index for the lists of one owner.

A caller without the admin scope lists and counts only the projects it owns
(core.resources.ownership), so every one of its lists filters by owner and, by default,
goes in create_time order.

Revision ID: projects_0002
Revises: projects_0001
Create Date: 2026-12-07
"""

from __future__ import annotations

from alembic import op

revision = "projects_0002"
down_revision = "projects_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("projects_owner_create_time", "projects", ["owner", "create_time", "id"])


def downgrade() -> None:
    op.drop_index("projects_owner_create_time", "projects")
