"""Retries, deadlines, the circuit breaker, keepalive and TLS against replicas in processes.

The replica (tests/mesh/_replica.py) answers the real `ProjectsClient` with probe
behaviour chosen by the request; tries are counted from its `rpc.finished` log lines.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import grpc
import pytest
from structlog.testing import capture_logs

import core.calls.deadlines
from clients.admin import AdminClient
from clients.base import SERVER_DROPPED_CALL
from clients.projects import Project, ProjectsClient, Resilience
from core.calls.breaker import BreakerState, CircuitBreaker, forget_breakers
from core.config import ChannelSettings, TlsSettings
from core.errors import DeadlineExceededError, NotFoundError, UnavailableError
from tests.conftest import PG_ADMIN_DSN
from tests.mesh._processes import (
    MeshProcess,
    free_port,
    fresh_database,
    pg_url,
    replica,
    wait_log,
)

pytestmark = pytest.mark.timeout(90)
FAST_RETRIES = Resilience(attempts=4, initial_backoff=0.01, max_backoff=0.05)
PROJECTS = "/mesh.projects.v1.ProjectService/"
PING = "/mesh.admin.v1.AdminService/Ping"


@pytest.fixture
async def probe() -> AsyncIterator[MeshProcess]:
    async with replica(MESH_SERVICE_NAME="probe") as process:
        yield process


async def tries(process: MeshProcess, method: str) -> int:
    """The calls of `method` the replica finished before a marker call made now."""
    async with AdminClient(process.address) as admin:
        await admin.ping("marker")
    async with asyncio.timeout(10):  # its log line comes after those of earlier calls
        while PING not in (lines := [str(e["rpc"]) for e in process.events("rpc.finished")]):  # noqa: ASYNC110
            await asyncio.sleep(0.02)
    return lines[: lines.index(PING)].count(PROJECTS + method)


# -- retries ---------------------------------------------------------------------------------


async def test_an_idempotent_call_is_retried_on_unavailable(probe: MeshProcess) -> None:
    async with ProjectsClient(probe.address, resilience=FAST_RETRIES) as projects:
        with pytest.raises(UnavailableError) as caught:
            await projects.get_project("projects/unavailable")

    assert caught.value.reason == "PROBE"
    assert await tries(probe, "GetProject") == FAST_RETRIES.attempts


async def test_a_call_that_is_not_idempotent_is_tried_once(probe: MeshProcess) -> None:
    async with ProjectsClient(probe.address, resilience=FAST_RETRIES) as projects:
        with pytest.raises(UnavailableError):
            await projects.delete_project("projects/unavailable")

    assert await tries(probe, "DeleteProject") == 1


async def test_a_call_dropped_unanswered_is_unavailable_and_retried_if_idempotent(
    probe: MeshProcess,
) -> None:
    async with ProjectsClient(probe.address, resilience=FAST_RETRIES) as projects:
        with pytest.raises(UnavailableError) as read:
            await projects.get_project("projects/dropped")
        with pytest.raises(UnavailableError) as delete:
            await projects.delete_project("projects/dropped")

    assert read.value.reason == delete.value.reason == SERVER_DROPPED_CALL
    assert await tries(probe, "GetProject") == FAST_RETRIES.attempts
    assert await tries(probe, "DeleteProject") == 1


async def test_retries_stop_at_the_deadline(probe: MeshProcess) -> None:
    patient = Resilience(attempts=5, initial_backoff=0.01, max_backoff=0.05)
    async with ProjectsClient(probe.address, resilience=patient) as projects:
        with pytest.raises(DeadlineExceededError):
            # Each try takes 0.3 s, so five cannot fit in 0.5 s on any machine.
            await projects.get_project("projects/slow-unavailable", timeout=0.5)

    assert 1 <= await tries(probe, "GetProject") < patient.attempts


# -- deadlines -------------------------------------------------------------------------------


async def test_a_server_past_the_deadline_is_cancelled_and_rolls_back() -> None:
    async with fresh_database() as database, replica(MESH_DATABASE_URL=pg_url(database)) as server:
        async with ProjectsClient(server.address) as projects:
            await projects.create_project(Project(description="0"), project_id="quick")
            with pytest.raises(DeadlineExceededError):
                await projects.create_project(
                    Project(description="30"), project_id="late", timeout=1.0
                )
        await wait_log(server, "probe.cancelled")
        rows = await _rows(database)

    assert [e["row"] for e in server.events("probe.inserted")] == ["quick", "late"]
    assert [e["row"] for e in server.events("probe.cancelled")] == ["late"]
    assert rows == ["quick"]  # the late insert was rolled back, never committed


async def _rows(database: str) -> list[str]:
    conn = await asyncpg.connect(PG_ADMIN_DSN.rsplit("/", 1)[0] + f"/{database}", timeout=10)
    try:
        return [r["id"] for r in await conn.fetch("select id from probe_rows order by id")]
    finally:
        await conn.close()


async def test_a_handler_passes_on_its_remaining_time_never_more() -> None:
    async with (
        replica(MESH_SERVICE_NAME="second") as second,
        replica(MESH_SERVICE_NAME="first", MESH_TEST_NEXT_ADDRESS=second.address) as first,
        ProjectsClient(first.address) as projects,
    ):
        # `first` asks `second` with a 60 s timeout of its own; 3 s is all it may pass on.
        relayed = await projects.update_project(Project(name="projects/x"), timeout=3.0)

    assert 0 < float(relayed.description) <= 3.0


async def test_a_call_made_after_the_propagated_deadline_is_not_sent() -> None:
    nobody = f"127.0.0.1:{free_port()}"  # a call that went out would be UNAVAILABLE

    async def in_a_handler_out_of_time() -> None:
        core.calls.deadlines._deadline.set(time.monotonic() - 0.1)
        async with ProjectsClient(nobody) as projects:
            await projects.get_project("projects/any", timeout=60)

    with pytest.raises(DeadlineExceededError) as caught:
        await asyncio.create_task(in_a_handler_out_of_time(), context=contextvars.copy_context())

    assert caught.value.reason == "DEADLINE_PROPAGATED"


# -- the circuit breaker ---------------------------------------------------------------------


async def test_the_breaker_opens_fails_fast_half_opens_and_closes(probe: MeshProcess) -> None:
    forget_breakers()
    quick_breaker = Resilience(attempts=1, breaker_failures=3, breaker_reset=1.0)
    async with ProjectsClient(probe.address, resilience=quick_breaker) as projects:
        breaker = projects.breaker
        assert breaker is not None
        with capture_logs() as logs:
            for _ in range(3):  # too slow: the server sleeps past each deadline
                with pytest.raises(DeadlineExceededError):
                    await projects.get_project("projects/sleep", timeout=0.2)
            with pytest.raises(UnavailableError) as fast:
                await projects.get_project("projects/remaining")
            opened = breaker.state

            await _wait_state(breaker, BreakerState.HALF_OPEN)
            with pytest.raises(DeadlineExceededError):  # a failed trial opens it again
                await projects.get_project("projects/sleep", timeout=0.2)
            reopened = breaker.state

            await _wait_state(breaker, BreakerState.HALF_OPEN)
            with pytest.raises(NotFoundError):  # an answer: the trial succeeds
                await projects.get_project("projects/missing")

    assert (fast.value.reason, fast.value.metadata["target"]) == ("CIRCUIT_OPEN", probe.address)
    assert (opened, reopened, breaker.state) == (
        BreakerState.OPEN,
        BreakerState.OPEN,
        BreakerState.CLOSED,
    )
    assert breaker.opened == 2
    assert [e["event"] for e in logs if e["event"].startswith("breaker.")] == [
        "breaker.opened",
        "breaker.opened",
        "breaker.closed",
    ]


async def _wait_state(breaker: CircuitBreaker, state: BreakerState) -> None:
    async with asyncio.timeout(10):
        while breaker.state is not state:  # noqa: ASYNC110 (the state turns with the clock)
            await asyncio.sleep(0.05)


async def test_a_target_nobody_listens_on_opens_the_breaker() -> None:
    forget_breakers()
    nobody = f"127.0.0.1:{free_port()}"
    settings = Resilience(attempts=1, breaker_failures=2, breaker_reset=60.0)
    async with ProjectsClient(nobody, resilience=settings) as projects:
        for _ in range(2):
            with pytest.raises(UnavailableError) as refused:
                await projects.get_project("projects/any")
            assert refused.value.reason == "UNAVAILABLE"
        with pytest.raises(UnavailableError) as fast:
            await projects.get_project("projects/any")

    assert fast.value.reason == "CIRCUIT_OPEN"


async def test_answers_with_a_reason_do_not_open_the_breaker(probe: MeshProcess) -> None:
    forget_breakers()
    settings = Resilience(attempts=1, breaker_failures=2)
    async with ProjectsClient(probe.address, resilience=settings) as projects:
        for _ in range(4):  # a server that is up says its dependency is down
            with pytest.raises(UnavailableError) as caught:
                await projects.get_project("projects/unavailable")
            assert caught.value.reason == "PROBE"

    assert projects.breaker is not None
    assert projects.breaker.state is BreakerState.CLOSED


async def test_a_client_waits_until_a_server_is_ready(tmp_path: Path) -> None:
    flag = tmp_path / "health"
    flag.write_text("unhealthy")
    async with (
        replica(MESH_TEST_HEALTH_FILE=str(flag)) as server,
        ProjectsClient(server.address) as projects,
    ):
        with pytest.raises(UnavailableError) as early:
            await projects.wait_ready(0.5)
        flag.write_text("healthy")
        await projects.wait_ready(20)
        answer = await projects.get_project("projects/remaining")

    assert early.value.reason == "NOT_READY"
    assert float(answer.description) > 0


# -- keepalive -------------------------------------------------------------------------------


async def _stays_ready(address: str, settings: ChannelSettings, idle: float) -> bool:
    """Whether an idle channel stays READY for `idle` seconds (no GOAWAY, no reconnect)."""
    async with AdminClient(address, channel=settings) as admin:
        await admin.ping("connect")
        channel = admin.channel
        assert channel.get_state() is grpc.ChannelConnectivity.READY
        try:
            async with asyncio.timeout(idle):
                await channel.wait_for_state_change(grpc.ChannelConnectivity.READY)
        except TimeoutError:
            return True
        return False


async def test_keepalive_pings_on_an_idle_channel_keep_it_open() -> None:
    pinging = ChannelSettings(keepalive=0.5, keepalive_timeout=2.0)
    async with replica(MESH_KEEPALIVE_SECONDS="0.5") as server:
        stays = await _stays_ready(server.address, pinging, idle=4.0)

    assert stays
    assert not [line for line in server.stderr if "too_many_pings" in line]


async def test_a_server_that_allows_fewer_pings_closes_the_connection() -> None:
    """The check above can fail: pings faster than the server allows end the connection."""
    pinging = ChannelSettings(keepalive=0.5, keepalive_timeout=2.0)
    async with replica(MESH_KEEPALIVE_SECONDS="300") as server:
        stays = await _stays_ready(server.address, pinging, idle=30.0)

    assert not stays


# -- TLS and event loops ---------------------------------------------------------------------


async def _self_signed(directory: Path) -> tuple[Path, Path]:
    cert, key = directory / "cert.pem", directory / "key.pem"
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
    return cert, key


async def test_a_tls_server_answers_a_client_that_trusts_its_certificate(
    tmp_path: Path,
) -> None:
    cert, key = await _self_signed(tmp_path)
    trusting = ChannelSettings(tls=TlsSettings(ca_file=str(cert)))
    async with replica(MESH_TLS_CERT_FILE=str(cert), MESH_TLS_KEY_FILE=str(key)) as server:
        async with ProjectsClient(server.address, channel=trusting) as projects:
            answer = await projects.get_project("projects/remaining")
        async with ProjectsClient(server.address, attempts=1) as plaintext:
            with pytest.raises(UnavailableError):
                await plaintext.get_project("projects/remaining", timeout=5)

    assert server.events("server.listening")[0]["tls"] is True
    assert float(answer.description) > 0


async def test_a_client_is_refused_on_another_event_loop(probe: MeshProcess) -> None:
    async with ProjectsClient(probe.address) as projects:

        async def elsewhere() -> None:
            await projects.get_project("projects/remaining")

        with pytest.raises(RuntimeError, match="another event loop"):
            await asyncio.to_thread(asyncio.run, elsewhere())
        await projects.get_project("projects/remaining")  # still fine on its own loop
