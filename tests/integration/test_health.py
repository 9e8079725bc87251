"""grpc.health.v1 as Kubernetes and grpc_health_probe see it, over a real socket."""

from __future__ import annotations

import asyncio

import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from clients.health import HealthClient
from core.errors import NotFoundError
from core.runtime.health import Health
from core.runtime.health_service import LIVENESS, READINESS, HealthPublisher, HealthServicer
from core.runtime.lifecycle import Component, Status
from core.runtime.server import Service
from mesh.admin.v1 import admin_pb2, admin_pb2_grpc
from servers.admin.servicer import AdminServicer
from tests.conftest import Running, add_server, make_container, running

ADMIN = "mesh.admin.v1.AdminService"


class Dependency(Component):
    """A dependency whose health the test decides."""

    def __init__(self, name: str = "db") -> None:
        self.name = name
        self.health = Health.healthy()

    async def check_health(self) -> Health:
        return self.health


class Gate(Component):
    """Starts after the server and holds the container in STARTING until opened."""

    name = "gate"
    depends_on = ("grpc-server",)

    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self.opened = asyncio.Event()

    async def start(self) -> None:
        self.entered.set()
        await self.opened.wait()


async def wait_for(client: HealthClient, service: str, expected: str) -> None:
    async with asyncio.timeout(5):
        async for status in client.watch(service):
            if status == expected:
                return


@pytest.fixture
async def with_db() -> tuple[Running, Dependency]:  # type: ignore[misc]
    db = Dependency()
    container = make_container(db)
    descriptor = admin_pb2.DESCRIPTOR.services_by_name["AdminService"]
    extra = Service(
        descriptor,
        AdminServicer(container, service="t", version="0", grpc_services=list),
        admin_pb2_grpc.add_AdminServiceServicer_to_server,
        needs=("db",),
    )
    async with running(container, add_server(container, [extra], admin=False)) as r:
        yield r, db


async def test_overall_and_readiness_are_not_serving_until_the_container_runs() -> None:
    gate = Gate()
    container = make_container()
    server = add_server(container)
    container.register(gate)
    starting = asyncio.create_task(container.start())
    try:
        await asyncio.wait_for(gate.entered.wait(), 5)
        async with HealthClient(f"127.0.0.1:{server.port}") as client:
            assert await client.check("") == "NOT_SERVING"
            assert await client.check(READINESS) == "NOT_SERVING"
            assert await client.check(LIVENESS) == "SERVING"
            gate.opened.set()
            await starting
            await wait_for(client, "", "SERVING")
            assert await client.check(READINESS) == "SERVING"
    finally:
        gate.opened.set()
        await asyncio.gather(starting, return_exceptions=True)
        await container.stop()


async def test_the_stock_servicer_does_not_start_serving() -> None:
    servicer = HealthServicer()
    request = health_pb2.HealthCheckRequest(service="")
    response = await servicer.Check(request, None)
    assert response.status == health_pb2.HealthCheckResponse.NOT_SERVING


async def test_degraded_dependency_still_serves(with_db: tuple[Running, Dependency]) -> None:
    mesh, db = with_db
    async with HealthClient(mesh.address) as client:
        await wait_for(client, "", "SERVING")
        db.health = Health.degraded("replica lagging")
        await _until_health(mesh, "db", "DEGRADED")
        assert await client.check("") == "SERVING"
        assert await client.check(READINESS) == "SERVING"
        assert await client.check(ADMIN) == "SERVING"


async def test_unhealthy_dependency_stops_readiness_but_not_liveness(
    with_db: tuple[Running, Dependency],
) -> None:
    mesh, db = with_db
    async with HealthClient(mesh.address) as client:
        await wait_for(client, "", "SERVING")
        db.health = Health.unhealthy("database unreachable")
        await wait_for(client, READINESS, "NOT_SERVING")
        assert await client.check("") == "NOT_SERVING"
        assert await client.check(ADMIN) == "NOT_SERVING"
        assert await client.check(LIVENESS) == "SERVING"
        db.health = Health.healthy()
        await wait_for(client, READINESS, "SERVING")
        assert await client.check(ADMIN) == "SERVING"


async def test_liveness_fails_only_in_error() -> None:
    container = make_container()
    servicer = HealthServicer()
    publisher = HealthPublisher(servicer, container, {})
    await publisher.publish()
    assert servicer._server_status[LIVENESS] == health_pb2.HealthCheckResponse.SERVING
    await container.lifecycle.move(Status.ERROR, "test")
    await publisher.publish()
    assert servicer._server_status[LIVENESS] == health_pb2.HealthCheckResponse.NOT_SERVING


async def test_check_on_unknown_name_is_not_found(mesh: Running) -> None:
    async with HealthClient(mesh.address) as client:
        with pytest.raises(NotFoundError) as caught:
            await client.check("no.such.Service")
    assert caught.value.reason == "HEALTH_SERVICE_NOT_FOUND"


async def test_watch_on_unknown_name_sends_service_unknown_and_stays_open(mesh: Running) -> None:
    async with HealthClient(mesh.address) as client:
        stub = health_pb2_grpc.HealthStub(client.channel)
        call = stub.Watch(health_pb2.HealthCheckRequest(service="no.such.Service"))
        first = await asyncio.wait_for(call.read(), 5)
        assert first.status == health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
        next_message = asyncio.ensure_future(call.read())
        done, _ = await asyncio.wait({next_message}, timeout=0.3)
        assert not done  # still open, nothing more to say
        call.cancel()
        await asyncio.gather(next_message, return_exceptions=True)


async def test_list_reports_every_name(mesh: Running) -> None:
    async with HealthClient(mesh.address) as client:
        await wait_for(client, "", "SERVING")
        statuses = await client.list()
    assert statuses == {
        "": "SERVING",
        READINESS: "SERVING",
        LIVENESS: "SERVING",
        ADMIN: "SERVING",
    }


async def test_shutdown_sends_not_serving_then_ends_watch_streams_without_holding_grace() -> None:
    container = make_container()
    server = add_server(container, grace=30.0)
    await container.start()
    async with HealthClient(f"127.0.0.1:{server.port}") as client:
        await wait_for(client, "", "SERVING")
        watches = {
            name: asyncio.create_task(_collect(client, name))
            for name in ("", READINESS, "no.such.Service")
        }
        await asyncio.sleep(0.1)  # let the watches subscribe
        async with asyncio.timeout(10):  # far below the 30 s grace: the watches ended first
            await container.stop()
            results = {name: await task for name, task in watches.items()}
    assert results[""][-1] == "NOT_SERVING"
    assert results[READINESS][-1] == "NOT_SERVING"
    assert results["no.such.Service"] == ["SERVICE_UNKNOWN"]
    assert container.lifecycle.status is Status.STOPPED


async def _collect(client: HealthClient, service: str) -> list[str]:
    return [status async for status in client.watch(service)]


async def _until_health(mesh: Running, name: str, state: str) -> None:
    container = mesh.container
    async with asyncio.timeout(5):
        while True:
            changed = container.changes.waiter()
            if container.monitor.latest(container.get(name)).state.value == state:
                return
            await changed.wait()
