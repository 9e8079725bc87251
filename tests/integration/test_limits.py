"""Load shedding and limits: past its capacity a server refuses at once, with the code and
reason the README documents, and health keeps answering."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import grpc
import pytest

from clients.admin import AdminClient
from clients.health import HealthClient
from core.calls.status import from_rpc_error
from core.config import ChannelSettings, LimitSettings, Settings
from core.errors import DeadlineExceededError, ResourceExhaustedError
from core.testing.services import FAST_START, Running, serving
from mesh.admin.v1 import admin_pb2, admin_pb2_grpc
from tests._services import ADMIN
from tests.integration._owners import AUTH, ROOT, bearer

ROOT2 = bearer("root-2", "admin")


@asynccontextmanager
async def limited(**limits: float) -> AsyncIterator[Running]:
    settings = Settings(
        address="127.0.0.1:0", start_policy=FAST_START, limits=LimitSettings(**limits)
    )
    async with serving(ADMIN, settings=settings) as running:
        yield running


async def test_calls_past_the_limit_are_refused_at_once_with_retry_info() -> None:
    async with (
        limited(max_calls=2) as running,
        AdminClient(running.address, attempts=1) as admin,
        HealthClient(running.address) as health,
    ):

        async def busy() -> object:
            # A probe below may hold a slot for an instant as a busy call arrives: that busy
            # call is refused and tries again, so both end up in progress.
            while True:
                try:
                    return await admin.ping("busy", delay=3.0)
                except ResourceExhaustedError:
                    await asyncio.sleep(0.01)

        busy_calls = [asyncio.create_task(busy()) for _ in range(2)]
        try:
            async with asyncio.timeout(10):  # the two are in progress once one is refused
                while True:
                    try:
                        await admin.ping("one more", timeout=2.0)
                    except ResourceExhaustedError as exc:
                        refused = exc
                        break
                    await asyncio.sleep(0.05)  # room for the busy calls to arrive
            assert refused.reason == "OVERLOADED"
            assert refused.retry_after == 1.0
            assert await health.check("", timeout=1.0) == "SERVING"  # probes still answered
        finally:
            results = await asyncio.gather(*busy_calls, return_exceptions=True)
        assert [r.message for r in results] == ["busy", "busy"]  # type: ignore[union-attr]
        assert (await admin.ping("room again")).message == "room again"


async def test_streams_past_the_limit_are_refused() -> None:
    async with limited(max_streams=1) as running, AdminClient(running.address) as admin:
        first = admin.watch_service_status()
        await anext(first)
        with pytest.raises(ResourceExhaustedError) as refused:
            await anext(admin.watch_service_status())
        assert refused.value.reason == "TOO_MANY_STREAMS"
        await first.aclose()


async def test_a_call_without_a_deadline_gets_the_servers_default() -> None:
    async with (
        limited(default_deadline=0.5) as running,
        grpc.aio.insecure_channel(running.address) as channel,
    ):
        ping = admin_pb2_grpc.AdminServiceStub(channel).Ping
        request = admin_pb2.PingRequest(message="slow")
        request.delay.FromMilliseconds(3000)
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await ping(request)  # no timeout: the call carries no deadline
        error = from_rpc_error(failed.value)
        assert isinstance(error, DeadlineExceededError)
        assert error.reason == "SERVER_DEADLINE_EXCEEDED"
        assert "MESH_DEFAULT_DEADLINE_SECONDS" in error.message


async def test_oversized_metadata_is_resource_exhausted() -> None:
    async with (
        limited(max_metadata_bytes=4096) as running,
        grpc.aio.insecure_channel(running.address) as channel,
    ):
        ping = admin_pb2_grpc.AdminServiceStub(channel).Ping
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await ping(admin_pb2.PingRequest(), metadata=(("x-big", "y" * 8000),), timeout=5)
        assert failed.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_an_oversized_request_is_resource_exhausted() -> None:
    settings = Settings(address="127.0.0.1:0", start_policy=FAST_START, max_message_bytes=1024)
    async with (
        serving(ADMIN, settings=settings) as running,
        grpc.aio.insecure_channel(running.address) as channel,
    ):
        ping = admin_pb2_grpc.AdminServiceStub(channel).Ping
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await ping(admin_pb2.PingRequest(message="z" * 4096), timeout=5)
        assert failed.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_each_principal_has_its_own_rate() -> None:
    settings = Settings(
        address="127.0.0.1:0",
        start_policy=FAST_START,
        auth=AUTH,
        limits=LimitSettings(rate_per_principal=2.0, rate_burst=3.0),
    )
    async with (
        serving(ADMIN, settings=settings) as running,
        AdminClient(running.address, attempts=1, channel=ChannelSettings(token=ROOT)) as root,
        AdminClient(running.address, attempts=1, channel=ChannelSettings(token=ROOT2)) as other,
        HealthClient(running.address) as health,
    ):
        for _ in range(3):  # the burst
            await root.ping("ok")
        with pytest.raises(ResourceExhaustedError) as refused:
            await root.ping("one too many")
        assert refused.value.reason == "RATE_LIMITED"
        assert 0 < refused.value.retry_after <= 0.5  # one call's worth at 2 a second
        assert (await other.ping("mine")).message == "mine"  # another principal's own bucket
        assert await health.check("", timeout=1.0) == "SERVING"  # probes are never counted
        await asyncio.sleep(refused.value.retry_after)
        assert (await root.ping("again")).message == "again"


async def test_callers_without_credentials_share_their_addresss_rate() -> None:
    async with (
        limited(rate_per_principal=1.0) as running,
        AdminClient(running.address, attempts=1) as first,
        AdminClient(running.address, attempts=1) as second,
    ):
        await first.ping("ok")
        with pytest.raises(ResourceExhaustedError) as refused:
            await second.ping("same address")
        assert refused.value.reason == "RATE_LIMITED"
