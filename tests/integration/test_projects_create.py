"""CreateProject through the typed client, on SQLite and PostgreSQL."""

from __future__ import annotations

import uuid

import pytest
from structlog.testing import capture_logs

from clients.projects import ProjectsClient
from core.errors import AlreadyExistsError, InvalidArgumentError, NotFoundError
from mesh.projects.v1.projects_pb2 import Project
from tests.conftest import Running
from tests.integration._projects import (
    a_project,
    attempt,
    create_request,
    event_types,
    outcome,
    project_rows,
    raw_stub,
    violated_fields,
)


async def test_a_valid_project_is_created_active_with_name_etag_and_times(
    projects: ProjectsClient,
) -> None:
    created = await projects.create_project(a_project(), project_id="demo-reel")

    assert created.name == "projects/demo-reel"
    assert created.display_name == "Demo reel"
    assert created.description == "a first cut"
    assert created.project_type == Project.PROJECT_TYPE_MUSIC_CLIP
    assert created.owner == "users/alice"
    assert dict(created.labels) == {"env": "prod"}
    assert created.state == Project.STATE_ACTIVE
    assert created.etag
    assert created.HasField("create_time")
    assert created.update_time == created.create_time
    assert not created.HasField("delete_time")
    assert not created.HasField("purge_time")
    assert await projects.get_project("projects/demo-reel") == created


async def test_output_only_fields_in_a_create_are_ignored(projects: ProjectsClient) -> None:
    sent = a_project(name="projects/other", state=Project.STATE_DELETED, etag="made-up")

    created = await projects.create_project(sent, project_id="real-id")

    assert created.name == "projects/real-id"
    assert created.state == Project.STATE_ACTIVE
    assert created.etag != "made-up"


MALFORMED_IDS = [
    "abc",
    "Demo-reel",
    "demo-reel-",
    "a" * 64,
    "1demo",
    "demo_reel",
    "demo reel",
    "démo",
]


async def test_a_malformed_project_id_is_invalid_naming_project_id(
    projects_server: Running, projects: ProjectsClient
) -> None:
    for project_id in MALFORMED_IDS:
        with pytest.raises(InvalidArgumentError) as caught:
            await projects.create_project(a_project(), project_id=project_id)
        assert violated_fields(caught.value) == ["project_id"], project_id

    assert await project_rows(projects_server) == 0


async def test_project_ids_at_the_edges_of_the_rules_are_accepted(
    projects: ProjectsClient,
) -> None:
    for project_id in ["abcd", "a" * 63, "a-1-b", "demo-2026"]:
        created = await projects.create_project(a_project(), project_id=project_id)
        assert created.name == f"projects/{project_id}"


async def test_a_bad_project_id_is_reported_together_with_bad_fields(
    projects: ProjectsClient,
) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        await projects.create_project(a_project(display_name=""), project_id="Bad_Id")

    assert sorted(violated_fields(caught.value)) == ["project.display_name", "project_id"]


async def test_each_missing_required_field_is_its_own_violation(
    projects_server: Running, projects: ProjectsClient
) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        await projects.create_project(Project(description="nothing else"), project_id="empty")

    assert caught.value.reason == "INVALID_PROJECT"
    assert sorted(violated_fields(caught.value)) == [  # the owner defaults to the caller
        "project.display_name",
        "project.project_type",
    ]
    assert await project_rows(projects_server) == 0


INVALID_FIELDS: list[tuple[dict[str, object], str]] = [
    ({"display_name": "   "}, "project.display_name"),
    ({"display_name": "x" * 201}, "project.display_name"),
    ({"description": "x" * 4001}, "project.description"),
    ({"owner": "x" * 201}, "project.owner"),
    ({"project_type": 99}, "project.project_type"),
    ({"labels": {"Env": "prod"}}, "project.labels.Env"),
    ({"labels": {"1env": "prod"}}, "project.labels.1env"),
    ({"labels": {"": "prod"}}, "project.labels."),
    ({"labels": {"e" * 64: "x"}}, f"project.labels.{'e' * 64}"),
    ({"labels": {"env": "x" * 64}}, "project.labels.env"),
    ({"labels": {f"k{i}": "v" for i in range(65)}}, "project.labels"),
]


async def test_an_invalid_field_is_a_violation_naming_it(
    projects_server: Running, projects: ProjectsClient
) -> None:
    for overrides, field in INVALID_FIELDS:
        with pytest.raises(InvalidArgumentError) as caught:
            await projects.create_project(a_project(**overrides), project_id="bad-field")
        assert caught.value.reason == "INVALID_PROJECT"
        assert violated_fields(caught.value) == [field], overrides

    assert await project_rows(projects_server) == 0
    assert await event_types(projects_server) == []


