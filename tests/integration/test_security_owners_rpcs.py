"""Every RPC of every served service, called by bob about alice's project or event.

The methods come from the served descriptors, so a new RPC fails this test until its
case is added. Someone else's project is NOT_FOUND like a missing one and absent from
lists and counts; someone else's event is NOT_FOUND in GetEventStatus and absent from
Subscribe, ListEvents and ListDeadLetters; publishing as its owner is PERMISSION_DENIED
(OWNER_NOT_CALLER), groups need events.admin (EVENTS_ADMIN_REQUIRED); the admin RPCs need
scopes bob lacks (MISSING_SCOPE).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from typing import Any

import grpc
import pytest
from google.protobuf.field_mask_pb2 import FieldMask
from google.protobuf.message import Message

from clients.events import EventsClient
from clients.projects import ProjectsClient
from core.calls.status import from_rpc_error
from core.testing.services import Running
from mesh.admin.v1 import admin_pb2
from mesh.events.v1 import events_pb2 as epb
from mesh.projects.v1 import projects_pb2 as pb
from tests.integration._owners import ALICE, BOB, ROOT, client, secured_server
from tests.integration._projects import a_project

PROJ = "/mesh.projects.v1.ProjectService/"
EVT = "/mesh.events.v1.EventService/"
ADM = "/mesh.admin.v1.AdminService/"


@pytest.fixture
async def secured(database_url: str) -> AsyncIterator[Running]:
    async with secured_server(database_url) as running:
        yield running


def unary(channel: grpc.aio.Channel, path: str, request: Message, reply: Any) -> Any:
    return channel.unary_unary(
        path, request_serializer=type(request).SerializeToString, response_deserializer=reply
    )


async def outcome(
    channel: grpc.aio.Channel, path: str, request: Message, reply: type[Message]
) -> tuple[str, Any]:
    """("OK", response) or (code name, ErrorInfo reason) of a unary call as bob."""
    metadata = (("authorization", f"Bearer {BOB}"),)
    try:
        response = await unary(channel, path, request, reply.FromString)(
            request, metadata=metadata, timeout=10
        )
    except grpc.aio.AioRpcError as exc:
        return exc.code().name, from_rpc_error(exc).reason
    return "OK", response


async def subscribed(channel: grpc.aio.Channel, request: epb.SubscribeRequest) -> Any:
    """The events a subscription as bob delivers up to CaughtUp, or its error code."""
    metadata = (("authorization", f"Bearer {BOB}"),)
    stream = channel.unary_stream(
        "/mesh.events.v1.EventService/Subscribe",
        request_serializer=epb.SubscribeRequest.SerializeToString,
        response_deserializer=epb.SubscribeResponse.FromString,
    )(request, metadata=metadata, timeout=10)
    seen = []
    try:
        async with aclosing(stream.__aiter__()) as messages:  # type: ignore[type-var]
            async for message in messages:
                if message.HasField("caught_up"):
                    break
                seen.append(message.event.id)
    except grpc.aio.AioRpcError as exc:
        return exc.code().name, from_rpc_error(exc).reason
    finally:
        stream.cancel()
    return "OK", seen


async def test_every_rpc_answers_another_owners_resource_with_its_code(secured: Running) -> None:
    alice = await client(secured, ProjectsClient, ALICE)
    created = await alice.create_project(a_project(owner=""), project_id="hers")
    event = await secured.wait_for_event("mesh.projects.v1.project.*", subject=created.name)
    name, eid = created.name, event.id
    root = await client(secured, EventsClient, ROOT)
    async with root.subscribe(group="g", subject=name, beginning=True) as deliveries:
        assert (await anext(deliveries)).event.id == eid
        await root.nack("g", eid, park=True)  # a dead letter of alice's in group g
    assert [d.event.id for d in (await root.dead_letters("g")).dead_letters] == [eid]
    hers = epb.Event(type="demo.v1.thing", source="test", attributes={"owner": "alice"})
    mask = FieldMask(paths=["display_name"])
    cases: dict[str, tuple[Message, type[Message], Callable[[Any], Any] | None]] = {
        PROJ + "GetProject": (pb.GetProjectRequest(name=name), pb.GetProjectResponse, None),
        PROJ + "BatchGetProjects": (
            pb.BatchGetProjectsRequest(names=[name]),
            pb.BatchGetProjectsResponse,
            None,
        ),
        PROJ + "ListProjects": (
            pb.ListProjectsRequest(),
            pb.ListProjectsResponse,
            lambda r: [p.name for p in r.projects],
        ),
        PROJ + "CountProjects": (
            pb.CountProjectsRequest(),
            pb.CountProjectsResponse,
            lambda r: r.count,
        ),
        PROJ + "CreateProject": (
            pb.CreateProjectRequest(project=a_project(owner="alice"), project_id="for-alice"),
            pb.CreateProjectResponse,
            None,
        ),
        PROJ + "UpdateProject": (
            pb.UpdateProjectRequest(
                project=pb.Project(name=name, display_name="x"), update_mask=mask
            ),
            pb.UpdateProjectResponse,
            None,
        ),
        PROJ + "DeleteProject": (
            pb.DeleteProjectRequest(name=name),
            pb.DeleteProjectResponse,
            None,
        ),
        PROJ + "UndeleteProject": (
            pb.UndeleteProjectRequest(name=name),
            pb.UndeleteProjectResponse,
            None,
        ),
        EVT + "Publish": (epb.PublishRequest(event=hers), epb.PublishResponse, None),
        EVT + "PublishBatch": (
            epb.PublishBatchRequest(events=[hers]),
            epb.PublishBatchResponse,
            None,
        ),
        EVT + "Ack": (epb.AckRequest(group="g", event_ids=[eid]), epb.AckResponse, None),
        EVT + "Nack": (epb.NackRequest(group="g", event_id=eid), epb.NackResponse, None),
        EVT + "GetEventStatus": (
            epb.GetEventStatusRequest(event_id=eid),
            epb.GetEventStatusResponse,
            None,
        ),
        EVT + "ListEvents": (
            epb.ListEventsRequest(),
            epb.ListEventsResponse,
            lambda r: [e.id for e in r.events],
        ),
        EVT + "ListDeadLetters": (
            epb.ListDeadLettersRequest(group="g"),
            epb.ListDeadLettersResponse,
            lambda r: [d.event.id for d in r.dead_letters],
        ),
        EVT + "ReplayDeadLetters": (
            epb.ReplayDeadLettersRequest(group="g", event_ids=[eid]),
            epb.ReplayDeadLettersResponse,
            None,
        ),
        ADM + "GetServiceSummary": (
            admin_pb2.GetServiceSummaryRequest(),
            admin_pb2.GetServiceSummaryResponse,
            None,
        ),
        ADM + "Ping": (admin_pb2.PingRequest(message="hi"), admin_pb2.PingResponse, None),
        ADM + "ClearCache": (admin_pb2.ClearCacheRequest(), admin_pb2.ClearCacheResponse, None),
        ADM + "ListAuditRecords": (
            admin_pb2.ListAuditRecordsRequest(resource=name),
            admin_pb2.ListAuditRecordsResponse,
            None,
        ),
    }
    expected = {
        PROJ + "GetProject": ("NOT_FOUND", "PROJECT_NOT_FOUND"),
        PROJ + "BatchGetProjects": ("NOT_FOUND", "PROJECT_NOT_FOUND"),
        PROJ + "ListProjects": ("OK", []),
        PROJ + "CountProjects": ("OK", 0),
        PROJ + "CreateProject": ("PERMISSION_DENIED", "OWNER_NOT_CALLER"),
        PROJ + "UpdateProject": ("NOT_FOUND", "PROJECT_NOT_FOUND"),
        PROJ + "DeleteProject": ("NOT_FOUND", "PROJECT_NOT_FOUND"),
        PROJ + "UndeleteProject": ("NOT_FOUND", "PROJECT_NOT_FOUND"),
        EVT + "Publish": ("PERMISSION_DENIED", "OWNER_NOT_CALLER"),
        EVT + "PublishBatch": ("PERMISSION_DENIED", "OWNER_NOT_CALLER"),
        EVT + "Subscribe": ("OK", []),
        EVT + "Ack": ("PERMISSION_DENIED", "EVENTS_ADMIN_REQUIRED"),
        EVT + "Nack": ("PERMISSION_DENIED", "EVENTS_ADMIN_REQUIRED"),
        EVT + "GetEventStatus": ("NOT_FOUND", "EVENT_NOT_FOUND"),
        EVT + "ListEvents": ("OK", []),
        EVT + "ListDeadLetters": ("OK", []),
        EVT + "ReplayDeadLetters": ("PERMISSION_DENIED", "MISSING_SCOPE"),
        ADM + "GetServiceSummary": ("PERMISSION_DENIED", "MISSING_SCOPE"),
        ADM + "WatchServiceStatus": ("PERMISSION_DENIED", "MISSING_SCOPE"),
        ADM + "Ping": ("PERMISSION_DENIED", "MISSING_SCOPE"),
        ADM + "ClearCache": ("PERMISSION_DENIED", "MISSING_SCOPE"),
        ADM + "ListAuditRecords": ("PERMISSION_DENIED", "MISSING_SCOPE"),
    }
    served = {
        f"/{m.containing_service.full_name}/{m.name}"
        for s in secured.server.services
        for m in s.descriptor.methods
    }
    assert served == set(expected)  # a new RPC needs its case here

    observed: dict[str, tuple[str, Any]] = {}
    async with grpc.aio.insecure_channel(secured.address) as channel:
        for path in sorted(served):
            if path == EVT + "Subscribe":
                start = epb.StartPosition(beginning=True)
                observed[path] = await subscribed(channel, epb.SubscribeRequest(start=start))
            elif path == ADM + "WatchServiceStatus":
                observed[path] = await subscribed_admin(channel)
            else:
                request, reply, view = cases[path]
                code, detail = await outcome(channel, path, request, reply)
                observed[path] = (code, view(detail) if code == "OK" and view else detail)
        # Joining the group that holds alice's event: a group shares every owner's events.
        joined = await subscribed(channel, epb.SubscribeRequest(group="g"))
    assert observed == expected
    assert joined == ("PERMISSION_DENIED", "EVENTS_ADMIN_REQUIRED")


async def subscribed_admin(channel: grpc.aio.Channel) -> tuple[str, Any]:
    stream = channel.unary_stream(
        "/mesh.admin.v1.AdminService/WatchServiceStatus",
        request_serializer=admin_pb2.WatchServiceStatusRequest.SerializeToString,
        response_deserializer=admin_pb2.WatchServiceStatusResponse.FromString,
    )(
        admin_pb2.WatchServiceStatusRequest(),
        metadata=(("authorization", f"Bearer {BOB}"),),
        timeout=10,
    )
    try:
        await stream.read()
    except grpc.aio.AioRpcError as exc:
        return exc.code().name, from_rpc_error(exc).reason
    finally:
        stream.cancel()
    return "OK", None
