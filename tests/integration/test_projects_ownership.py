"""Object-level authorization of projects: a caller without `admin` sees and writes only its own.

The principal is set in-process with `act_as` around calls of the server's own CRUD engine
(its database and its cache), as the boundary does per call once callers authenticate.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import sqlalchemy as sa

from core.errors import DomainError, InvalidArgumentError, NotFoundError, PermissionDeniedError
from core.events.bus import EventBus
from core.events.model import HistoryQuery, Selector
from core.events.outbox import outbox
from core.events.requests import EventRequests
from core.resources.crud import Crud
from core.security.principal import Principal, _current, act_as
from mesh.projects.v1 import projects_pb2 as pb
from mesh.projects.v1.projects_pb2 import Project
from tests.conftest import Running
from tests.integration._projects import a_project, crud_of, engine_of, until

ALICE = Principal("alice", frozenset({"projects.read", "projects.write"}))
BOB = Principal("bob", frozenset({"projects.read", "projects.write"}))
ADMIN = Principal("root", frozenset({"admin"}))


@contextmanager
def acting_as(principal: Principal) -> Iterator[None]:
    token = act_as(principal)
    try:
        yield
    finally:
        _current.reset(token)


@pytest.fixture
def crud(projects_server: Running) -> Crud[Project]:
    return crud_of(projects_server)


async def create(crud: Crud[Project], project_id: str, **fields: Any) -> Project:
    request = pb.CreateProjectRequest(project=a_project(**fields), project_id=project_id)
    return await crud.create(
        request.project,
        resource_id=project_id,
        request_id=request.request_id,
        validate_only=False,
        request=request,
        id_field="project_id",
    )


async def error_of(call: Any) -> DomainError:
    with pytest.raises(DomainError) as caught:
        await call
    return caught.value


async def test_a_project_is_owned_by_the_caller_that_created_it(crud: Crud[Project]) -> None:
    with acting_as(ALICE):
        created = await create(crud, "mine", owner="")

    assert created.owner == "alice"


async def test_only_an_admin_creates_a_project_for_someone_else(crud: Crud[Project]) -> None:
    with acting_as(ALICE):
        denied = await error_of(create(crud, "theirs", owner="bob"))
        own = await create(crud, "own-one", owner="alice")  # naming oneself is fine
    with acting_as(ADMIN):
        for_bob = await create(crud, "for-bob", owner="bob")

    assert isinstance(denied, PermissionDeniedError)
    assert denied.reason == "OWNER_NOT_CALLER"
    assert (own.owner, for_bob.owner) == ("alice", "bob")


async def test_someone_elses_project_is_not_found_exactly_like_a_missing_one(
    crud: Crud[Project],
) -> None:
    with acting_as(ALICE):
        alices = await create(crud, "alices", owner="")
    name, missing = alices.name, "projects/missing"

    with acting_as(BOB):
        for target in (name, missing):
            errors = [
                await error_of(crud.get(target)),
                await error_of(crud.batch_get([target])),
                await error_of(crud.delete(target, etag="")),
                await error_of(crud.undelete(target, etag="")),
                await error_of(
                    crud.update(
                        Project(name=target, display_name="x"),
                        mask=None,
                        etag="",
                        allow_missing=False,
                        request_id="",
                        request=pb.UpdateProjectRequest(),
                    )
                ),
            ]
            shapes = {(type(e), e.reason, e.message.replace(target, "<name>")) for e in errors}
            assert shapes == {
                (NotFoundError, "PROJECT_NOT_FOUND", "project '<name>' does not exist")
            }
    with acting_as(ALICE):
        assert (await crud.get(name)).display_name == alices.display_name  # untouched


async def test_the_cache_never_serves_another_owners_project(crud: Crud[Project]) -> None:
    with acting_as(ALICE):
        await create(crud, "cached", owner="")
        assert (await crud.get("projects/cached")).owner == "alice"  # now in the cache
        assert (await crud.get("projects/cached")).owner == "alice"

    with acting_as(BOB), pytest.raises(NotFoundError):
        await crud.get("projects/cached")
    with acting_as(ADMIN):
        assert (await crud.get("projects/cached")).owner == "alice"


async def test_lists_and_counts_hold_only_the_callers_projects(crud: Crud[Project]) -> None:
    with acting_as(ALICE):
        await create(crud, "alice-1", owner="")
        await create(crud, "alice-2", owner="")
    with acting_as(BOB):
        await create(crud, "bob-1", owner="")

    async def seen(filter: str = "") -> tuple[list[str], int]:
        page, _ = await crud.list_page(
            size=50, token="", filter=filter, order_by="", show_deleted=True
        )
        return [p.name for p in page], await crud.count(filter=filter, show_deleted=True)

    with acting_as(BOB):
        assert await seen() == (["projects/bob-1"], 1)
        assert await seen('owner = "alice"') == ([], 0)
    with acting_as(ALICE):
        assert await seen() == (["projects/alice-1", "projects/alice-2"], 2)
    with acting_as(ADMIN):
        assert (await seen())[1] == 3


async def test_a_page_token_does_not_carry_over_to_another_caller(crud: Crud[Project]) -> None:
    with acting_as(ALICE):
        for i in range(3):
            await create(crud, f"page-{i}", owner="")
        _, token = await crud.list_page(
            size=2, token="", filter="", order_by="", show_deleted=False
        )
    assert token

    with acting_as(BOB), pytest.raises(InvalidArgumentError) as caught:
        await crud.list_page(size=2, token=token, filter="", order_by="", show_deleted=False)
    assert caught.value.reason == "INVALID_PAGE_TOKEN"


async def test_only_an_admin_gives_a_project_to_another_owner(crud: Crud[Project]) -> None:
    with acting_as(ALICE):
        await create(crud, "gift", owner="")

    async def give(to: str) -> Project:
        return await crud.update(
            Project(name="projects/gift", owner=to),
            mask=None,
            etag="",
            allow_missing=False,
            request_id="",
            request=pb.UpdateProjectRequest(),
        )

    with acting_as(ALICE):
        denied = await error_of(give("bob"))
    with acting_as(ADMIN):
        given = await give("bob")

    assert isinstance(denied, PermissionDeniedError)
    assert given.owner == "bob"


async def test_an_upsert_of_someone_elses_id_answers_like_a_create(crud: Crud[Project]) -> None:
    with acting_as(ALICE):
        await create(crud, "taken", owner="")

    with acting_as(BOB):
        upsert = await error_of(
            crud.update(
                a_project(name="projects/taken", owner=""),
                mask=None,
                etag="",
                allow_missing=True,
                request_id="",
                request=pb.UpdateProjectRequest(),
            )
        )
        create_again = await error_of(create(crud, "taken", owner=""))

    assert (upsert.reason, create_again.reason) == ("PROJECT_ALREADY_EXISTS",) * 2


async def test_a_request_id_replays_only_for_the_caller_that_used_it(
    crud: Crud[Project],
) -> None:
    request_id = str(uuid.uuid4())
    request = pb.CreateProjectRequest(project=a_project(owner=""), project_id="once")

    async def send() -> Project:
        return await crud.create(
            request.project,
            resource_id="once",
            request_id=request_id,
            validate_only=False,
            request=request,
            id_field="project_id",
        )

    with acting_as(ALICE):
        first = await send()
        assert await send() == first  # alice's retry gets her response
    with acting_as(BOB):
        replayed = await error_of(send())

    assert replayed.reason == "REQUEST_ID_REUSED"


async def test_events_carry_their_projects_owner_and_the_principal_that_caused_them(
    projects_server: Running, crud: Crud[Project]
) -> None:
    with acting_as(ADMIN):
        await create(crud, "evented", owner="alice")
    with acting_as(ALICE):
        await crud.delete("projects/evented", etag="")

    async with engine_of(projects_server).connect() as conn:
        rows = (await conn.execute(sa.select(outbox).order_by(outbox.c.position))).all()
    seen = [
        (r.type.rsplit(".", 1)[1], r.attributes.get("owner"), r.attributes.get("principal"))
        for r in rows
    ]
    assert seen == [("created", "alice", "root"), ("deleted", "alice", "alice")]


async def test_relayed_project_events_are_seen_by_their_owner_only(
    projects_server: Running, crud: Crud[Project]
) -> None:
    with acting_as(ALICE):
        await create(crud, "relayed", owner="")
    requests = EventRequests(projects_server.container.get(EventBus))
    everything = HistoryQuery(Selector.parse(["mesh.projects.v1.project.*"]), None, None)

    async def relayed() -> bool:
        with acting_as(ADMIN):
            return bool((await requests.list_events(everything, 10, ""))[0])

    await until(relayed)  # the outbox relay has published it to the process's bus
    with acting_as(ALICE):
        [seen], _ = await requests.list_events(everything, 10, "")
    with acting_as(BOB):
        hidden, _ = await requests.list_events(everything, 10, "")

    assert (seen.subject, seen.attributes["owner"], seen.attributes["principal"]) == (
        "projects/relayed",
        "alice",
        "alice",
    )
    assert hidden == []
