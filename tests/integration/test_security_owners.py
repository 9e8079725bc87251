"""Owners and the audit log through real tokens: alice's project is invisible to bob.

A server that requires HS256 tokens hosts projects, events and admin on SQLite and
PostgreSQL; every call goes over the network with `authorization: Bearer ...`, so the
principal is what the boundary made of the token (not one set in-process). The outbox
relays through the in-process bus, which needs no credentials of its own; a relay to a
remote events service sends MESH_TOKEN, which needs events.publish and events.admin.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import pytest

from clients.admin import AdminClient
from clients.events import EventsClient
from clients.projects import ProjectsClient
from core.config import EventSettings
from core.errors import AbortedError, DomainError, NotFoundError
from core.events.relay import OutboxRelay
from core.runtime.health import HealthState
from core.testing.services import Running, serving, settings_for
from mesh.projects.v1 import projects_pb2 as pb
from tests._services import ADMIN, EVENTS, PROJECTS
from tests.integration._events import REDIS_URL
from tests.integration._owners import (
    ALICE,
    AUDITOR,
    AUTH,
    BOB,
    ROOT,
    bearer,
    client,
    failure,
    secured_server,
)
from tests.integration._projects import a_project, until


@pytest.fixture
async def secured(database_url: str) -> AsyncIterator[Running]:
    async with secured_server(database_url) as running:
        yield running


@pytest.fixture
async def cached(database_url: str) -> AsyncIterator[Running]:
    """The same server with its cache and events on Redis."""
    async with secured_server(database_url, REDIS_URL) as running:
        yield running


def answer(error: DomainError) -> tuple[Any, ...]:
    return (type(error), error.message, error.reason, error.metadata)


async def test_another_owners_project_is_missing_and_uncounted(secured: Running) -> None:
    alice = await client(secured, ProjectsClient, ALICE)
    bob = await client(secured, ProjectsClient, BOB)
    root = await client(secured, ProjectsClient, ROOT)
    mine = await alice.create_project(a_project(owner=""), project_id="alices")
    await bob.create_project(a_project(owner=""), project_id="bobs")
    assert mine.owner == "alice"

    name = mine.name
    missing = "projects/nobody-has-this"
    theirs = [
        await failure(bob.get_project(name)),
        await failure(bob.batch_get_projects([name])),
        await failure(
            bob.update_project(
                pb.Project(name=name, display_name="x"), update_mask=["display_name"]
            )
        ),
        await failure(bob.delete_project(name)),
        await failure(bob.undelete_project(name)),
    ]
    absent = [
        await failure(bob.get_project(missing)),
        await failure(bob.batch_get_projects([missing])),
        await failure(
            bob.update_project(
                pb.Project(name=missing, display_name="x"), update_mask=["display_name"]
            )
        ),
        await failure(bob.delete_project(missing)),
        await failure(bob.undelete_project(missing)),
    ]
    assert all(isinstance(e, NotFoundError) for e in theirs)
    # The same answer as for a project that does not exist, up to the name asked for.
    assert [str(answer(e)) for e in theirs] == [
        str(answer(e)).replace(missing, name) for e in absent
    ]
    # A name is unique across owners: creating one that is taken says so, whoever owns
    # it (the one existence a caller can learn, by choosing the name; see README).
    taken = await failure(bob.create_project(a_project(owner=""), project_id="alices"))
    assert (taken.code, taken.reason) == (grpc.StatusCode.ALREADY_EXISTS, "PROJECT_ALREADY_EXISTS")

    seen = [p.name for p in (await bob.list_projects(show_deleted=True)).projects]
    assert seen == ["projects/bobs"]
    assert await bob.count_projects(show_deleted=True) == 1
    everyone = [p.name for p in (await root.list_projects()).projects]
    assert sorted(everyone) == ["projects/alices", "projects/bobs"]
    assert await root.count_projects() == 2
    assert (await root.get_project(name)).owner == "alice"
    assert (await alice.get_project(name)).display_name == mine.display_name


async def test_the_audit_log_records_the_token_subject(secured: Running) -> None:
    alice = await client(secured, ProjectsClient, ALICE)
    auditor = await client(secured, AdminClient, AUDITOR)
    created = await alice.create_project(a_project(owner=""), project_id="audited")
    updated = await alice.update_project(
        pb.Project(name=created.name, display_name="Final cut"), update_mask=["display_name"]
    )
    stale = await failure(
        alice.update_project(
            pb.Project(name=created.name, display_name="Lost"),
            update_mask=["display_name"],
            etag=created.etag,
        )
    )
    assert isinstance(stale, AbortedError)
    await alice.delete_project(created.name, etag=updated.etag)

    page = await auditor.list_audit_records(resource=created.name)
    records = list(reversed(page.records))  # oldest first
    assert [(r.principal, r.action) for r in records] == [
        ("alice", "create"),
        ("alice", "update"),
        ("alice", "delete"),
    ]
    assert {r.method for r in records} == {
        "/mesh.projects.v1.ProjectService/CreateProject",
        "/mesh.projects.v1.ProjectService/UpdateProject",
        "/mesh.projects.v1.ProjectService/DeleteProject",
    }
    changed = [{c.field for c in r.changes} for r in records]
    assert {"display_name", "owner"} <= changed[0]
    assert changed[1] == {"display_name"}
    assert {"state", "delete_time"} <= changed[2]
    assert "Lost" not in str(page)  # the rolled-back write left nothing
    by_alice = await auditor.list_audit_records(principal="alice")
    assert len(by_alice.records) == 3


async def test_events_of_alices_project_follow_her(secured: Running) -> None:
    alice_projects = await client(secured, ProjectsClient, ALICE)
    alice = await client(secured, EventsClient, ALICE)
    bob = await client(secured, EventsClient, BOB)
    root = await client(secured, EventsClient, ROOT)
    created = await alice_projects.create_project(a_project(owner=""), project_id="evented")
    event = await secured.wait_for_event("mesh.projects.v1.project.*", subject=created.name)
    assert (event.attributes["owner"], event.attributes["principal"]) == ("alice", "alice")

    assert (await alice.status(event.id)).event.id == event.id
    assert isinstance(await failure(bob.status(event.id)), NotFoundError)
    assert isinstance(await failure(bob.status("no-such-event")), NotFoundError)
    assert event.id in [e.id for e in (await alice.history()).events]
    assert event.id not in [e.id for e in (await bob.history()).events]
    assert event.id in [e.id for e in (await root.history()).events]


@asynccontextmanager
async def relaying(
    database_url: str, tmp_path: Path, scope: str
) -> AsyncIterator[tuple[Running, Running]]:
    """Events in one process and projects in another, both requiring tokens; the projects
    outbox relays to the events service with a MESH_TOKEN holding `scope`."""
    events_settings = replace(
        settings_for(f"sqlite+aiosqlite:///{tmp_path / 'events.db'}"), auth=AUTH
    )
    async with serving(EVENTS, settings=events_settings) as events:
        settings = replace(
            settings_for(database_url),
            auth=AUTH,
            token=bearer("projects-service", scope),
            events=EventSettings(address=events.address, system_events=False),
        )
        async with serving(ADMIN, PROJECTS, settings=settings) as projects:
            yield events, projects


async def test_a_relay_with_events_admin_passes_on_the_owner_to_a_remote_events_service(
    database_url: str, tmp_path: Path
) -> None:
    async with relaying(database_url, tmp_path, "events.publish events.admin") as (
        events,
        projects,
    ):
        alice = await client(projects, ProjectsClient, ALICE)
        created = await alice.create_project(a_project(owner=""), project_id="far-away")
        event = await events.wait_for_event("mesh.projects.v1.project.*", subject=created.name)
    assert (event.attributes["owner"], event.attributes["principal"]) == ("alice", "alice")


async def test_a_relay_without_events_admin_is_refused_and_holds_the_events(
    database_url: str, tmp_path: Path
) -> None:
    async with relaying(database_url, tmp_path, "events.publish") as (_, projects):
        alice = await client(projects, ProjectsClient, ALICE)
        await alice.create_project(a_project(owner=""), project_id="far-away")
        relay = projects.container.get(OutboxRelay)

        async def degraded() -> bool:
            return (await relay.check_health()).state is HealthState.DEGRADED

        await until(degraded)
        health = await relay.check_health()
    assert "outbox delivery failing (PermissionDeniedError)" in health.reason
    assert "1 events wait" in health.reason


async def test_request_ids_and_page_tokens_do_not_carry_over_to_another_caller(
    secured: Running,
) -> None:
    alice = await client(secured, ProjectsClient, ALICE)
    bob = await client(secured, ProjectsClient, BOB)
    request_id = str(uuid.uuid4())
    await alice.create_project(a_project(owner=""), project_id="alices-one", request_id=request_id)
    await alice.create_project(a_project(owner=""), project_id="alices-two")
    # Bob repeating alice's request (her request id, the same body) is not answered with
    # her project: the request id is bound to its caller.
    replayed = await failure(
        bob.create_project(a_project(owner=""), project_id="alices-one", request_id=request_id)
    )
    assert (replayed.code, replayed.reason) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "REQUEST_ID_REUSED",
    )
    page = await alice.list_projects(page_size=1)
    assert page.next_page_token
    stolen = await failure(bob.list_projects(page_size=1, page_token=page.next_page_token))
    assert stolen.code is grpc.StatusCode.INVALID_ARGUMENT


async def test_a_project_in_the_shared_cache_is_still_its_owners(cached: Running) -> None:
    alice = await client(cached, ProjectsClient, ALICE)
    bob = await client(cached, ProjectsClient, BOB)
    created = await alice.create_project(a_project(owner=""), project_id="cached-one")
    for _ in range(2):  # the second read is served from the cache
        assert (await alice.get_project(created.name)).etag == created.etag
    assert isinstance(await failure(bob.get_project(created.name)), NotFoundError)
    assert isinstance(await failure(bob.batch_get_projects([created.name])), NotFoundError)
    event = await cached.wait_for_event("mesh.projects.v1.project.*", subject=created.name)
    assert (event.attributes["owner"], event.attributes["principal"]) == ("alice", "alice")
    events = await client(cached, EventsClient, BOB)
    assert isinstance(await failure(events.status(event.id)), NotFoundError)


async def test_only_an_admin_gives_a_project_away_and_a_deleted_one_stays_hidden(
    secured: Running,
) -> None:
    alice = await client(secured, ProjectsClient, ALICE)
    bob = await client(secured, ProjectsClient, BOB)
    root = await client(secured, ProjectsClient, ROOT)
    created = await alice.create_project(a_project(owner=""), project_id="given")
    away = pb.Project(name=created.name, owner="bob")
    denied = await failure(alice.update_project(away, update_mask=["owner"]))
    assert (denied.code, denied.reason) == (grpc.StatusCode.PERMISSION_DENIED, "OWNER_NOT_CALLER")
    for_bob = await root.create_project(a_project(owner="bob"), project_id="for-bob")
    assert for_bob.owner == "bob"
    assert (await root.update_project(away, update_mask=["owner"])).owner == "bob"
    assert isinstance(await failure(alice.get_project(created.name)), NotFoundError)
    await bob.delete_project(created.name)
    assert isinstance(await failure(alice.undelete_project(created.name)), NotFoundError)
    listed = await alice.list_projects(show_deleted=True)
    assert [p.name for p in listed.projects] == []
    assert (await bob.undelete_project(created.name)).owner == "bob"
