"""UpdateProject through the typed client, on SQLite and PostgreSQL."""

from __future__ import annotations

import uuid

import pytest

from clients.projects import ProjectsClient
from core.errors import (
    AbortedError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
)
from mesh.projects.v1.projects_pb2 import Project
from tests.conftest import Running
from tests.integration._projects import (
    a_project,
    event_types,
    project_rows,
    violated_fields,
)

NAME = "projects/demo"


async def test_without_a_mask_only_the_fields_set_are_written(
    projects: ProjectsClient, demo: Project
) -> None:
    updated = await projects.update_project(Project(name=NAME, display_name="Renamed"))

    assert updated.display_name == "Renamed"
    assert (updated.description, updated.owner, dict(updated.labels)) == (
        demo.description,
        demo.owner,
        dict(demo.labels),
    )
    assert updated.project_type == demo.project_type
    assert updated.etag != demo.etag
    assert updated.create_time == demo.create_time
    assert updated.update_time.ToDatetime() >= demo.update_time.ToDatetime()
    assert await projects.get_project(NAME) == updated


async def test_output_only_fields_in_an_update_are_ignored(
    projects: ProjectsClient, demo: Project
) -> None:
    sent = Project(name=NAME, display_name="New", state=Project.STATE_DELETED)
    sent.create_time.FromSeconds(0)
    sent.update_time.FromSeconds(0)

    updated = await projects.update_project(sent)

    assert updated.display_name == "New"
    assert updated.state == Project.STATE_ACTIVE
    assert updated.create_time == demo.create_time
    assert updated.update_time.ToDatetime() >= demo.update_time.ToDatetime()


async def test_an_explicit_mask_writes_only_its_fields(
    projects: ProjectsClient, demo: Project
) -> None:
    sent = Project(name=NAME, display_name="Ignored", description="", owner="users/bob")

    updated = await projects.update_project(sent, update_mask=["description", "owner"])

    assert updated.display_name == demo.display_name
    assert updated.description == ""
    assert updated.owner == "users/bob"


async def test_a_mask_on_labels_replaces_the_whole_map(
    projects: ProjectsClient, demo: Project
) -> None:
    updated = await projects.update_project(
        Project(name=NAME, labels={"team": "core"}), update_mask=["labels"]
    )
    cleared = await projects.update_project(Project(name=NAME), update_mask=["labels"])

    assert dict(updated.labels) == {"team": "core"}
    assert dict(cleared.labels) == {}


async def test_a_star_mask_replaces_every_writable_field(
    projects: ProjectsClient, demo: Project
) -> None:
    sent = Project(name=NAME, display_name="Replaced", owner="users/carol")

    updated = await projects.update_project(sent, update_mask=["*"])

    assert updated.display_name == "Replaced"
    assert updated.description == ""  # omitted, so cleared
    assert dict(updated.labels) == {}
    assert updated.project_type == demo.project_type  # immutable: omitted, so kept
    assert updated.owner == "users/carol"
    assert updated.create_time == demo.create_time


async def test_a_star_mask_with_a_required_field_missing_is_invalid(
    projects: ProjectsClient, demo: Project
) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        await projects.update_project(Project(name=NAME, display_name="Only"), update_mask=["*"])

    assert violated_fields(caught.value) == ["project.owner"]
    assert await projects.get_project(NAME) == demo


async def test_output_only_mask_paths_are_ignored(
    projects_server: Running, projects: ProjectsClient, demo: Project
) -> None:
    """AIP-203: a client may send back a resource as read, with a mask naming every field."""
    sent = Project(name=NAME, display_name="Renamed", state=Project.STATE_DELETED)
    sent.create_time.FromSeconds(0)
    mask = ["display_name", "name", "state", "create_time", "update_time", "etag"]

    updated = await projects.update_project(sent, update_mask=mask)

    assert updated.display_name == "Renamed"
    assert (updated.state, updated.create_time) == (Project.STATE_ACTIVE, demo.create_time)
    assert await event_types(projects_server) == ["created", "updated"]


async def test_unknown_mask_paths_are_invalid_naming_each(
    projects_server: Running, projects: ProjectsClient, demo: Project
) -> None:
    for path in ("nonsense", "labels.env"):
        with pytest.raises(InvalidArgumentError) as caught:
            await projects.update_project(
                Project(name=NAME, display_name="x"), update_mask=["display_name", path]
            )
        assert caught.value.reason == "INVALID_UPDATE_MASK", path
        assert violated_fields(caught.value) == ["update_mask"]
        assert path in caught.value.violations[0].description

    with pytest.raises(InvalidArgumentError) as caught:  # each bad path is its own violation
        await projects.update_project(Project(name=NAME), update_mask=["etag", "bogus", "x"])
    descriptions = [v.description for v in caught.value.violations]
    assert len(descriptions) == 2
    assert "bogus" in descriptions[0]
    assert "'x'" in descriptions[1]
    assert await projects.get_project(NAME) == demo
    assert await event_types(projects_server) == ["created"]


