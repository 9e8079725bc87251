"""The server runner: ports, message sizes, start failures."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from clients.admin import AdminClient
from core.config import Settings, StartPolicy
from core.errors import ResourceExhaustedError
from core.runtime.container import Container, StartError
from core.runtime.lifecycle import Status
from core.runtime.server import GrpcServer
from tests.conftest import Running, add_server, make_container


async def test_a_taken_port_fails_at_start_with_a_clear_error(mesh: Running) -> None:
    container = make_container()
    settings = Settings(address=mesh.address)
    server = GrpcServer.for_container(container, [], settings)
    with pytest.raises(StartError, match="already in use"):
        await container.start()
    starts = [t for t in server.lifecycle.history if t.new is Status.STARTING]
    assert len(starts) == 1  # not worth retrying
    assert container.lifecycle.status is Status.ERROR


async def test_messages_over_the_configured_limit_are_refused() -> None:
    container = make_container()
    settings = Settings(address="127.0.0.1:0", max_message_bytes=1024)
    server = GrpcServer.for_container(container, [], settings)
    async with (
        container.running(),
        grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel,
    ):
        call = channel.unary_unary("/grpc.health.v1.Health/Check")(b"\x0a\x82\x08" + b"x" * 1026)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_client_outside_a_context_manager_is_refused() -> None:
    with pytest.raises(RuntimeError, match="async with"):
        await AdminClient("127.0.0.1:1").get_service_summary()


def test_resource_exhausted_is_a_domain_error() -> None:
    assert ResourceExhaustedError("x").code is grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_the_drain_is_not_cut_short_by_the_stop_timeout() -> None:
    container = Container(StartPolicy(stop_timeout=0.5), health_interval=0.05, health_timeout=0.5)
    server = add_server(container, grace=5.0)
    await container.start()
    async with AdminClient(f"127.0.0.1:{server.port}") as admin:
        in_flight = asyncio.create_task(admin.ping("slow", delay=1.5))
        await asyncio.sleep(0.3)  # the server gives no signal that a call has begun
        await container.stop()
        assert (await in_flight).message == "slow"
    assert server.status is Status.STOPPED
    assert container.lifecycle.status is Status.STOPPED
