"""AdminService over a real socket: the summary and its stream."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration

from clients.admin import AdminClient
from core.runtime.health import Health
from core.runtime.lifecycle import Component
from mesh.admin.v1 import admin_pb2, admin_pb2_grpc
from tests.conftest import add_server, make_container, running


class Cache(Component):
    name = "cache"
    version = "7.0"
    groups = ("storage",)

    def __init__(self) -> None:
        self.health = Health.healthy()

    async def check_health(self) -> Health:
        return self.health


async def test_summary_lists_every_component_with_its_facts() -> None:
    cache = Cache()
    container = make_container(cache)
    async with (
        running(container, add_server(container)) as mesh,
        AdminClient(mesh.address) as admin,
    ):
        summary = await admin.get_service_summary()
    assert summary.status == admin_pb2.COMPONENT_STATUS_RUNNING
    assert summary.health == admin_pb2.HEALTH_STATE_HEALTHY
    assert (summary.total_components, summary.healthy_components) == (2, 2)
    assert summary.health_score == 100
    assert list(summary.grpc_services) == ["mesh.admin.v1.AdminService"]
    assert [t.new_status for t in summary.transitions] == [
        admin_pb2.COMPONENT_STATUS_STARTING,
        admin_pb2.COMPONENT_STATUS_RUNNING,
    ]
    by_name = {c.name: c for c in summary.components}
    assert list(by_name) == ["grpc-server", "cache"]  # in start order: the port opens first
    assert by_name["cache"].version == "7.0"
    assert list(by_name["cache"].groups) == ["storage"]
    assert list(by_name["grpc-server"].dependencies) == []
    assert by_name["cache"].uptime.ToTimedelta().total_seconds() > 0
    transitions = [(t.old_status, t.new_status) for t in by_name["cache"].transitions]
    assert transitions == [
        (admin_pb2.COMPONENT_STATUS_STOPPED, admin_pb2.COMPONENT_STATUS_STARTING),
        (admin_pb2.COMPONENT_STATUS_STARTING, admin_pb2.COMPONENT_STATUS_RUNNING),
    ]


async def test_summary_reports_a_degraded_component_with_its_reason() -> None:
    cache = Cache()
    cache.health = Health.degraded("redis unreachable", errors="3")
    container = make_container(cache)
    async with (
        running(container, add_server(container)) as mesh,
        AdminClient(mesh.address) as admin,
        asyncio.timeout(5),
    ):
        async for summary in admin.watch_service_status():
            if summary.health == admin_pb2.HEALTH_STATE_DEGRADED:
                break
    report = next(c for c in summary.components if c.name == "cache").health
    assert report.reason == "redis unreachable"
    assert dict(report.details) == {"errors": "3"}
    assert summary.health_score == 75
    assert summary.healthy_components == 1
    assert summary.overall.reason == "cache: redis unreachable"
    states = [h.state for h in summary.health_history]
    assert states[-1] == admin_pb2.HEALTH_STATE_DEGRADED


async def test_watch_streams_changes_and_ends_at_shutdown() -> None:
    cache = Cache()
    container = make_container(cache)
    mesh_cm = running(container, add_server(container, grace=30.0))
    mesh = await mesh_cm.__aenter__()
    seen: list[int] = []
    first = asyncio.Event()
    async with AdminClient(mesh.address) as admin:

        async def watch() -> None:
            async for summary in admin.watch_service_status():
                seen.append(summary.status)
                first.set()

        watching = asyncio.create_task(watch())
        async with asyncio.timeout(10):
            await first.wait()
            cache.health = Health.unhealthy("down")
            await mesh_cm.__aexit__(None, None, None)
            await watching
    assert seen[0] == admin_pb2.COMPONENT_STATUS_RUNNING
    assert admin_pb2.COMPONENT_STATUS_STOPPING in seen


async def test_a_ping_delay_beyond_any_timedelta_is_invalid_argument() -> None:
    # Found by the fuzzer (tests/fuzz): this Duration overflowed ToTimedelta, INTERNAL.
    container = make_container()
    async with (
        running(container, add_server(container)) as mesh,
        grpc.aio.insecure_channel(mesh.address) as channel,
    ):
        stub = admin_pb2_grpc.AdminServiceStub(channel)
        huge = Duration(seconds=-129963207659323, nanos=-846)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Ping(admin_pb2.PingRequest(delay=huge), timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "delay" in (caught.value.details() or "")