@pytest.mark.parametrize("mask", [None, ["project_type"], ["*"]])
async def test_an_immutable_field_keeps_its_value(
    projects_server: Running, projects: ProjectsClient, demo: Project, mask: list[str] | None
) -> None:
    """project_type is IMMUTABLE in the contract: a new value is refused, naming the field,
    and sending the value it has (a resource sent back as read) is no change."""
    changed = Project(name=NAME, display_name="x", project_type=Project.PROJECT_TYPE_CUSTOM)
    changed.owner = demo.owner

    with pytest.raises(InvalidArgumentError) as caught:
        await projects.update_project(changed, update_mask=mask)

    assert caught.value.reason == "IMMUTABLE_FIELD"
    assert violated_fields(caught.value) == ["project.project_type"]
    assert await projects.get_project(NAME) == demo
    same = Project(name=NAME, display_name="x", owner=demo.owner, project_type=demo.project_type)
    assert (await projects.update_project(same, update_mask=mask)).project_type == demo.project_type
    assert await event_types(projects_server) == ["created", "updated"]


async def test_invalid_values_after_the_mask_is_applied_are_invalid(
    projects: ProjectsClient, demo: Project
) -> None:
    cases: list[tuple[Project, list[str] | None, str]] = [
        (Project(name=NAME), ["display_name"], "project.display_name"),
        (Project(name=NAME, owner="x" * 201), None, "project.owner"),
        (Project(name=NAME, labels={"Bad": "x"}), None, "project.labels.Bad"),
        (Project(name=NAME), ["project_type"], "project.project_type"),
    ]
    for sent, mask, field in cases:
        with pytest.raises(InvalidArgumentError) as caught:
            await projects.update_project(sent, update_mask=mask)
        assert violated_fields(caught.value) == [field]

    assert await projects.get_project(NAME) == demo


async def test_fields_outside_the_mask_are_not_validated(
    projects: ProjectsClient, demo: Project
) -> None:
    sent = Project(name=NAME, display_name="", owner="x" * 500, description="new")

    updated = await projects.update_project(sent, update_mask=["description"])

    assert updated.description == "new"
    assert updated.display_name == demo.display_name


async def test_a_malformed_name_is_invalid_naming_project_name(projects: ProjectsClient) -> None:
    for name in ("", "demo", "projects/Bad", "other/demo"):
        with pytest.raises(InvalidArgumentError) as caught:
            await projects.update_project(Project(name=name, display_name="x"))
        assert violated_fields(caught.value) == ["project.name"], name


# -- etags ------------------------------------------------------------------------------------


async def test_a_stale_etag_is_aborted(
    projects_server: Running, projects: ProjectsClient, demo: Project
) -> None:
    await projects.update_project(Project(name=NAME, display_name="First"))

    with pytest.raises(AbortedError) as caught:
        await projects.update_project(Project(name=NAME, display_name="Second"), etag=demo.etag)

    assert caught.value.reason == "ETAG_MISMATCH"
    assert caught.value.metadata == {"resource": NAME}
    with pytest.raises(AbortedError):
        await projects.update_project(Project(name=NAME, display_name="x"), etag='W/"made-up"')
    assert (await projects.get_project(NAME)).display_name == "First"
    assert await event_types(projects_server) == ["created", "updated"]


async def test_the_current_etag_allows_the_update_and_changes(
    projects: ProjectsClient, demo: Project
) -> None:
    first = await projects.update_project(Project(name=NAME, display_name="One"), etag=demo.etag)
    second = await projects.update_project(Project(name=NAME, display_name="Two"), etag=first.etag)

    assert len({demo.etag, first.etag, second.etag}) == 3
    assert (await projects.get_project(NAME)).etag == second.etag


async def test_a_stale_etag_inside_the_project_is_aborted(
    projects_server: Running, projects: ProjectsClient, demo: Project
) -> None:
    await projects.update_project(Project(name=NAME, display_name="First"))

    with pytest.raises(AbortedError) as caught:
        await projects.update_project(Project(name=NAME, display_name="Second", etag=demo.etag))

    assert caught.value.reason == "ETAG_MISMATCH"
    assert caught.value.metadata == {"resource": NAME}
    with pytest.raises(AbortedError):
        await projects.update_project(Project(name=NAME, display_name="x", etag='W/"made-up"'))
    assert (await projects.get_project(NAME)).display_name == "First"
    assert await event_types(projects_server) == ["created", "updated"]


