"""AIP-203 field behaviour, read from the contract: every resource inherits it."""

from __future__ import annotations

import pytest
from google.protobuf.field_mask_pb2 import FieldMask

from core.errors import InvalidArgumentError
from core.resources.resource import mask_paths
from mesh.projects.v1.projects_pb2 import Project
from servers.projects.resource import PROJECTS


def test_output_only_and_immutable_come_from_the_annotations() -> None:
    assert PROJECTS.immutable == {"project_type"}
    assert PROJECTS.output_only == {
        *("name", "state", "create_time", "update_time", "delete_time", "purge_time", "etag")
    }


def paths(message: Project, *mask: str) -> list[str]:
    r = PROJECTS
    given = FieldMask(paths=mask) if mask else None
    return mask_paths(
        message, given, writable=r.writable, output_only=r.output_only, immutable=r.immutable
    )


def test_output_only_paths_are_dropped_and_unknown_ones_refused() -> None:
    assert paths(Project(), "description", "etag", "create_time") == ["description"]
    with pytest.raises(InvalidArgumentError) as caught:
        paths(Project(), "description", "nonsense")
    assert caught.value.reason == "INVALID_UPDATE_MASK"


def test_a_star_mask_keeps_an_immutable_field_it_does_not_set() -> None:
    writable = set(PROJECTS.writable)
    assert set(paths(Project(display_name="x"), "*")) == writable - {"project_type"}
    assert set(paths(Project(project_type=Project.PROJECT_TYPE_CUSTOM), "*")) == writable
