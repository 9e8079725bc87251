"""Errors stay small: what an error echoes of the caller's input is clipped, so a huge
value gets its INVALID_ARGUMENT (not a RESOURCE_EXHAUSTED from trailers over the client's
metadata limit)."""

from __future__ import annotations

import pytest

from clients.projects import ProjectsClient
from core.calls.status import MAX_MESSAGE_CHARS, MAX_VALUE_CHARS
from core.errors import InvalidArgumentError, NotFoundError
from tests.integration._projects import a_project

HUGE = "x" * 200_000


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("project_id", HUGE),
        ("display_name", HUGE),
        ("labels", {HUGE[:60_000]: "v"}),
        ("labels", {f"k{i}-{'y' * 100}": "v" for i in range(500)}),
    ],
    ids=["project_id", "display_name", "label_key", "many_labels"],
)
async def test_a_huge_value_is_invalid_argument_with_a_small_error(
    projects: ProjectsClient, field: str, value: object
) -> None:
    if field == "project_id":
        call = projects.create_project(a_project(), project_id=str(value))
    else:
        call = projects.create_project(a_project(**{field: value}))
    with pytest.raises(InvalidArgumentError) as raised:
        await call
    error = raised.value
    assert len(error.message) <= MAX_MESSAGE_CHARS
    assert all(len(v) <= MAX_VALUE_CHARS for v in error.metadata.values())
    assert all(len(v.description) <= MAX_VALUE_CHARS for v in error.violations)


async def test_a_huge_name_is_not_found_or_invalid_with_a_small_error(
    projects: ProjectsClient,
) -> None:
    with pytest.raises((InvalidArgumentError, NotFoundError)) as raised:
        await projects.get_project(f"projects/{HUGE}")
    assert len(raised.value.message) <= MAX_MESSAGE_CHARS
