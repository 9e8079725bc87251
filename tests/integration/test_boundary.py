"""The error boundary: what a client sees when a handler fails or a request is garbage."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from structlog.testing import capture_logs

from clients.admin import AdminClient
from core.calls.status import DETAILS_KEY
from core.errors import (
    FieldViolation,
    InternalError,
    InvalidArgumentError,
    NotFoundError,
)
from core.runtime.boundary import Context
from core.runtime.server import Service
from mesh.admin.v1 import admin_pb2, admin_pb2_grpc
from servers.admin.servicer import AdminServicer
from tests.conftest import Running, add_server, make_container, running

SECRET = "postgresql://app:hunter2@10.0.0.7/prod"


class Faulty(AdminServicer):
    """Fails in the ways real handlers fail."""

    async def GetServiceSummary(
        self, request: admin_pb2.GetServiceSummaryRequest, context: Context
    ) -> admin_pb2.GetServiceSummaryResponse:
        raise RuntimeError(f"could not connect to {SECRET}")

    async def Ping(
        self, request: admin_pb2.PingRequest, context: Context
    ) -> admin_pb2.PingResponse:
        if request.message == "missing":
            raise NotFoundError("no such thing", reason="THING_NOT_FOUND", metadata={"id": "7"})
        raise InvalidArgumentError(
            "message is too long",
            reason="MESSAGE_TOO_LONG",
            violations=[FieldViolation("message", "at most 10 characters")],
        )

    async def WatchServiceStatus(
        self, request: admin_pb2.WatchServiceStatusRequest, context: Context
    ) -> AsyncIterator[admin_pb2.WatchServiceStatusResponse]:
        yield admin_pb2.WatchServiceStatusResponse()
        raise KeyError(SECRET)


@pytest.fixture
async def faulty() -> AsyncIterator[Running]:
    container = make_container()
    servicer = Faulty(container, service="t", version="0", grpc_services=list)
    descriptor = admin_pb2.DESCRIPTOR.services_by_name["AdminService"]
    service = Service(descriptor, servicer, admin_pb2_grpc.add_AdminServiceServicer_to_server)
    async with running(container, add_server(container, [service], admin=False)) as r:
        yield r


def _status(error: grpc.aio.AioRpcError) -> status_pb2.Status:
    raw = dict(error.trailing_metadata() or ())[DETAILS_KEY]
    assert isinstance(raw, bytes)
    return status_pb2.Status.FromString(raw)


async def test_unexpected_exception_is_internal_and_leaks_nothing(faulty: Running) -> None:
    async with grpc.aio.insecure_channel(faulty.address) as channel:
        stub = admin_pb2_grpc.AdminServiceStub(channel)
        with capture_logs() as logs, pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.GetServiceSummary(admin_pb2.GetServiceSummaryRequest())
    error = caught.value
    assert error.code() == grpc.StatusCode.INTERNAL
    assert error.details() == "internal error"
    everything = repr(error.trailing_metadata()) + repr(error.debug_error_string())
    for leak in ("hunter2", "RuntimeError", "postgresql", ".py"):
        assert leak not in everything + (error.details() or "")
    unexpected = [e for e in logs if e["event"] == "rpc.unexpected_error"]
    assert isinstance(unexpected[0]["exc_info"], RuntimeError)
    finished = [e for e in logs if e["event"] == "rpc.finished"]
    assert finished[0]["code"] == "INTERNAL"


async def test_internal_error_carries_error_info(faulty: Running) -> None:
    async with AdminClient(faulty.address) as admin:
        with capture_logs() as logs, pytest.raises(InternalError) as caught:
            await admin.get_service_summary()
    assert caught.value.reason == "INTERNAL"
    assert caught.value.message == "internal error"
    # Nothing but the generic message and what ties the answer to the server's log line.
    assert set(caught.value.metadata) == {"correlation_id"}
    unexpected = [e for e in logs if e["event"] == "rpc.unexpected_error"]
    assert unexpected[0]["correlation_id"] == caught.value.metadata["correlation_id"]


async def test_failure_mid_stream_is_internal_too(faulty: Running) -> None:
    async with AdminClient(faulty.address) as admin:
        with pytest.raises(InternalError):
            async for _ in admin.watch_service_status():
                pass


async def test_domain_error_maps_to_its_code_with_details(faulty: Running) -> None:
    async with grpc.aio.insecure_channel(faulty.address) as channel:
        stub = admin_pb2_grpc.AdminServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Ping(admin_pb2.PingRequest(message="x" * 20))
    error = caught.value
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    status = _status(error)
    info, bad = error_details_pb2.ErrorInfo(), error_details_pb2.BadRequest()
    assert status.details[0].Unpack(info)
    assert status.details[1].Unpack(bad)
    assert (info.reason, info.domain) == ("MESSAGE_TOO_LONG", "meshkit")
    assert [(v.field, v.description) for v in bad.field_violations] == [
        ("message", "at most 10 characters")
    ]


async def test_client_raises_the_same_domain_error(faulty: Running) -> None:
    async with AdminClient(faulty.address) as admin:
        with pytest.raises(NotFoundError) as caught:
            await admin.ping("missing")
    assert caught.value.reason == "THING_NOT_FOUND"
    assert caught.value.metadata == {"id": "7"}


@pytest.mark.parametrize(
    "method",
    ["/mesh.admin.v1.AdminService/Ping", "/mesh.admin.v1.AdminService/WatchServiceStatus"],
)
async def test_undecodable_request_is_invalid_argument(mesh: Running, method: str) -> None:
    async def send_garbage() -> None:
        async with grpc.aio.insecure_channel(mesh.address) as channel:
            if method.endswith("Ping"):
                await channel.unary_unary(method)(b"\xff\xff\xff\xff")
            else:
                async for _ in channel.unary_stream(method)(b"\xff\xff\xff\xff"):
                    pass

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await send_garbage()
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    info = error_details_pb2.ErrorInfo()
    _status(caught.value).details[0].Unpack(info)
    assert info.reason == "MALFORMED_REQUEST"


async def test_ping_validates_its_delay(mesh: Running) -> None:
    async with AdminClient(mesh.address) as admin:
        with pytest.raises(InvalidArgumentError) as caught:
            await admin.ping(delay=61)
        assert [v.field for v in caught.value.violations] == ["delay"]
        assert (await admin.ping("hello")).message == "hello"


async def test_unknown_method_is_unimplemented(mesh: Running) -> None:
    async with grpc.aio.insecure_channel(mesh.address) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await channel.unary_unary("/mesh.admin.v1.AdminService/Nope")(b"")
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