async def test_a_project_read_changed_and_sent_back_updates_once(
    projects: ProjectsClient, demo: Project
) -> None:
    read = await projects.get_project(NAME)
    read.display_name = "Edited"

    updated = await projects.update_project(read)
    read.description = "edited again from the same read"
    with pytest.raises(AbortedError) as caught:
        await projects.update_project(read, update_mask=["*"])

    assert updated.display_name == "Edited"
    assert updated.etag != demo.etag
    assert caught.value.reason == "ETAG_MISMATCH"
    assert await projects.get_project(NAME) == updated


async def test_a_request_etag_and_a_project_etag_that_differ_are_invalid(
    projects_server: Running, projects: ProjectsClient, demo: Project
) -> None:
    sent = Project(name=NAME, display_name="x", etag=demo.etag)

    with pytest.raises(InvalidArgumentError) as caught:
        await projects.update_project(sent, etag='W/"another"')

    assert caught.value.reason == "ETAG_CONFLICT"
    assert violated_fields(caught.value) == ["etag", "project.etag"]
    assert await projects.get_project(NAME) == demo
    assert await event_types(projects_server) == ["created"]


async def test_a_request_etag_equal_to_the_project_etag_is_one_precondition(
    projects: ProjectsClient, demo: Project
) -> None:
    updated = await projects.update_project(
        Project(name=NAME, display_name="Both", etag=demo.etag), etag=demo.etag
    )

    with pytest.raises(AbortedError) as caught:
        await projects.update_project(
            Project(name=NAME, display_name="Stale", etag=demo.etag), etag=demo.etag
        )

    assert updated.display_name == "Both"
    assert caught.value.reason == "ETAG_MISMATCH"
    assert await projects.get_project(NAME) == updated


# -- missing and deleted ----------------------------------------------------------------------


async def test_a_missing_project_is_not_found_without_allow_missing(
    projects_server: Running, projects: ProjectsClient
) -> None:
    with pytest.raises(NotFoundError) as caught:
        await projects.update_project(Project(name="projects/nope", display_name="x"))

    assert caught.value.reason == "PROJECT_NOT_FOUND"
    assert caught.value.metadata == {"resource": "projects/nope"}
    assert await project_rows(projects_server) == 0


async def test_allow_missing_creates_the_project_then_updates_it(
    projects_server: Running, projects: ProjectsClient
) -> None:
    sent = a_project(name="projects/upserted")

    created = await projects.update_project(sent, allow_missing=True)
    updated = await projects.update_project(
        Project(name="projects/upserted", display_name="Still here"), allow_missing=True
    )

    assert created.name == "projects/upserted"
    assert created.state == Project.STATE_ACTIVE
    assert created.display_name == sent.display_name
    assert updated.display_name == "Still here"
    assert updated.create_time == created.create_time
    assert await projects.get_project("projects/upserted") == updated
    assert await event_types(projects_server) == ["created", "updated"]


async def test_allow_missing_still_validates_what_it_creates(
    projects_server: Running, projects: ProjectsClient
) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        await projects.update_project(
            Project(name="projects/upserted", display_name="x"), allow_missing=True
        )

    assert violated_fields(caught.value) == ["project.project_type"]  # owner: the caller
    assert await project_rows(projects_server) == 0


async def test_updating_a_soft_deleted_project_fails_its_precondition(
    projects: ProjectsClient, demo: Project
) -> None:
    deleted = await projects.delete_project(NAME)

    with pytest.raises(FailedPreconditionError) as caught:
        await projects.update_project(Project(name=NAME, display_name="x"))

    assert caught.value.reason == "PROJECT_DELETED"
    assert await projects.get_project(NAME) == deleted


# -- request ids ------------------------------------------------------------------------------


async def test_a_retried_update_returns_the_first_response_and_applies_once(
    projects_server: Running, projects: ProjectsClient, demo: Project
) -> None:
    request_id = str(uuid.uuid4())
    sent = Project(name=NAME, display_name="Once")
    first = await projects.update_project(sent, etag=demo.etag, request_id=request_id)

    again = await projects.update_project(sent, etag=demo.etag, request_id=request_id)

    assert again == first
    assert await projects.get_project(NAME) == first
    assert await event_types(projects_server) == ["created", "updated"]


async def test_an_update_request_id_reused_with_another_body_is_rejected(
    projects: ProjectsClient, demo: Project
) -> None:
    request_id = str(uuid.uuid4())
    await projects.update_project(Project(name=NAME, display_name="One"), request_id=request_id)

    with pytest.raises(InvalidArgumentError) as caught:
        await projects.update_project(Project(name=NAME, display_name="Two"), request_id=request_id)

    assert caught.value.reason == "REQUEST_ID_REUSED"
    assert (await projects.get_project(NAME)).display_name == "One"


async def test_a_malformed_update_request_id_is_invalid(
    projects: ProjectsClient, demo: Project
) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        await projects.update_project(Project(name=NAME, display_name="x"), request_id="nope")

    assert violated_fields(caught.value) == ["request_id"]
    assert await projects.get_project(NAME) == demo
