"""The audit log of resource writes: one record per write, in the write's transaction."""

from __future__ import annotations

import dataclasses
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from clients.projects import ProjectsClient
from core.data.database import Database
from core.data.transaction import Transaction
from core.errors import AbortedError, InvalidArgumentError
from core.resources import audit
from core.resources.audit import audit_records
from core.resources.crud import Crud
from core.security.principal import Principal, act_as
from mesh.projects.v1 import projects_pb2 as pb
from mesh.projects.v1.projects_pb2 import Project
from servers.projects.resource import PROJECTS
from tests.conftest import Running
from tests.integration._projects import a_project, crud_of, engine_of, set_purge_time

ALICE = Principal("alice", frozenset({"projects.write"}))


async def records(running: Running) -> list[Any]:
    statement = sa.select(audit_records).order_by(audit_records.c.id)
    async with engine_of(running).connect() as conn:
        return list((await conn.execute(statement)).all())


async def test_every_write_through_the_service_leaves_one_record(
    projects_server: Running, projects: ProjectsClient
) -> None:
    request_id = str(uuid.uuid4())
    created = await projects.create_project(a_project(), project_id="demo", request_id=request_id)
    await projects.update_project(Project(name=created.name, display_name="Renamed"))
    await projects.delete_project(created.name)
    await projects.undelete_project(created.name)

    found = await records(projects_server)
    assert [(r.action, r.method.rsplit("/", 1)[1]) for r in found] == [
        ("create", "CreateProject"),
        ("update", "UpdateProject"),
        ("delete", "DeleteProject"),
        ("undelete", "UndeleteProject"),
    ]
    assert {r.resource for r in found} == {"projects/demo"}
    assert {r.principal for r in found} == {"anonymous"}  # no credentials: unauthenticated
    assert found[0].request_id == request_id
    assert found[1].changes == [{"field": "display_name", "old": "Demo reel", "new": "Renamed"}]
    assert [c["field"] for c in found[2].changes] == ["delete_time", "purge_time", "state"]
    assert found[2].changes[2] == {"field": "state", "old": "STATE_ACTIVE", "new": "STATE_DELETED"}
    created_fields = {c["field"]: c["new"] for c in found[0].changes}
    assert created_fields["owner"] == "users/alice"
    assert all(c["old"] is None for c in found[0].changes)
    assert all(r.time is not None for r in found)


async def test_a_record_names_the_principal_of_the_write(projects_server: Running) -> None:
    crud = crud_of(projects_server)
    act_as(ALICE)  # this test's own context: the boundary does this per call
    request = pb.CreateProjectRequest(project=a_project(owner=""), project_id="alices")
    await crud.create(
        request.project,
        resource_id="alices",
        request_id="",
        validate_only=False,
        request=request,
        id_field="project_id",
    )

    [found] = await records(projects_server)
    assert (found.principal, found.method, found.resource) == ("alice", "create", "projects/alices")


async def test_a_rolled_back_write_leaves_no_record(
    projects_server: Running, projects: ProjectsClient
) -> None:
    demo = await projects.create_project(a_project(), project_id="demo")
    await projects.update_project(Project(name=demo.name, display_name="Once"))

    with pytest.raises(AbortedError):  # a stale etag: the precondition fails in the transaction
        await projects.update_project(Project(name=demo.name, display_name="x"), etag=demo.etag)
    with pytest.raises(InvalidArgumentError):
        await projects.update_project(Project(name=demo.name, display_name=""), update_mask=["*"])

    async def write_then_fail(tx: Transaction) -> None:
        await audit.record(tx, resource=demo.name, action="update", request_id="", changes=[])
        raise RuntimeError("the write failed after its record")

    with pytest.raises(RuntimeError):
        await projects_server.container.get(Database).run(write_then_fail)

    assert [r.action for r in await records(projects_server)] == ["create", "update"]


async def test_a_secret_field_is_recorded_as_changed_without_its_values(
    projects_server: Running, projects: ProjectsClient
) -> None:
    secret_description = dataclasses.replace(PROJECTS, secret_fields=("description",))
    container = projects_server.container
    crud = Crud(secret_description, container.get(Database))
    await projects.create_project(a_project(description="hunter2"), project_id="vault")
    await crud.update(
        Project(name="projects/vault", description="correct horse", display_name="Vault"),
        mask=None,
        etag="",
        allow_missing=False,
        request_id="",
        request=pb.UpdateProjectRequest(),
    )

    update = (await records(projects_server))[-1]
    assert update.changes == [
        {"field": "description", "secret": True},
        {"field": "display_name", "old": "Demo reel", "new": "Vault"},
    ]
    assert "correct horse" not in str(update._mapping)
    assert "hunter2" not in str(update._mapping)


async def test_records_older_than_the_retention_are_purged_and_purges_leave_none(
    projects_server: Running, projects: ProjectsClient
) -> None:
    await projects.create_project(a_project(), project_id="kept")
    await projects.create_project(a_project(), project_id="gone")
    await projects.delete_project("projects/gone")
    await set_purge_time(projects_server, "projects/gone", datetime.now(UTC) - timedelta(1))
    old = datetime.now(UTC) - timedelta(days=31)
    async with engine_of(projects_server).begin() as conn:
        await conn.execute(
            audit_records.update().where(audit_records.c.resource == "projects/kept"), {"time": old}
        )

    crud = Crud(PROJECTS, projects_server.container.get(Database), audit_retention=timedelta(30))
    assert await crud.purge_expired() == 1

    left = [(r.resource, r.action) for r in await records(projects_server)]
    assert left == [("projects/gone", "create"), ("projects/gone", "delete")]
