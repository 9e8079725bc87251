"""Real processes for mesh tests: `mesh serve`, a private redis-server, a fresh PostgreSQL database.

Every helper is an async context manager that kills and reaps what it started, however the
test ends, and bounds every wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar, cast

import asyncpg
from redis.asyncio import Redis
from redis.exceptions import RedisError

from clients.admin import AdminClient
from clients.health import HealthClient
from mesh.admin.v1 import admin_pb2
from tests.conftest import PG_ADMIN_DSN

BIN = Path(sys.executable).parent
MESH = str(BIN / "mesh")
STARTUP = 30.0  # seconds a process may take to listen or answer


@dataclass
class MeshProcess:
    """A running `mesh` command; `address` is read from its "server.listening" log line."""

    proc: asyncio.subprocess.Process
    address: str = ""
    logs: list[dict[str, object]] = field(default_factory=list)
    stderr: list[str] = field(default_factory=list)

    def events(self, name: str) -> list[dict[str, object]]:
        return [e for e in self.logs if e.get("event") == name]

    def tail(self, lines: int = 20) -> str:
        return "".join(self.stderr[-lines:])


def mesh_env(**values: str) -> dict[str, str]:
    """The test's environment without any MESH_* variable, plus `values` and JSON logs."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("MESH_")}
    return base | {"MESH_LOG_FORMAT": "json", "MESH_ADDRESS": "127.0.0.1:0"} | values


async def _read_logs(
    process: MeshProcess, listening: asyncio.Event, running: asyncio.Event
) -> None:
    assert process.proc.stderr is not None
    async for raw in process.proc.stderr:
        line = raw.decode(errors="replace")
        process.stderr.append(line)
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if not isinstance(event, dict):
            continue
        process.logs.append(event)
        if event.get("event") == "server.listening":
            process.address = str(event["address"])
            listening.set()
        elif event.get("event") == "service.running":
            running.set()


@asynccontextmanager
async def subscribing(
    server: MeshProcess, *args: str, stderr: int = asyncio.subprocess.PIPE
) -> AsyncIterator[asyncio.subprocess.Process]:
    """`mesh events subscribe ARGS` against `server` until the block ends (killed if running)."""
    proc = await asyncio.create_subprocess_exec(
        *(MESH, "events", "subscribe", *args, "--address", server.address),
        env=mesh_env(),
        stdout=asyncio.subprocess.PIPE,
        stderr=stderr,
    )
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


@asynccontextmanager
async def serving(
    *services: str, env: Mapping[str, str], ready: bool = True
) -> AsyncIterator[MeshProcess]:
    """`mesh serve SERVICE...` until the block ends; yields once every component started
    (or, with `ready=False`, once the port is open: it opens before the components start)."""
    async with listening_process([MESH, "serve", *services], env, ready=ready) as process:
        yield process


