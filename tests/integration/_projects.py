"""Helpers shared by the projects service's integration tests (test_projects_*.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import grpc
import sqlalchemy as sa
from google.protobuf import any_pb2

from clients.projects import ProjectsClient
from core.calls.status import from_rpc_error
from core.data.database import Database
from core.errors import DomainError
from core.events.outbox import outbox
from core.resources.cache import Cache
from core.resources.crud import Crud
from core.resources.idempotency import request_ids
from mesh.projects.v1 import projects_pb2 as pb
from mesh.projects.v1 import projects_pb2_grpc
from mesh.projects.v1.projects_pb2 import Project
from servers.projects.resource import PROJECTS, projects, to_columns
from tests.conftest import Running

EVENT = "mesh.projects.v1.project"
SOURCE = "mesh.projects.v1.ProjectService"


def a_project(**overrides: Any) -> Project:
    """A valid project to create; keyword arguments replace its fields."""
    values: dict[str, Any] = {
        "display_name": "Demo reel",
        "description": "a first cut",
        "project_type": Project.PROJECT_TYPE_MUSIC_CLIP,
        "owner": "users/alice",
        "labels": {"env": "prod"},
    }
    return Project(**(values | overrides))


@asynccontextmanager
async def client_of(running: Running) -> AsyncIterator[ProjectsClient]:
    async with ProjectsClient(running.address) as client:
        yield client


@asynccontextmanager
async def raw_stub(running: Running) -> AsyncIterator[projects_pb2_grpc.ProjectServiceStub]:
    """The generated stub, for requests exactly as written (no request id added)."""
    async with grpc.aio.insecure_channel(running.address) as channel:
        yield projects_pb2_grpc.ProjectServiceStub(channel)


async def outcome(call: Awaitable[Any]) -> Any:
    """The response of a raw stub call, or the domain error it failed with."""
    try:
        return await call
    except grpc.RpcError as exc:
        return from_rpc_error(exc)


async def attempt(call: Awaitable[Any]) -> Any:
    """The result of a typed client call, or the domain error it raised."""
    try:
        return await call
    except DomainError as exc:
        return exc


def engine_of(running: Running) -> Any:
    return running.container.get(Database).engine


def crud_of(running: Running) -> Crud[Project]:
    """A CRUD engine on the server's own database and cache (so purges invalidate its cache)."""
    container = running.container
    return Crud(PROJECTS, container.get(Database), container.get(Cache))


@dataclass(frozen=True)
class Event:
    type: str
    source: str
    subject: str
    project: Project


async def events(running: Running, *, subject: str | None = None) -> list[Event]:
    """The outbox rows, oldest first, with their data unpacked."""
    statement = sa.select(outbox).order_by(outbox.c.position)
    if subject is not None:
        statement = statement.where(outbox.c.subject == subject)
    async with engine_of(running).connect() as conn:
        rows = (await conn.execute(statement)).all()
    found = []
    for row in rows:
        packed = any_pb2.Any.FromString(row.data)
        project = Project()
        assert packed.Unpack(project), packed.type_url
        found.append(Event(row.type, row.source, row.subject, project))
    return found


async def event_types(running: Running) -> list[str]:
    return [e.type.removeprefix(f"{EVENT}.") for e in await events(running)]


async def rows_in(running: Running, table: sa.Table) -> int:
    async with engine_of(running).connect() as conn:
        return int((await conn.execute(sa.select(sa.func.count()).select_from(table))).scalar_one())


async def project_rows(running: Running) -> int:
    return await rows_in(running, projects)


async def request_id_rows(running: Running) -> int:
    return await rows_in(running, request_ids)


async def insert_rows(
    running: Running, count: int, *, prefix: str = "bulk", **fields: Any
) -> list[str]:
    """Inserts `count` projects straight into the table (no events); returns their names."""
    now = datetime.now(UTC)
    rows = [
        {
            **to_columns(a_project(display_name=f"{prefix} {i:05d}", **fields)),
            "id": f"{prefix}-{i:05d}",
            "revision": 1,
            "create_time": now,
            "update_time": now,
            "delete_time": None,
            "purge_time": None,
        }
        for i in range(count)
    ]
    async with engine_of(running).begin() as conn:
        await conn.execute(projects.insert(), rows)
    return [f"projects/{r['id']}" for r in rows]


async def set_purge_time(running: Running, name: str, when: datetime) -> None:
    resource_id = name.removeprefix("projects/")
    async with engine_of(running).begin() as conn:
        await conn.execute(
            projects.update().where(projects.c.id == resource_id).values(purge_time=when)
        )


async def until(check: Callable[[], Awaitable[bool]], timeout: float = 5.0) -> None:
    """Waits for `check` to hold, polling; fails the test after `timeout` seconds."""
    async with asyncio.timeout(timeout):
        while True:
            if await check():
                return
            await asyncio.sleep(0.02)


def create_request(**fields: Any) -> pb.CreateProjectRequest:
    fields.setdefault("project", a_project())
    return pb.CreateProjectRequest(**fields)


def violated_fields(exc: DomainError) -> list[str]:
    return [v.field for v in getattr(exc, "violations", ())]
