"""The rules of a project: which fields are required and how long they may be."""

from __future__ import annotations

import re

from core.errors import FieldViolation
from core.resources.validation import text_violations
from mesh.projects.v1.projects_pb2 import Project

MAX_DISPLAY_NAME = 200
MAX_DESCRIPTION = 4000
MAX_OWNER = 200
MAX_LABELS = 64
LABEL_KEY = re.compile(r"[a-z][a-z0-9_-]{0,62}")
MAX_LABEL_VALUE = 63

# The fields a client may write; everything else is output only.
WRITABLE = ("display_name", "description", "project_type", "owner", "labels")


def validate(project: Project) -> list[FieldViolation]:
    """Every problem with a project's writable fields, each naming its field."""
    violations = [
        *text_violations(
            "display_name", project.display_name, max_length=MAX_DISPLAY_NAME, required=True
        ),
        *text_violations(
            "description", project.description, max_length=MAX_DESCRIPTION, multiline=True
        ),
        *text_violations("owner", project.owner, max_length=MAX_OWNER, required=True),
    ]
    if project.project_type == Project.PROJECT_TYPE_UNSPECIFIED:
        violations.append(FieldViolation("project_type", "is required"))
    elif project.project_type not in Project.ProjectType.values():
        violations.append(FieldViolation("project_type", "is not a known project type"))
    return violations + _label_violations(project)


def _label_violations(project: Project) -> list[FieldViolation]:
    if len(project.labels) > MAX_LABELS:
        return [FieldViolation("labels", f"at most {MAX_LABELS} labels")]
    violations = []
    for key, value in sorted(project.labels.items()):
        if not LABEL_KEY.fullmatch(key):
            violations.append(
                FieldViolation(
                    f"labels.{key}", "keys are 1-63 of [a-z0-9_-], starting with a letter"
                )
            )
        else:
            violations += text_violations(f"labels.{key}", value, max_length=MAX_LABEL_VALUE)
    return violations
