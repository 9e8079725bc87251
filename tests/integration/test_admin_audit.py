"""AdminService.ListAuditRecords over gRPC: filters, pages and bad input, on both databases."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest

from clients.admin import AdminClient
from clients.projects import ProjectsClient
from core.calls.status import from_rpc_error
from core.data.database import Database
from core.errors import FailedPreconditionError, InvalidArgumentError, UnavailableError
from core.runtime.container import Container
from core.security.principal import Principal
from core.testing.services import FAST_START
from mesh.admin.v1 import admin_pb2, admin_pb2_grpc
from mesh.projects.v1.projects_pb2 import Project
from servers.admin.audit import AuditRecords
from tests.conftest import Running
from tests.integration._projects import a_project, crud_of
from tests.integration.test_projects_ownership import acting_as, create


@pytest.fixture
async def admin(projects_server: Running) -> AdminClient:
    client: AdminClient = await projects_server.client("admin")
    return client


async def four_writes(projects: ProjectsClient) -> None:
    await projects.create_project(a_project(), project_id="first")
    await projects.create_project(a_project(), project_id="second")
    await projects.update_project(Project(name="projects/first", display_name="Renamed"))
    await projects.delete_project("projects/second")


def summary(page: admin_pb2.ListAuditRecordsResponse) -> list[tuple[str, str]]:
    return [(r.action, r.resource) for r in page.records]


async def test_records_come_newest_first_with_their_changes(
    admin: AdminClient, projects: ProjectsClient
) -> None:
    await four_writes(projects)

    page = await admin.list_audit_records()

    assert summary(page) == [
        ("delete", "projects/second"),
        ("update", "projects/first"),
        ("create", "projects/second"),
        ("create", "projects/first"),
    ]
    update = page.records[1]
    assert update.method == "/mesh.projects.v1.ProjectService/UpdateProject"
    assert update.principal == "anonymous"
    assert update.request_id  # the typed client sends one with every write
    [change] = update.changes
    assert (change.field, change.old_value.string_value, change.new_value.string_value) == (
        "display_name",
        "Demo reel",
        "Renamed",
    )
    assert page.next_page_token == ""


async def test_records_are_filtered_by_resource_principal_and_time(
    projects_server: Running, admin: AdminClient, projects: ProjectsClient
) -> None:
    await four_writes(projects)
    with acting_as(Principal("alice", frozenset({"projects.write"}))):
        await create(crud_of(projects_server), "alices", owner="")
    now = datetime.now(UTC)

    by_resource = await admin.list_audit_records(resource="projects/first")
    by_principal = await admin.list_audit_records(principal="alice")
    before = await admin.list_audit_records(end=now - timedelta(hours=1))
    since = await admin.list_audit_records(start=now - timedelta(hours=1), end=now)

    assert summary(by_resource) == [("update", "projects/first"), ("create", "projects/first")]
    assert summary(by_principal) == [("create", "projects/alices")]
    assert summary(before) == []
    assert len(since.records) == 5


async def test_records_page_through_with_tokens_bound_to_their_filters(
    admin: AdminClient, projects: ProjectsClient
) -> None:
    await four_writes(projects)

    first = await admin.list_audit_records(page_size=3)
    second = await admin.list_audit_records(page_size=3, page_token=first.next_page_token)
    with pytest.raises(InvalidArgumentError) as foreign:
        await admin.list_audit_records(
            page_size=3, page_token=first.next_page_token, resource="projects/first"
        )

    assert (len(first.records), len(second.records), second.next_page_token) == (3, 1, "")
    ids = [r.id for r in [*first.records, *second.records]]
    assert ids == sorted(set(ids), reverse=True)
    assert foreign.value.reason == "INVALID_PAGE_TOKEN"


async def test_bad_input_is_invalid_argument_with_its_reason(admin: AdminClient) -> None:
    now = datetime.now(UTC)
    reasons = []
    for kwargs in (
        {"page_size": -1},
        {"page_token": "not-a-token"},
        {"start": now, "end": now - timedelta(seconds=1)},
    ):
        with pytest.raises(InvalidArgumentError) as caught:
            await admin.list_audit_records(**kwargs)  # type: ignore[arg-type]
        reasons.append(caught.value.reason)

    assert reasons == ["INVALID_PAGE_SIZE", "INVALID_PAGE_TOKEN", "INVALID_TIME_RANGE"]


async def test_a_process_without_a_database_has_no_audit_log(mesh: Running) -> None:
    admin: AdminClient = await mesh.client("admin")

    with pytest.raises(FailedPreconditionError) as caught:
        await admin.list_audit_records()

    assert caught.value.reason == "NO_AUDIT_LOG"


async def test_a_database_not_running_yet_is_unavailable(tmp_path: Path) -> None:
    container = Container(FAST_START)
    container.register(Database(f"sqlite+aiosqlite:///{tmp_path / 'mesh.db'}"))

    with pytest.raises(UnavailableError) as caught:
        await AuditRecords(container).list(admin_pb2.ListAuditRecordsRequest())

    assert caught.value.reason == "DATABASE_NOT_READY"


async def test_a_timestamp_out_of_range_is_invalid_argument_naming_it(
    projects_server: Running,
) -> None:
    """Found by the fuzzer: nanos of -1 made ListAuditRecords INTERNAL."""
    async with grpc.aio.insecure_channel(projects_server.address) as channel:
        stub = admin_pb2_grpc.AdminServiceStub(channel)
        request = admin_pb2.ListAuditRecordsRequest()
        request.start_time.nanos = -1
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await stub.ListAuditRecords(request, timeout=5)
    error = from_rpc_error(failed.value)
    assert isinstance(error, InvalidArgumentError)
    assert (error.reason, [v.field for v in error.violations]) == (
        "INVALID_TIMESTAMP",
        ["start_time"],
    )


async def test_a_filter_with_a_nul_is_invalid_argument(admin: AdminClient) -> None:
    """Found by the fuzzer: PostgreSQL cannot compare text with a NUL (it was INTERNAL)."""
    with pytest.raises(InvalidArgumentError) as caught:
        await admin.list_audit_records(resource="projects/\x00")
    assert caught.value.reason == "INVALID_FILTER"