async def test_labels_at_the_limits_are_accepted(projects: ProjectsClient) -> None:
    labels = {f"k{i}": "v" * 63 for i in range(63)} | {"a" + "_-9" * 20 + "z": ""}

    created = await projects.create_project(a_project(labels=labels), project_id="labelled")

    assert dict(created.labels) == labels
    assert dict((await projects.get_project(created.name)).labels) == labels


async def test_fields_at_their_maximum_lengths_round_trip(projects: ProjectsClient) -> None:
    project = a_project(display_name="é" * 200, description="☕" * 4000, owner="o" * 200)

    created = await projects.create_project(project, project_id="long-fields")

    fetched = await projects.get_project(created.name)
    assert (fetched.display_name, fetched.description, fetched.owner) == (
        "é" * 200,
        "☕" * 4000,
        "o" * 200,
    )


async def test_a_control_character_in_a_field_is_never_an_internal_error(
    projects: ProjectsClient,
) -> None:
    """Either stored as sent or INVALID_ARGUMENT naming the field; PostgreSQL text has no NUL."""
    project = a_project(display_name="nul\x00here", labels={"env": "a\x00b"})

    with capture_logs():  # an internal error's traceback is slow to render
        result = await attempt(projects.create_project(project, project_id="nul-char"))

    if isinstance(result, Project):
        assert (await projects.get_project(result.name)).display_name == "nul\x00here"
    else:
        assert isinstance(result, InvalidArgumentError), f"{type(result).__name__}: {result}"
        assert violated_fields(result)
        assert set(violated_fields(result)) <= {"project.display_name", "project.labels.env"}


async def test_a_taken_project_id_already_exists(
    projects_server: Running, projects: ProjectsClient
) -> None:
    await projects.create_project(a_project(), project_id="taken")

    with pytest.raises(AlreadyExistsError) as caught:
        await projects.create_project(a_project(display_name="Other"), project_id="taken")

    assert caught.value.reason == "PROJECT_ALREADY_EXISTS"
    assert caught.value.metadata == {"resource": "projects/taken"}
    assert (await projects.get_project("projects/taken")).display_name == "Demo reel"
    assert await event_types(projects_server) == ["created"]


async def test_the_id_of_a_soft_deleted_project_is_still_taken(projects: ProjectsClient) -> None:
    created = await projects.create_project(a_project(), project_id="gone")
    await projects.delete_project(created.name)

    with pytest.raises(AlreadyExistsError) as caught:
        await projects.create_project(a_project(), project_id="gone")

    assert caught.value.reason == "PROJECT_ALREADY_EXISTS"


async def test_the_server_chooses_a_valid_id_when_none_is_given(projects: ProjectsClient) -> None:
    first = await projects.create_project(a_project())
    second = await projects.create_project(a_project())

    assert first.name != second.name
    for created in (first, second):
        assert created.name.startswith("projects/")
        await projects.get_project(created.name)  # a valid, readable name


async def test_a_created_project_replaces_a_remembered_miss(projects: ProjectsClient) -> None:
    with pytest.raises(NotFoundError):
        await projects.get_project("projects/soon")

    created = await projects.create_project(a_project(), project_id="soon")

    assert await projects.get_project("projects/soon") == created


# -- validate_only ---------------------------------------------------------------------------


async def test_validate_only_returns_the_project_and_writes_nothing(
    projects_server: Running, projects: ProjectsClient
) -> None:
    would_be = await projects.create_project(a_project(), project_id="dry-run", validate_only=True)

    assert would_be.name == "projects/dry-run"
    assert would_be.display_name == "Demo reel"
    assert would_be.state == Project.STATE_ACTIVE
    assert await project_rows(projects_server) == 0
    assert await event_types(projects_server) == []
    with pytest.raises(NotFoundError):
        await projects.get_project("projects/dry-run")
    created = await projects.create_project(a_project(), project_id="dry-run")
    assert created.name == "projects/dry-run"


async def test_validate_only_reports_a_taken_id_and_invalid_fields(
    projects: ProjectsClient,
) -> None:
    await projects.create_project(a_project(), project_id="taken")

    with pytest.raises(AlreadyExistsError) as taken:
        await projects.create_project(a_project(), project_id="taken", validate_only=True)
    with pytest.raises(InvalidArgumentError) as invalid:
        await projects.create_project(
            a_project(display_name=""), project_id="dry-run", validate_only=True
        )

    assert taken.value.reason == "PROJECT_ALREADY_EXISTS"
    assert violated_fields(invalid.value) == ["project.display_name"]


