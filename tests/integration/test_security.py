"""Every RPC of every service refuses callers without valid credentials or scopes.

The server requires tokens (HS256, an issuer and an audience). The RPCs are found by
iterating the served descriptors, so a new RPC is covered without a change here. Each
bad credential gets UNAUTHENTICATED with the same message and ErrorInfo, so a caller
learns nothing of which check failed; a valid token without the method's scope gets
PERMISSION_DENIED, reason MISSING_SCOPE. Streams fail before they send any message.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import jwt
import pytest
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.message_factory import GetMessageClass

from clients.admin import AdminClient
from clients.health import HealthClient
from clients.projects import ProjectsClient
from core.calls.status import from_rpc_error
from core.config import AuthSettings, ChannelSettings
from core.errors import NotFoundError, PermissionDeniedError, UnauthenticatedError
from core.security.access import access_rules
from core.security.guard import GENERIC_MESSAGE
from core.testing.credentials import claims, hs256_token
from core.testing.services import Running, serving, settings_for
from mesh.admin.v1 import admin_pb2
from mesh.projects.v1 import projects_pb2
from tests._services import ADMIN, EVENTS, PROJECTS

SECRET = "test-secret-of-at-least-thirty-two-bytes"
ISSUER = "https://issuer.test"
AUDIENCE = "mesh"
AUTH = AuthSettings(mode="required", jwt_secret=SECRET, issuer=ISSUER, audience=AUDIENCE)


def good(**values: Any) -> str:
    return hs256_token(SECRET, **({"sub": "alice", "iss": ISSUER, "aud": AUDIENCE} | values))


def _alg_none() -> str:
    return jwt.encode(claims(sub="alice", iss=ISSUER, aud=AUDIENCE), None, algorithm="none")


# Each bad credential: the `authorization` metadata sent (None: none at all).
BAD: dict[str, Callable[[], str | None]] = {
    "no token": lambda: None,
    "malformed": lambda: "Bearer not-a-jwt",
    "not bearer": lambda: "Basic YWxpY2U6c2VjcmV0",
    "empty bearer": lambda: "Bearer ",
    "bad signature": lambda: (
        "Bearer "
        + hs256_token("another-secret-of-thirty-two-bytes!!", sub="alice", iss=ISSUER, aud=AUDIENCE)
    ),
    "alg none": lambda: "Bearer " + _alg_none(),
    "expired": lambda: "Bearer " + good(exp=int(time.time()) - 3600, iat=0, nbf=0),
    "not yet valid": lambda: "Bearer " + good(nbf=int(time.time()) + 3600),
    "wrong audience": lambda: "Bearer " + good(aud="another-mesh"),
    "wrong issuer": lambda: "Bearer " + good(iss="https://evil.test"),
    "no subject": lambda: "Bearer " + hs256_token(SECRET, iss=ISSUER, aud=AUDIENCE),
}


@pytest.fixture
async def secured(tmp_path: Path) -> AsyncIterator[Running]:
    """Projects, events and admin in one process that requires tokens."""
    settings = replace(settings_for(f"sqlite+aiosqlite:///{tmp_path / 'm.db'}"), auth=AUTH)
    async with serving(ADMIN, PROJECTS, EVENTS, settings=settings) as running:
        yield running


def served_methods(running: Running) -> list[MethodDescriptor]:
    methods = [m for s in running.server.services for m in s.descriptor.methods]
    assert {m.containing_service.name for m in methods} >= {
        "ProjectService",
        "EventService",
        "AdminService",
    }
    return methods


async def call(
    channel: grpc.aio.Channel, method: MethodDescriptor, header: str | None
) -> list[Any]:
    """Calls `method` with an empty request; returns the messages it answered with."""
    path = f"/{method.containing_service.full_name}/{method.name}"
    request = GetMessageClass(method.input_type)()
    response = GetMessageClass(method.output_type)
    metadata = (("authorization", header),) if header is not None else None
    if method.client_streaming:
        raise AssertionError(f"{path}: no client-streaming RPC is expected")
    if method.server_streaming:
        stream = channel.unary_stream(
            path,
            request_serializer=type(request).SerializeToString,
            response_deserializer=response.FromString,
        )(request, metadata=metadata, timeout=10)
        received = []
        async for message in stream:
            received.append(message)
        return received
    unary = channel.unary_unary(
        path,
        request_serializer=type(request).SerializeToString,
        response_deserializer=response.FromString,
    )
    return [await unary(request, metadata=metadata, timeout=10)]


@pytest.mark.parametrize("case", list(BAD))
async def test_every_rpc_refuses_bad_credentials_with_one_answer(
    secured: Running, case: str
) -> None:
    header = BAD[case]()
    async with grpc.aio.insecure_channel(secured.address) as channel:
        for method in served_methods(secured):
            received: list[Any] = []
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                received = await call(channel, method, header)
            assert received == [], method.full_name  # a stream sent nothing first
            assert failed.value.code() is grpc.StatusCode.UNAUTHENTICATED, method.full_name
            error = from_rpc_error(failed.value)
            assert isinstance(error, UnauthenticatedError)
            # The same answer whatever was wrong: nothing tells which check failed.
            assert (error.message, error.reason, error.metadata) == (
                GENERIC_MESSAGE,
                "UNAUTHENTICATED",
                {},
            ), method.full_name
            assert failed.value.details() == GENERIC_MESSAGE


async def test_every_rpc_refuses_a_token_without_its_scope(secured: Running) -> None:
    rules = access_rules(s.descriptor for s in secured.server.services)
    header = "Bearer " + good(scope="nothing.useful")
    async with grpc.aio.insecure_channel(secured.address) as channel:
        for method in served_methods(secured):
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                assert await call(channel, method, header) == []
            assert failed.value.code() is grpc.StatusCode.PERMISSION_DENIED, method.full_name
            error = from_rpc_error(failed.value)
            assert isinstance(error, PermissionDeniedError)
            assert error.reason == "MISSING_SCOPE"
            path = f"/{method.containing_service.full_name}/{method.name}"
            assert error.metadata["scope"] == " ".join(rules[path].scopes)


async def test_a_token_with_the_scope_reaches_the_handler(secured: Running) -> None:
    reader = ChannelSettings(token=good(scope="projects.read"))
    async with ProjectsClient(secured.address, channel=reader) as projects:
        with pytest.raises(NotFoundError):  # past the guard: the handler answered
            await projects.get_project("projects/absent")
        with pytest.raises(PermissionDeniedError) as denied:
            await projects.create_project(projects_pb2.Project(display_name="Demo"))
    assert denied.value.metadata == {
        "scope": "projects.write",
        "method": "/mesh.projects.v1.ProjectService/CreateProject",
    }


async def test_scopes_come_from_scope_or_scp_and_admin_holds_every_one(secured: Running) -> None:
    for token in (
        good(scp=["admin.read"]),
        good(scope="events.read admin.read"),
        good(scope="admin"),
    ):
        async with AdminClient(secured.address, channel=ChannelSettings(token=token)) as admin:
            assert (await admin.ping("hi")).message == "hi"


async def test_an_authorized_stream_sends_and_an_unauthorized_one_sends_nothing(
    secured: Running,
) -> None:
    method = admin_pb2.DESCRIPTOR.services_by_name["AdminService"].methods_by_name[
        "WatchServiceStatus"
    ]
    async with grpc.aio.insecure_channel(secured.address) as channel:
        path = "/mesh.admin.v1.AdminService/WatchServiceStatus"
        watch = channel.unary_stream(
            path,
            request_serializer=admin_pb2.WatchServiceStatusRequest.SerializeToString,
            response_deserializer=admin_pb2.WatchServiceStatusResponse.FromString,
        )
        stream = watch(
            admin_pb2.WatchServiceStatusRequest(),
            metadata=(("authorization", "Bearer " + good(scope="admin.read")),),
        )
        first = await stream.read()
        assert isinstance(first, admin_pb2.WatchServiceStatusResponse)
        stream.cancel()
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await call(channel, method, None)
    assert failed.value.code() is grpc.StatusCode.UNAUTHENTICATED


async def test_health_and_reflection_need_no_credentials(secured: Running) -> None:
    async with HealthClient(secured.address) as health:
        assert await health.check("mesh.projects.v1.ProjectService") == "SERVING"
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    async with grpc.aio.insecure_channel(secured.address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        async for answer in stub.ServerReflectionInfo(iter([request])):
            names = {s.name for s in answer.list_services_response.service}
            break
    assert "mesh.projects.v1.ProjectService" in names


async def test_the_rejection_reason_is_logged_on_the_server_only(secured: Running) -> None:
    from structlog.testing import capture_logs

    expired = good(exp=int(time.time()) - 3600, iat=0, nbf=0)
    with capture_logs() as logs:
        async with ProjectsClient(secured.address, channel=ChannelSettings(token=expired)) as p:
            with pytest.raises(UnauthenticatedError) as failed:
                await p.get_project("projects/absent")
    assert "expired" not in failed.value.message.lower()
    rejected = [e for e in logs if e["event"] == "auth.rejected"]
    assert rejected
    assert "ExpiredSignatureError" in rejected[0]["cause"]
    assert expired not in str(logs)  # the token itself is never logged


@pytest.mark.parametrize("mode", ["optional", "off"])
async def test_without_required_auth_a_call_without_token_runs(tmp_path: Path, mode: str) -> None:
    """Optional: no token runs unauthenticated, a bad one is refused. Off: nothing checked."""
    auth = replace(AUTH, mode=mode)
    settings = replace(settings_for(f"sqlite+aiosqlite:///{tmp_path / 'p.db'}"), auth=auth)
    bad = ChannelSettings(token=good(aud="another-mesh"))
    async with serving(PROJECTS, settings=settings) as running:
        async with ProjectsClient(running.address) as anonymous:
            with pytest.raises(NotFoundError):
                await anonymous.get_project("projects/absent")
        async with ProjectsClient(running.address, channel=bad) as client:
            if mode == "optional":
                with pytest.raises(UnauthenticatedError):
                    await client.get_project("projects/absent")
            else:
                with pytest.raises(NotFoundError):
                    await client.get_project("projects/absent")


async def test_an_optional_server_without_a_token_key_ignores_tokens(tmp_path: Path) -> None:
    """A client configured with a token may call a server that checks none."""
    settings = settings_for(f"sqlite+aiosqlite:///{tmp_path / 'p.db'}")  # optional, no key
    async with (
        serving(PROJECTS, settings=settings) as running,
        ProjectsClient(running.address, channel=ChannelSettings(token="opaque")) as client,
    ):
        with pytest.raises(NotFoundError):
            await client.get_project("projects/absent")


async def test_a_client_stream_sends_the_token_and_fails_without_it(secured: Running) -> None:
    reader = ChannelSettings(token=good(scope="admin.read"))
    async with (
        AdminClient(secured.address, channel=reader) as admin,
        aclosing(admin.watch_service_status()) as stream,
    ):
        summary = await anext(stream)
    assert summary.components
    async with AdminClient(secured.address) as anonymous:
        with pytest.raises(UnauthenticatedError):
            async with aclosing(anonymous.watch_service_status()) as stream:
                await anext(stream)
