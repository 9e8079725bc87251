"""The projects table and its mapping to `mesh.projects.v1.Project`: all the engine needs."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from core.resources.filtering import FilterField, Kind
from core.resources.resource import Resource, RowLike, standard_columns
from mesh.projects.v1 import projects_pb2
from mesh.projects.v1.projects_pb2 import Project
from servers.projects.domain import WRITABLE, validate

DESCRIPTOR = projects_pb2.DESCRIPTOR.services_by_name["ProjectService"]
TYPE_PREFIX = "PROJECT_TYPE_"

metadata = sa.MetaData()

# Mirrors servers/projects/migrations/0001_projects.py.
projects = sa.Table(
    "projects",
    metadata,
    *standard_columns(),
    sa.Column("display_name", sa.String(200), nullable=False),
    sa.Column("description", sa.Text(), nullable=False),
    sa.Column("project_type", sa.String(32), nullable=False),
    sa.Column("owner", sa.String(200), nullable=False),
    sa.Column("labels", sa.JSON().with_variant(postgresql.JSONB(), "postgresql"), nullable=False),
)

# Stored without the proto prefix, so filters read `project_type = MUSIC_CLIP`.
TYPES = [
    v.name.removeprefix(TYPE_PREFIX) for v in Project.ProjectType.DESCRIPTOR.values if v.number
]
_state = sa.case((projects.c.delete_time.is_(None), "ACTIVE"), else_="DELETED")


def to_columns(project: Project) -> dict[str, Any]:
    return {
        "display_name": project.display_name,
        "description": project.description,
        "project_type": Project.ProjectType.Name(project.project_type).removeprefix(TYPE_PREFIX),
        "owner": project.owner,
        "labels": dict(project.labels),
    }


def to_message(row: RowLike) -> Project:
    return Project(
        display_name=row["display_name"],
        description=row["description"],
        project_type=Project.ProjectType.Value(TYPE_PREFIX + row["project_type"]),
        owner=row["owner"],
        labels=row["labels"],
    )


PROJECTS = Resource(
    message=Project,
    collection="projects",
    singular="project",
    table=projects,
    source=DESCRIPTOR.full_name,
    event_prefix="mesh.projects.v1.project",
    writable=WRITABLE,
    to_columns=to_columns,
    to_message=to_message,
    validate=validate,
    filter_fields={
        "display_name": FilterField(projects.c.display_name, Kind.STRING),
        "description": FilterField(projects.c.description, Kind.STRING),
        "project_type": FilterField.enum(projects.c.project_type, TYPES, prefix=TYPE_PREFIX),
        "owner": FilterField(projects.c.owner, Kind.STRING),
        "state": FilterField.enum(_state, ["ACTIVE", "DELETED"], prefix="STATE_"),
        "create_time": FilterField(projects.c.create_time, Kind.TIMESTAMP),
        "update_time": FilterField(projects.c.update_time, Kind.TIMESTAMP),
        "delete_time": FilterField(projects.c.delete_time, Kind.TIMESTAMP),
        "labels": FilterField(projects.c.labels, Kind.MAP),
    },
    order_fields={
        name: name
        for name in ("display_name", "owner", "project_type", "create_time", "update_time")
    },
    owner_field="owner",  # the caller's subject on create; non-admins see only their own
)