@asynccontextmanager
async def listening_process(
    argv: list[str], env: Mapping[str, str], cwd: Path | None = None, *, ready: bool = True
) -> AsyncIterator[MeshProcess]:
    """Runs `argv` until the block ends; yields once it logs "server.listening" and, when
    `ready`, "service.running" (every component started)."""
    proc = await asyncio.create_subprocess_exec(
        *argv,
        cwd=cwd,
        env=dict(env),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    process = MeshProcess(proc)
    listening, running = asyncio.Event(), asyncio.Event()
    reader = asyncio.create_task(_read_logs(process, listening, running))
    waiter = asyncio.create_task((running if ready else listening).wait())
    try:
        # Whichever comes first: the "server.listening" line, or the end of the log.
        done, _ = await asyncio.wait(
            {waiter, reader}, timeout=STARTUP, return_when=asyncio.FIRST_COMPLETED
        )
        if not done:
            raise AssertionError(f"{argv[0]} did not listen within {STARTUP:g}s:\n{process.tail()}")
        if not listening.is_set() or (ready and not running.is_set()):
            raise AssertionError(f"{argv[0]} exited before it ran:\n{process.tail()}")
        yield process
    finally:
        waiter.cancel()
        if proc.returncode is None:
            proc.kill()
        await proc.wait()
        await asyncio.gather(reader, waiter, return_exceptions=True)


async def run_mesh(*args: str, env: Mapping[str, str]) -> tuple[int, str, str]:
    """Runs a short `mesh` command to its end; returns its exit code, stdout and stderr."""
    proc = await asyncio.create_subprocess_exec(
        MESH,
        *args,
        env=dict(env),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(STARTUP):
            out, err = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


# -- health ----------------------------------------------------------------------------------

T = TypeVar("T")


def _closing(stream: AsyncIterator[T]) -> contextlib.aclosing[AsyncGenerator[T, None]]:
    """Closes a client's watch stream when the waiter is done with it (the clients' methods
    are async generators typed as iterators)."""
    return contextlib.aclosing(cast(AsyncGenerator[T, None], stream))


async def wait_health(address: str, service: str, want: str, *, within: float = 10.0) -> None:
    """Waits until the grpc.health.v1 status of `service` is `want` (SERVING, NOT_SERVING)."""
    seen: list[str] = []
    async with HealthClient(address) as health:
        try:
            async with asyncio.timeout(within):
                async with _closing(health.watch(service)) as statuses:
                    async for status in statuses:
                        seen.append(status)
                        if status == want:
                            return
        except TimeoutError:
            raise AssertionError(f"{service!r} never became {want}; saw {seen}") from None


def component(summary: admin_pb2.ServiceSummary, name: str) -> admin_pb2.ComponentSummary:
    for c in summary.components:
        if c.name == name:
            return c
    raise AssertionError(f"no component {name!r} in {[c.name for c in summary.components]}")


async def wait_component(
    address: str, name: str, state: admin_pb2.HealthState.ValueType, *, within: float = 10.0
) -> admin_pb2.ComponentSummary:
    """Waits (on WatchServiceStatus) until component `name` reports `state`; returns it."""
    want = admin_pb2.HealthState.Name(state)
    seen: list[str] = []
    async with AdminClient(address) as admin:
        try:
            async with asyncio.timeout(within):
                async with _closing(admin.watch_service_status()) as summaries:
                    async for summary in summaries:
                        found = component(summary, name)
                        seen.append(admin_pb2.HealthState.Name(found.health.state))
                        if found.health.state == state:
                            return found
        except TimeoutError:
            pass
    raise AssertionError(f"component {name!r} never became {want}; saw {seen}")


# -- redis -----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RedisServer:
    """A private redis-server on a free port, so a test may kill, stop and restart it."""

    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.directory = directory
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        """Starts redis-server on `port` (again, after a kill) and waits until it answers."""
        assert self.proc is None or self.proc.returncode is not None
        self.directory.mkdir(parents=True, exist_ok=True)
        self.proc = await asyncio.create_subprocess_exec(
            *("redis-server", "--port", str(self.port), "--bind", "127.0.0.1"),
            *("--save", "", "--appendonly", "no", "--dir", str(self.directory)),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        client = Redis.from_url(self.url)
        try:
            async with asyncio.timeout(STARTUP):
                while not await _answers(client):
                    if self.proc.returncode is not None:
                        raise AssertionError(f"redis-server exited with {self.proc.returncode}")
                    await asyncio.sleep(0.02)
        finally:
            await client.aclose()

    async def kill(self) -> None:
        """SIGKILL: a crash, not a polite shutdown. Reaps the process."""
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGCONT)  # harmless if running; no stopped leftovers
            self.proc.kill()
            await self.proc.wait()

    def pause(self) -> None:
        """SIGSTOP: Redis hangs with its data and connections intact, as in a long GC pause."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)


async def _answers(client: Redis) -> bool:
    try:
        return bool(await client.ping())
    except (RedisError, OSError):
        return False


@asynccontextmanager
async def private_redis(directory: Path) -> AsyncIterator[RedisServer]:
    server = RedisServer(directory)
    try:
        await server.start()
        yield server
    finally:
        await server.kill()


@asynccontextmanager
async def redis_client(url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(url)
    try:
        yield client
    finally:
        await client.aclose()


# -- postgresql ------------------------------------------------------------------------------


async def pg_admin(statement: str) -> None:
    conn = await asyncpg.connect(PG_ADMIN_DSN, timeout=10)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


def pg_url(database: str) -> str:
    base = PG_ADMIN_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://", 1)
    return f"{base}/{database}"


@asynccontextmanager
async def fresh_database() -> AsyncIterator[str]:
    """A new, empty PostgreSQL database; yields its name and drops it WITH (FORCE) at the end."""
    name = f"mesh_test_{uuid.uuid4().hex[:12]}"
    await pg_admin(f'CREATE DATABASE "{name}"')
    try:
        yield name
    finally:
        await pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# -- projects and events in processes of their own -------------------------------------------


@dataclass
class SplitMesh:
    """`mesh serve events` and `mesh serve projects` pointed at it (MESH_EVENTS_ADDRESS)."""

    events: MeshProcess
    projects: MeshProcess
    events_env: dict[str, str]  # starts the events service again on the same port


@asynccontextmanager
async def split_mesh(directory: Path, **env: str) -> AsyncIterator[SplitMesh]:
    """The events service on a fixed free port, then projects; each on its own SQLite file.

    `env` goes to both processes. The events service is started first, but projects
    does not need it to start.
    """
    common = mesh_env(MESH_HEALTH_INTERVAL_SECONDS="0.2", MESH_HEALTH_TIMEOUT_SECONDS="2", **env)
    events_address = f"127.0.0.1:{free_port()}"
    events_env = common | {
        "MESH_ADDRESS": events_address,
        "MESH_DATA_DIR": str(directory / "events"),
        "MESH_SERVICE_NAME": "events",
    }
    projects_env = common | {
        "MESH_DATA_DIR": str(directory / "projects"),
        "MESH_EVENTS_ADDRESS": events_address,
        "MESH_SERVICE_NAME": "projects",
    }
    async with (
        serving("events", env=events_env) as events,
        serving("projects", env=projects_env) as projects,
    ):
        yield SplitMesh(events, projects, events_env)


# -- test replicas (tests/mesh/_replica.py) --------------------------------------------------

ROOT = Path(__file__).resolve().parents[2]


@asynccontextmanager
async def replica(**env: str) -> AsyncIterator[MeshProcess]:
    """`python -m tests.mesh._replica` with `env` until the block ends; yields once it listens."""
    argv = [sys.executable, "-m", "tests.mesh._replica"]
    replica_env = mesh_env(MESH_HEALTH_INTERVAL_SECONDS="0.1", **env)
    async with listening_process(argv, replica_env, cwd=ROOT) as process:
        yield process


async def wait_log(
    process: MeshProcess, event: str, *, count: int = 1, within: float = 10.0
) -> None:
    """Waits until `process` has written `count` log lines named `event`."""
    async with asyncio.timeout(within):
        while len(process.events(event)) < count:  # noqa: ASYNC110 (the log reader sets no event)
            await asyncio.sleep(0.02)
