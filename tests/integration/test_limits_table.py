"""Every size limit the README's limits table documents, exceeded once each against one
server, answers with the code and reason the table gives, and the server goes on serving."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

import grpc

from clients.events import EventsClient
from clients.projects import ProjectsClient
from core.calls.status import from_rpc_error
from core.config import LimitSettings
from core.errors import DomainError
from core.testing.services import serving, settings_for
from mesh.events.v1.events_pb2 import Event
from mesh.projects.v1 import projects_pb2, projects_pb2_grpc
from tests._services import EVENTS, PROJECTS

MAX_MESSAGE = 64 * 1024


async def outcome(call: Awaitable[Any]) -> tuple[str, str]:
    """The code and ErrorInfo reason `call` fails with."""
    try:
        await call
    except DomainError as error:
        return error.code.name, error.reason
    except grpc.aio.AioRpcError as error:
        failed = from_rpc_error(error)
        return failed.code.name, failed.reason
    return "OK", ""


def event(n: int) -> Event:
    return Event(type="mesh.test.v1.limit.hit", source="limits", id=f"e{n}")


def cases(
    projects: ProjectsClient, events: EventsClient, stub: Any
) -> dict[str, tuple[Awaitable[Any], tuple[str, str]]]:
    """Each limit of the README's table: the call that exceeds it, and its answer."""
    get = projects_pb2.GetProjectRequest(name="projects/bigone")
    return {
        # gRPC refuses these two before any handler runs: no ErrorInfo, so the reason is
        # the code's name (core.calls.status.from_rpc_error).
        "request over MESH_MAX_MESSAGE_BYTES": (
            projects.get_project("projects/" + "x" * MAX_MESSAGE),
            ("RESOURCE_EXHAUSTED", "RESOURCE_EXHAUSTED"),
        ),
        "metadata over MESH_MAX_METADATA_BYTES": (
            stub.GetProject(get, metadata=(("x-big", "y" * 8000),), timeout=5),
            ("RESOURCE_EXHAUSTED", "RESOURCE_EXHAUSTED"),
        ),
        "response over MESH_MAX_MESSAGE_BYTES": (
            projects.batch_get_projects(["projects/bigone"] * 30),
            ("RESOURCE_EXHAUSTED", "RESPONSE_TOO_LARGE"),
        ),
        "negative page_size": (
            projects.list_projects(page_size=-1),
            ("INVALID_ARGUMENT", "INVALID_PAGE_SIZE"),
        ),
        "batch get of more than 1000 names": (
            projects.batch_get_projects(["projects/abcd"] * 1001),
            ("INVALID_ARGUMENT", "TOO_MANY_NAMES"),
        ),
        "filter longer than 2000 characters": (
            projects.list_projects(filter='display_name = "' + "x" * 2000 + '"'),
            ("INVALID_ARGUMENT", "INVALID_FILTER"),
        ),
        "filter nested deeper than 16": (
            projects.list_projects(filter="(" * 17 + 'display_name = "x"' + ")" * 17),
            ("INVALID_ARGUMENT", "INVALID_FILTER"),
        ),
        "filter of more than 64 comparisons": (
            projects.list_projects(filter=" OR ".join(['display_name = "x"'] * 65)),
            ("INVALID_ARGUMENT", "INVALID_FILTER"),
        ),
        "order_by longer than 1000 characters": (
            projects.list_projects(order_by="display_name, " * 100),
            ("INVALID_ARGUMENT", "INVALID_ORDER_BY"),
        ),
        "publish batch over MESH_EVENTS_MAX_BATCH": (
            events.publish_batch(event(n) for n in range(501)),
            ("INVALID_ARGUMENT", "BATCH_TOO_LARGE"),
        ),
    }


async def test_each_limit_answers_with_its_code_and_reason(tmp_path: Any) -> None:
    settings = settings_for(
        f"sqlite+aiosqlite:///{tmp_path / 'limits.db'}",
        max_message_bytes=MAX_MESSAGE,
        limits=LimitSettings(max_metadata_bytes=4096),
    )
    async with (
        serving(PROJECTS, EVENTS, settings=settings) as running,
        ProjectsClient(running.address, attempts=1) as projects,
        EventsClient(running.address, attempts=1) as events,
        grpc.aio.insecure_channel(running.address) as channel,
    ):
        big = projects_pb2.Project(
            display_name="big",
            description="d" * 3000,
            project_type=projects_pb2.Project.PROJECT_TYPE_CUSTOM,
        )
        await projects.create_project(big, project_id="bigone")
        stub = projects_pb2_grpc.ProjectServiceStub(channel)
        table = cases(projects, events, stub)
        observed = {name: await outcome(call) for name, (call, _) in table.items()}

        assert observed == {name: expected for name, (_, expected) in table.items()}
        assert (await projects.get_project("projects/bigone")).display_name == "big"