async def test_validate_only_rejects_a_malformed_request_id(projects: ProjectsClient) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        await projects.create_project(
            a_project(), project_id="dry-run", request_id="not-a-uuid", validate_only=True
        )

    assert violated_fields(caught.value) == ["request_id"]


# -- request ids ------------------------------------------------------------------------------


async def test_a_retry_with_the_same_request_id_returns_the_first_response(
    projects_server: Running, projects: ProjectsClient
) -> None:
    request_id = str(uuid.uuid4())
    first = await projects.create_project(a_project(), project_id="once", request_id=request_id)

    again = await projects.create_project(a_project(), project_id="once", request_id=request_id)

    assert again == first
    assert await project_rows(projects_server) == 1
    assert await event_types(projects_server) == ["created"]


async def test_a_retry_without_an_id_gets_the_first_response_for_a_server_chosen_id(
    projects_server: Running, projects: ProjectsClient
) -> None:
    request_id = str(uuid.uuid4())
    first = await projects.create_project(a_project(), request_id=request_id)

    again = await projects.create_project(a_project(), request_id=request_id)

    assert again.name == first.name
    assert await project_rows(projects_server) == 1


async def test_a_request_id_is_a_uuid_whatever_its_letter_case(
    projects_server: Running, projects: ProjectsClient
) -> None:
    request_id = str(uuid.uuid4())
    first = await projects.create_project(a_project(), project_id="once", request_id=request_id)

    again = await attempt(
        projects.create_project(a_project(), project_id="once", request_id=request_id.upper())
    )

    assert again == first
    assert await project_rows(projects_server) == 1


async def test_a_request_id_reused_with_another_body_is_rejected(
    projects_server: Running, projects: ProjectsClient
) -> None:
    request_id = str(uuid.uuid4())
    await projects.create_project(a_project(), project_id="first", request_id=request_id)

    with pytest.raises(InvalidArgumentError) as caught:
        await projects.create_project(
            a_project(display_name="Changed"), project_id="first", request_id=request_id
        )

    assert caught.value.reason == "REQUEST_ID_REUSED"
    assert violated_fields(caught.value) == ["request_id"]
    assert (await projects.get_project("projects/first")).display_name == "Demo reel"
    assert await event_types(projects_server) == ["created"]


async def test_a_request_id_of_a_create_cannot_be_reused_for_an_update(
    projects: ProjectsClient,
) -> None:
    request_id = str(uuid.uuid4())
    created = await projects.create_project(a_project(), project_id="shared", request_id=request_id)

    with pytest.raises(InvalidArgumentError) as caught:
        await projects.update_project(
            Project(name=created.name, display_name="Changed"), request_id=request_id
        )

    assert caught.value.reason == "REQUEST_ID_REUSED"


async def test_a_malformed_request_id_is_invalid(
    projects_server: Running, projects: ProjectsClient
) -> None:
    for request_id in ["not-a-uuid", "1234", "g" * 32, " ", str(uuid.uuid4()) + "0"]:
        with pytest.raises(InvalidArgumentError) as caught:
            await projects.create_project(a_project(), project_id="bad-rid", request_id=request_id)
        assert caught.value.reason == "INVALID_REQUEST_ID", request_id
        assert violated_fields(caught.value) == ["request_id"]

    assert await project_rows(projects_server) == 0


async def test_a_failed_create_does_not_consume_its_request_id(
    projects_server: Running, projects: ProjectsClient
) -> None:
    await projects.create_project(a_project(), project_id="taken")
    request_id = str(uuid.uuid4())
    with pytest.raises(AlreadyExistsError):
        await projects.create_project(a_project(), project_id="taken", request_id=request_id)

    with pytest.raises(AlreadyExistsError):  # the retry runs again, not a stored answer
        await projects.create_project(a_project(), project_id="taken", request_id=request_id)

    assert await project_rows(projects_server) == 1


async def test_a_create_without_a_request_id_writes_once_and_duplicates_already_exist(
    projects_server: Running,
) -> None:
    request = create_request(project_id="no-rid")
    async with raw_stub(projects_server) as stub:
        created = await stub.CreateProject(request, timeout=10)
        again = await outcome(stub.CreateProject(request, timeout=10))

    assert created.project.name == "projects/no-rid"
    assert isinstance(again, AlreadyExistsError)
    assert await event_types(projects_server) == ["created"]
