"""`mesh serve` with MESH_METRICS_ADDRESS: Prometheus text a real Prometheus can scrape."""

from __future__ import annotations

import asyncio
import urllib.request
from pathlib import Path

import grpc
from prometheus_client.parser import text_string_to_metric_families

from mesh.admin.v1 import admin_pb2, admin_pb2_grpc
from tests.mesh._processes import free_port, mesh_env, run_mesh, serving

PING = {"rpc_system": "grpc", "rpc_service": "mesh.admin.v1.AdminService", "rpc_method": "Ping"}


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        text: str = response.read().decode()
        return text


async def test_serve_exposes_rpc_durations_for_prometheus(tmp_path: Path) -> None:
    metrics_address = f"127.0.0.1:{free_port()}"
    env = mesh_env(MESH_DATA_DIR=str(tmp_path / "data"), MESH_METRICS_ADDRESS=metrics_address)
    async with serving("admin", env=env) as process:
        async with grpc.aio.insecure_channel(process.address) as channel:
            admin = admin_pb2_grpc.AdminServiceStub(channel)
            for _ in range(2):
                await admin.Ping(admin_pb2.PingRequest(message="hi"), timeout=10)
        text = await asyncio.to_thread(scrape, f"http://{metrics_address}/metrics")
        code, out, err = await run_mesh("status", "--address", process.address, env=env)
    families = {f.name: f for f in text_string_to_metric_families(text)}
    durations = families["rpc_server_duration_milliseconds"]
    assert durations.type == "histogram"
    counts = [
        s.value
        for s in durations.samples
        if s.name.endswith("_count") and PING.items() <= s.labels.items()
    ]
    assert counts == [2.0]
    ping_ok = [s for s in durations.samples if PING.items() <= s.labels.items()]
    assert {s.labels["rpc_grpc_status_code"] for s in ping_ok} == {"0"}
    assert any(s.labels.get("le") == "+Inf" for s in ping_ok)
    # `mesh status` prints the same calls from the admin summary.
    assert code == 0, err
    assert "AdminService/Ping" in out
