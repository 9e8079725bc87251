"""`mesh serve` as a real process: start, answer, drain on SIGTERM, exit cleanly."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from clients.admin import AdminClient
from clients.health import HealthClient
from core.errors import CallCancelledError, DeadlineExceededError, UnavailableError

BIN = Path(sys.executable).parent
MESH = str(BIN / "mesh")


@dataclass
class Process:
    proc: asyncio.subprocess.Process
    address: str = ""
    logs: list[dict[str, object]] = field(default_factory=list)
    stderr: list[str] = field(default_factory=list)
    started_at: float = 0.0

    def events(self, name: str) -> list[dict[str, object]]:
        return [e for e in self.logs if e.get("event") == name]


async def _spawn(*args: str, env: dict[str, str] | None = None) -> Process:
    full_env = {**os.environ, "MESH_LOG_FORMAT": "json", **(env or {})}
    started = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(
        MESH, *args, env=full_env, stderr=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
    )
    return Process(proc, started_at=started)


async def _read_logs(process: Process, listening: asyncio.Event) -> None:
    assert process.proc.stderr is not None
    async for raw in process.proc.stderr:
        line = raw.decode()
        process.stderr.append(line)
        try:
            event = json.loads(line)
        except ValueError:
            continue
        process.logs.append(event)
        if event.get("event") == "server.listening":
            process.address = str(event["address"])
            listening.set()


@contextlib.asynccontextmanager
async def _serving(tmp_path: Path, **env: str) -> AsyncIterator[Process]:
    """`mesh serve` on 127.0.0.1:0; the test reads the real port from its log."""
    process = await _spawn(
        "serve",
        env={
            "MESH_ADDRESS": "127.0.0.1:0",
            "MESH_DATA_DIR": str(tmp_path),
            "MESH_GRACE_SECONDS": "10",
            **env,
        },
    )
    listening = asyncio.Event()
    reader = asyncio.create_task(_read_logs(process, listening))
    try:
        async with asyncio.timeout(30):
            await listening.wait()
        yield process
    finally:
        if process.proc.returncode is None:
            process.proc.kill()
        await process.proc.wait()
        await reader


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Process]:
    async with _serving(tmp_path) as process:
        yield process


async def _wait_serving(address: str) -> None:
    async with HealthClient(address) as health, asyncio.timeout(10):
        async for status in health.watch(""):
            if status == "SERVING":
                return


async def _exit_code(process: Process, within: float) -> int:
    async with asyncio.timeout(within):
        return await process.proc.wait()


async def test_serves_health_soon_after_start(served: Process) -> None:
    await _wait_serving(served.address)
    async with HealthClient(served.address) as health:
        assert await health.check("") == "SERVING"
        assert await health.check("readiness") == "SERVING"
        assert await health.check("liveness") == "SERVING"
    served.proc.send_signal(signal.SIGTERM)
    assert await _exit_code(served, 15) == 0


async def test_sigterm_drains_the_call_in_flight_then_exits_zero(served: Process) -> None:
    await _wait_serving(served.address)
    async with AdminClient(served.address) as admin, AdminClient(served.address) as late:
        in_flight = asyncio.create_task(admin.ping("drain me", delay=2.0))
        await asyncio.sleep(0.5)  # the server gives no signal that a call has begun
        served.proc.send_signal(signal.SIGTERM)
        with pytest.raises(NOT_SERVED):  # refused while draining
            await _ping_until_refused(late)
        for _ in range(3):  # and refused for good
            with pytest.raises(NOT_SERVED):
                await late.ping("still too late", timeout=2.0)
        response = await in_flight
    assert response.message == "drain me"
    assert await _exit_code(served, 10) == 0
    events = [e["event"] for e in served.logs]
    assert events.index("shutdown.requested") < events.index("server.draining")
    assert events[-1] == "shutdown.finished"


# How a call made after SIGTERM ends: refused by the draining server, cancelled with its
# connection, or (rarely, when the client's retry waits for a server that is going away)
# never served before its deadline.
NOT_SERVED = (UnavailableError, CallCancelledError, DeadlineExceededError)


async def _ping_until_refused(client: AdminClient) -> None:
    async with asyncio.timeout(10):
        while True:
            await client.ping("too late", timeout=2.0)


async def test_after_sigterm_new_calls_are_served_for_the_drain_delay(tmp_path: Path) -> None:
    async with _serving(tmp_path, MESH_DRAIN_DELAY_SECONDS="3") as served:
        await _wait_serving(served.address)
        served.proc.send_signal(signal.SIGTERM)
        async with HealthClient(served.address) as health:
            async with asyncio.timeout(2):  # readiness turns at once
                async for status in health.watch("readiness"):
                    if status == "NOT_SERVING":
                        break
            async with AdminClient(served.address) as late:  # a new connection, a new call
                assert (await late.ping("after SIGTERM", timeout=2.0)).message == "after SIGTERM"
        assert await _exit_code(served, 3 + 10 + 5) == 0
    events = [e["event"] for e in served.logs]
    order = ("shutdown.requested", "server.drain_delay", "server.draining", "shutdown.finished")
    assert [events.index(e) for e in order] == sorted(events.index(e) for e in order)


async def test_open_watch_streams_do_not_hold_the_grace_period(served: Process) -> None:
    await _wait_serving(served.address)
    statuses: list[str] = []
    async with HealthClient(served.address) as health:
        opened = asyncio.Event()

        async def watch() -> None:
            async for status in health.watch("readiness"):
                statuses.append(status)
                opened.set()

        watching = asyncio.create_task(watch())
        await asyncio.wait_for(opened.wait(), 5)
        served.proc.send_signal(signal.SIGTERM)
        # Far below the 10 s grace: the watch was ended, not waited out.
        assert await _exit_code(served, 5) == 0
        await asyncio.wait_for(watching, 5)
    assert statuses == ["SERVING", "NOT_SERVING"]


async def test_second_signal_exits_at_once(served: Process) -> None:
    await _wait_serving(served.address)
    async with AdminClient(served.address) as admin:
        in_flight = asyncio.create_task(admin.ping(delay=30.0))
        await asyncio.sleep(0.5)  # the server gives no signal that a call has begun
        served.proc.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.5)
        served.proc.send_signal(signal.SIGTERM)
        assert await _exit_code(served, 5) == 128 + signal.SIGTERM
        with pytest.raises(UnavailableError):
            await in_flight


async def test_a_taken_port_stops_the_start_with_a_clear_message(served: Process) -> None:
    second = await _spawn("serve", "--address", served.address)
    _, err = await asyncio.wait_for(second.proc.communicate(), 30)
    assert second.proc.returncode == 1
    assert b"already in use" in err


async def test_a_taken_port_given_with_address_does_not_point_at_mesh_address(
    served: Process,
) -> None:
    second = await _spawn("serve", "--address", served.address)
    _, err = await asyncio.wait_for(second.proc.communicate(), 30)
    assert b"choose another HOST:PORT" in err
    assert b"MESH_ADDRESS" not in err  # it was --address that named the port


async def test_a_malformed_setting_is_named() -> None:
    process = await _spawn("serve", env={"MESH_GRACE_SECONDS": "soon"})
    _, err = await asyncio.wait_for(process.proc.communicate(), 30)
    assert process.proc.returncode == 2
    assert b"MESH_GRACE_SECONDS='soon' is not valid" in err


async def test_an_unknown_service_is_refused_naming_the_known_ones() -> None:
    process = await _spawn("serve", "nope")
    _, err = await asyncio.wait_for(process.proc.communicate(), 30)
    assert process.proc.returncode == 2
    assert b"unknown service 'nope' (known: admin, events, projects)" in err


async def test_health_and_status_commands(served: Process) -> None:
    await _wait_serving(served.address)

    async def run(*args: str) -> tuple[int, str]:
        process = await _spawn(*args, "--address", served.address)
        out, err = await asyncio.wait_for(process.proc.communicate(), 30)
        assert process.proc.returncode is not None
        return process.proc.returncode, (out + err).decode()

    assert await run("health") == (0, '"": SERVING\n')
    assert await run("health", "--service", "liveness") == (0, "liveness: SERVING\n")
    code, text = await run("health", "--service", "nope")
    assert code == 1
    assert "NOT_FOUND" in text
    code, text = await run("status")
    assert code == 0
    assert "grpc-server" in text
    assert "RUNNING" in text
    code, text = await run("status", "--json")
    summary = json.loads(text)
    assert summary["status"] == "COMPONENT_STATUS_RUNNING"
    assert summary["healthy_components"] == summary["total_components"]  # proto field names
    assert "mesh.admin.v1.AdminService" in summary["grpc_services"]


async def test_health_command_fails_when_nothing_listens() -> None:
    process = await _spawn("health", "--address", "127.0.0.1:1")
    _, err = await asyncio.wait_for(process.proc.communicate(), 30)
    assert process.proc.returncode == 1
    assert b"UNAVAILABLE" in err


async def test_buf_curl_lists_and_calls_through_reflection(served: Process) -> None:
    await _wait_serving(served.address)
    base = ["curl", "--protocol", "grpc", "--http2-prior-knowledge"]
    url = f"http://{served.address}"
    listing = await asyncio.create_subprocess_exec(
        str(BIN / "buf"), *base, "--list-services", url, stdout=asyncio.subprocess.PIPE
    )
    out, _ = await asyncio.wait_for(listing.communicate(), 30)
    assert "mesh.admin.v1.AdminService" in out.decode().split()
    call = await asyncio.create_subprocess_exec(
        str(BIN / "buf"),
        *base,
        "--data",
        '{"message": "hi"}',
        f"{url}/mesh.admin.v1.AdminService/Ping",
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await asyncio.wait_for(call.communicate(), 30)
    assert json.loads(out)["message"] == "hi"
