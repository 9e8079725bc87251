"""The plaintext probe port beside a TLS main port, reflection switched off, the production
warning for a plaintext main port, and the profile and overrides in the admin summary."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from structlog.testing import capture_logs

from clients.admin import AdminClient
from clients.health import HealthClient
from core.config import ChannelSettings, Settings, TlsSettings
from core.runtime.container import StartError
from core.testing.services import FAST_START, serving
from core.variables import Override
from mesh.admin.v1 import admin_pb2, admin_pb2_grpc
from tests._services import ADMIN
from tests.conftest import Running

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@dataclass(frozen=True)
class Certificate:
    cert: Path
    key: Path

    @property
    def tls(self) -> TlsSettings:
        return TlsSettings(cert_file=str(self.cert), key_file=str(self.key))

    @property
    def trusting(self) -> ChannelSettings:
        return ChannelSettings(tls=TlsSettings(ca_file=str(self.cert)))


@pytest.fixture
async def certificate(tmp_path: Path) -> Certificate:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    openssl = await asyncio.create_subprocess_exec(
        *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
        *("-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost"),
        *("-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(30):
        _, err = await openssl.communicate()
    assert openssl.returncode == 0, err.decode()
    return Certificate(cert, key)


def _settings(**values: object) -> Settings:
    base: dict[str, object] = {
        "address": "127.0.0.1:0",
        "grace_seconds": 2.0,
        "start_policy": FAST_START,
        "health_interval": 0.05,
        "health_timeout": 0.5,
    }
    return Settings(**(base | values))  # type: ignore[arg-type]


@pytest.fixture
async def tls_with_probe(certificate: Certificate) -> AsyncIterator[Running]:
    settings = _settings(tls=certificate.tls, probe_address="127.0.0.1:0")
    async with serving(ADMIN, settings=settings) as running:
        yield running


def _probe_address(running: Running) -> str:
    assert running.server.probe_port > 0
    return f"127.0.0.1:{running.server.probe_port}"


async def test_the_probe_port_answers_health_in_plaintext_beside_a_tls_port(
    tls_with_probe: Running, certificate: Certificate
) -> None:
    async with grpc.aio.insecure_channel(_probe_address(tls_with_probe)) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for name in ("", "readiness", "liveness", "mesh.admin.v1.AdminService"):
            request = health_pb2.HealthCheckRequest(service=name)
            assert (await health.Check(request, timeout=5)).status == SERVING, name
        watch = health.Watch(health_pb2.HealthCheckRequest(service="readiness"), timeout=5)
        assert (await watch.read()).status == SERVING
        watch.cancel()
    # The main port is TLS only, and answers the same.
    async with HealthClient(tls_with_probe.address, channel=certificate.trusting) as main:
        assert await main.check("readiness") == "SERVING"
    async with grpc.aio.insecure_channel(tls_with_probe.address) as plaintext:
        health = health_pb2_grpc.HealthStub(plaintext)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await health.Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_the_probe_port_serves_nothing_but_health(tls_with_probe: Running) -> None:
    async with grpc.aio.insecure_channel(_probe_address(tls_with_probe)) as channel:
        admin = admin_pb2_grpc.AdminServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await admin.GetServiceSummary(admin_pb2.GetServiceSummaryRequest(), timeout=5)
        assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
        await _assert_no_reflection(channel)


async def _assert_no_reflection(channel: grpc.aio.Channel) -> None:
    reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    call = reflection.ServerReflectionInfo(iter([request]), timeout=5)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call.read()
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_the_probe_port_says_not_serving_at_shutdown(certificate: Certificate) -> None:
    settings = _settings(tls=certificate.tls, probe_address="127.0.0.1:0")
    statuses: list[int] = []
    async with AsyncExitStack() as stack:
        server = AsyncExitStack()
        stack.push_async_callback(server.aclose)  # after the channel: see below
        running = await server.enter_async_context(serving(ADMIN, settings=settings))
        channel = await stack.enter_async_context(
            grpc.aio.insecure_channel(_probe_address(running))
        )
        watch = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(service="readiness"), timeout=10
        )
        statuses.append((await watch.read()).status)
        await server.aclose()  # stops the server: the watch gets NOT_SERVING, then ends
        async with asyncio.timeout(10):
            while (response := await watch.read()) is not grpc.aio.EOF:
                statuses.append(response.status)
    assert statuses == [SERVING, NOT_SERVING]


async def test_reflection_can_be_switched_off() -> None:
    async with (
        serving(ADMIN, settings=_settings(reflection=False)) as running,
        grpc.aio.insecure_channel(running.address) as channel,
    ):
        await _assert_no_reflection(channel)


@pytest.mark.parametrize(
    ("profile", "with_tls", "warned"),
    [("production", False, True), ("production", True, False), ("development", False, False)],
)
async def test_production_warns_when_the_main_port_is_plaintext(
    certificate: Certificate, profile: str, with_tls: bool, warned: bool
) -> None:
    tls = certificate.tls if with_tls else TlsSettings()
    with capture_logs() as logs:
        async with serving(ADMIN, settings=_settings(profile=profile, tls=tls)):
            pass
    warnings = [e for e in logs if e["event"] == "server.plaintext"]
    assert len(warnings) == int(warned)
    if warned:
        assert warnings[0]["log_level"] == "warning"
        assert "MESH_TLS_CERT_FILE" in str(warnings[0]["hint"])


async def test_the_summary_shows_the_profile_and_the_overrides_without_secrets() -> None:
    overrides = (
        Override("MESH_AUTH", "off"),
        # A secret's value never reaches the wire, even when one was left in an Override.
        Override("MESH_TOKEN", "hunter2", secret=True),
    )
    settings = _settings(profile="production", overrides=overrides)
    async with (
        serving(ADMIN, settings=settings) as running,
        AdminClient(running.address) as admin,
    ):
        summary = await admin.get_service_summary()
    assert summary.profile == "production"
    assert [(o.name, o.value, o.secret) for o in summary.overrides] == [
        ("MESH_AUTH", "off", False),
        ("MESH_TOKEN", "", True),
    ]
    assert b"hunter2" not in summary.SerializeToString()


async def test_a_taken_probe_port_stops_the_start_with_a_clear_message() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        with pytest.raises(StartError, match=f"cannot listen on {address}: the address is"):
            async with serving(ADMIN, settings=_settings(probe_address=address)):
                pass
