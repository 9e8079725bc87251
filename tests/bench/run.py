"""`make bench`: the projects service against hand-written grpc.aio baselines, as ratios.

One run starts every server on 127.0.0.1 in a process of its own, on a PostgreSQL
database created for the run (and dropped at the end), and drives each pair with the
same load generator, interleaved round by round so machine noise hits both sides:

1. cached GetProject (`mesh serve projects`, in-process cache warm) against a bare
   grpc.aio handler returning the same response, prebuilt;
2. uncached GetProject (the service with `Crud(..., cache=None)`, tests/bench/uncached.py)
   against a grpc.aio handler doing one asyncpg SELECT by primary key;
3. CreateProject (`mesh serve projects`, outbox row included) against a grpc.aio handler
   doing one asyncpg INSERT;
4. the cost of telemetry: cached GetProject on the service as configured by default
   (metrics on, tracing off) and with tracing on too (every call sampled, spans exported
   over OTLP to tests/bench/otlp_sink.py), each against the same service with both off,
   each in a process of its own;
5. the cost of authentication: cached GetProject with a valid HS256 bearer token on the
   service with MESH_AUTH=required, against the same service with MESH_AUTH=off.

6. SQLite under mixed load (tests/bench/sqlite_mixed.py): write latency on the embedded
   default beside 16 concurrent readers, against the same writes alone, and the highest
   write rate whose p99 stays under a second.

It prints calls/s, latency and CPU per call of each server process, and the ratios
against their targets, and writes the same as JSON (default /tmp/mesh-bench-results.json).
A missed target is reported, not failed: the exit status is non-zero only when a server
does not start or calls fail.

    .venv/bin/python tests/bench/run.py [--driver auto|h2load|python] [--seconds 5] ...
    .venv/bin/python tests/bench/run.py --suite projects --only auth   # one pair
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
import events
import grpc
import jwt
import load
import procs
import sqlite_mixed
from google.protobuf.message import Message
from report import Pair, Run, Side, build_report, print_report, rounded

from clients.admin import AdminClient
from clients.projects import ProjectsClient
from mesh.projects.v1 import projects_pb2 as pb

ADMIN_DSN = os.environ.get("MESH_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")
GET = "/mesh.projects.v1.ProjectService/GetProject"
CREATE = "/mesh.projects.v1.ProjectService/CreateProject"
SEED_NAME = "projects/bench-project"
BASELINE_TABLE = "bench_projects"
SPAN_COUNT_FILE = "otlp-spans"  # in the run's log folder, written by otlp_sink.py
AUTH_SECRET = "bench-secret-of-at-least-thirty-two-bytes"
BENCH_TOKEN = jwt.encode(
    # The seed project's owner: the secured read passes the ownership check too.
    {"sub": "users/bench", "scope": "projects.read", "exp": int(time.time()) + 24 * 3600},
    AUTH_SECRET,
    algorithm="HS256",
)
AUTH_HEADERS = (("authorization", f"Bearer {BENCH_TOKEN}"),)


def sample_project() -> pb.Project:
    return pb.Project(
        display_name="Bench project",
        description="A project written by make bench, about as long as a real one. " * 3,
        project_type=pb.Project.PROJECT_TYPE_MUSIC_CLIP,
        owner="users/bench",
        labels={"team": "core", "tier": "gold", "env": "bench"},
    )


# -- database and servers --------------------------------------------------------------------


async def admin(statement: str) -> None:
    conn = await asyncpg.connect(ADMIN_DSN)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


@asynccontextmanager
async def bench_database() -> AsyncIterator[str]:
    """A fresh PostgreSQL database for the run; yields its plain DSN and drops it at the end."""
    name = f"bench_{uuid.uuid4().hex[:12]}"
    await admin(f'CREATE DATABASE "{name}"')
    try:
        yield f"{ADMIN_DSN.rsplit('/', 1)[0]}/{name}"
    finally:
        await admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def fetch_counts(dsn: str) -> dict[str, int]:
    conn = await asyncpg.connect(dsn)
    try:
        return {
            table: int(await conn.fetchval(f'SELECT count(*) FROM "{table}"'))
            for table in ("projects", "mesh_outbox", BASELINE_TABLE)
        }
    finally:
        await conn.close()


async def call_raw(
    address: str, method: str, request: Message, headers: tuple[tuple[str, str], ...] = ()
) -> bytes:
    """One call with a real grpc.aio client; raises grpc.RpcError unless it is OK."""
    async with grpc.aio.insecure_channel(address) as channel:
        response: bytes = await channel.unary_unary(method)(
            request.SerializeToString(), timeout=10, metadata=headers or None
        )
        return response


class BenchError(Exception):
    """The bench could not measure what it should: a server or a call failed."""


def check(condition: bool, what: str) -> None:
    if not condition:
        raise BenchError(what)


# -- the run ---------------------------------------------------------------------------------


async def start_servers(stack: AsyncExitStack, dsn: str, logs: Path) -> dict[str, procs.Server]:
    """Starts the service, seeds one project, then the uncached service and the baselines."""
    url = dsn.replace("postgresql://", "postgresql+asyncpg://", 1)
    service_env = procs.server_env(
        MESH_DATABASE_URL=url,
        MESH_MIGRATE_ON_START="true",
        MESH_LOG_LEVEL="warning",
        MESH_LOG_FORMAT="json",
        MESH_DATA_DIR=str(logs / "data"),
        MESH_CACHE_NAMESPACE=f"bench-{uuid.uuid4().hex[:8]}",
    )
    mesh = str(Path(sys.executable).with_name("mesh"))
    servers: dict[str, procs.Server] = {}

    async def started(key: str, server: procs.Server, how: Callable[[], Any]) -> None:
        stack.push_async_callback(server.stop)
        await how()
        servers[key] = server

    service = procs.Server("service", [mesh, "serve", "projects"], service_env, logs)
    await started("service", service, service.start_on_free_port)  # migrates the database

    async with ProjectsClient(service.address) as client:
        await client.create_project(sample_project(), project_id=SEED_NAME.split("/")[1])
    get_response = await call_raw(service.address, GET, pb.GetProjectRequest(name=SEED_NAME))
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f'CREATE TABLE "{BASELINE_TABLE}" (LIKE projects INCLUDING ALL)')
    finally:
        await conn.close()

    # The same service with telemetry off, and with every call traced and exported.
    sink_argv = procs.script("otlp_sink.py", str(logs / SPAN_COUNT_FILE))
    sink = procs.Server("otlp sink", sink_argv, procs.server_env(), logs)
    await started("sink", sink, sink.start_reporting_port)
    traced_env = service_env | {
        "MESH_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://{sink.address}",
        "OTEL_EXPORTER_OTLP_INSECURE": "true",
    }
    # Processes of their own, apart from the one that takes the creates: that one's relay
    # moves each round's thousands of new events on while later pairs are measured.
    for key, env in [
        ("metrics", service_env),
        ("quiet", service_env | {"MESH_METRICS": "false"}),
        ("traced", traced_env),
        ("secured", service_env | {"MESH_AUTH": "required", "MESH_AUTH_JWT_SECRET": AUTH_SECRET}),
        ("open", service_env | {"MESH_AUTH": "off"}),
    ]:
        server = procs.Server(key, [mesh, "serve", "projects"], env, logs)
        await started(key, server, server.start_on_free_port)

    plain = procs.server_env(MESH_LOG_LEVEL="warning", MESH_LOG_FORMAT="json")
    uncached_env = plain | {"MESH_DATABASE_URL": url, "MESH_MIGRATE_ON_START": "false"}
    for key, argv, env in [
        ("uncached", procs.script("uncached.py"), uncached_env),
        ("canned", procs.script("baseline.py", "canned", get_response.hex()), plain),
        ("select", procs.script("baseline.py", "select", dsn), plain),
        ("insert", procs.script("baseline.py", "insert", dsn, BASELINE_TABLE), plain),
    ]:
        server = procs.Server(key, argv, env, logs)
        await started(key, server, server.start_reporting_port)
    return servers


async def build_pairs(servers: dict[str, procs.Server]) -> list[Pair]:
    """Checks every server answers correctly with a real client, then pairs them up."""
    get = pb.GetProjectRequest(name=SEED_NAME)
    create = pb.CreateProjectRequest(project=sample_project())  # no id: the server picks one
    expected = pb.GetProjectResponse.FromString(
        await call_raw(servers["service"].address, GET, get)
    )
    check(expected.project.name == SEED_NAME, f"seeded project reads back as {expected}")
    for key in ("service", "metrics", "quiet", "traced", "open", "canned", "uncached", "select"):
        for _ in range(3):
            raw = await call_raw(servers[key].address, GET, get)
            check(
                pb.GetProjectResponse.FromString(raw) == expected,
                f"{key}: GetProject returned another message than the service",
            )
    raw = await call_raw(servers["secured"].address, GET, get, AUTH_HEADERS)
    check(pb.GetProjectResponse.FromString(raw) == expected, "secured: GetProject differs")
    try:
        await call_raw(servers["secured"].address, GET, get)
        check(False, "secured: GetProject without a token was answered")
    except grpc.RpcError as exc:
        check(exc.code() is grpc.StatusCode.UNAUTHENTICATED, f"secured: {exc.code()}")
    get_size = len(expected.SerializeToString())

    created = {}
    for key in ("service", "insert"):
        raw = await call_raw(servers[key].address, CREATE, create)
        project = pb.CreateProjectResponse.FromString(raw).project
        check(project.name.startswith("projects/p") and bool(project.etag), f"{key}: {project}")
        for name in ("name", "etag", "create_time", "update_time"):
            project.ClearField(name)  # differ by call; the rest must match
        created[key] = (project, len(raw))
    check(created["service"][0] == created["insert"][0], f"CreateProject answers differ: {created}")
    create_size = min(size for _, size in created.values()) - 8  # timestamps vary in length

    def side(
        label: str,
        key: str,
        method: str,
        request: Message,
        size: int,
        headers: tuple[tuple[str, str], ...] = (),
    ) -> Side:
        target = load.Target(
            servers[key].address, method, request.SerializeToString(), size, headers
        )
        return Side(label, servers[key], target)

    return [
        Pair(
            "cached GetProject",
            "mesh serve projects on PostgreSQL, in-process cache warm | canned response",
            0.85,
            side("service", "service", GET, get, get_size),
            side("baseline", "canned", GET, get, get_size),
            on_postgres=False,
        ),
        Pair(
            "uncached GetProject",
            "Crud(cache=None) on PostgreSQL | one asyncpg SELECT by primary key",
            0.6,
            side("service", "uncached", GET, get, get_size),
            side("baseline", "select", GET, get, get_size),
            on_postgres=True,
        ),
        Pair(
            "CreateProject",
            "mesh serve projects, insert + outbox row | one asyncpg INSERT",
            0.5,
            side("service", "service", CREATE, create, create_size),
            side("baseline", "insert", CREATE, create, create_size),
            on_postgres=True,
        ),
        Pair(
            "GetProject metrics",
            "cached, metrics on (the default) | cached, MESH_METRICS=false",
            0.9,
            side("metrics", "metrics", GET, get, get_size),
            side("off", "quiet", GET, get, get_size),
            on_postgres=False,
        ),
        Pair(
            "GetProject traced",
            "cached, metrics on + every call traced over OTLP | cached, telemetry off",
            None,
            side("traced", "traced", GET, get, get_size),
            side("off", "quiet", GET, get, get_size),
            on_postgres=False,
        ),
        Pair(
            "GetProject auth",
            "cached, MESH_AUTH=required + a valid HS256 token | cached, MESH_AUTH=off",
            0.9,
            side("token", "secured", GET, get, get_size, AUTH_HEADERS),
            side("off", "open", GET, get, get_size),
            on_postgres=False,
        ),
    ]


async def measure(
    generator: load.H2Load | load.PythonDriver, side: Side, pg: bool, args: argparse.Namespace
) -> Run:
    def sample() -> tuple[float, float]:
        return side.server.cpu(), procs.postgres_cpu_seconds() if pg else 0.0

    result, before, after = await generator.measure(
        side.target, warmup=args.warmup, seconds=args.seconds, sample=sample
    )
    side.total_ok += result.total_ok
    per_call = (lambda seconds: seconds / result.ok * 1e6) if result.ok else (lambda _: None)
    return Run(
        calls_per_s=round(result.rate, 1),
        ok=result.ok,
        seconds=round(result.seconds, 3),
        p50_ms=result.p50_ms,
        p99_ms=result.p99_ms,
        cpu_us_per_call=rounded(per_call(after[0] - before[0])),
        pg_cpu_us_per_call=rounded(per_call(after[1] - before[1])) if pg else None,
        problem=result.problem or ("" if result.ok else "no call finished OK"),
    )


async def run(args: argparse.Namespace) -> int:
    logs = Path(tempfile.mkdtemp(prefix="mesh-bench-"))  # server stderr, h2load files
    generator = load.generator(
        args.driver, connections=args.connections, streams=args.streams, workdir=logs
    )
    print(f"load generator: {generator.describe()}", flush=True)
    if generator.name != "h2load":
        print(
            "  (h2load not found or not chosen: the Python driver shares the CPUs with the\n"
            "   servers and saturates first, which pulls every ratio towards 1; install\n"
            "   nghttp2-client for h2load)",
            flush=True,
        )
    problems: list[str] = []
    report: dict[str, Any] = {}
    started = time.monotonic()
    async with bench_database() as dsn, AsyncExitStack() as stack:
        try:
            servers = await start_servers(stack, dsn, logs)
            pairs = [p for p in await build_pairs(servers) if args.only.lower() in p.name.lower()]
        except (procs.StartFailedError, BenchError, grpc.RpcError) as exc:
            print(f"bench: {exc}\n(server logs in {logs})", file=sys.stderr)
            return 1
        counts_before = await fetch_counts(dsn)
        for round_ in range(args.rounds):
            for pair in pairs:
                order = [pair.service, pair.baseline]
                for side in order if round_ % 2 == 0 else order[::-1]:
                    r = await measure(generator, side, pair.on_postgres, args)
                    side.runs.append(r)
                    print(
                        f"  round {round_ + 1}/{args.rounds}  {pair.name:<20} {side.label:<8} "
                        f"{r.calls_per_s:9.1f} calls/s  {r.cpu_us_per_call or 0:7.1f} us CPU/call"
                        + (f"  PROBLEM: {r.problem}" if r.problem else ""),
                        flush=True,
                    )
                    if r.problem:
                        problems.append(f"{pair.name} {side.label}: {r.problem}")
        problems += await check_writes(dsn, counts_before, pairs)
        cache = await cache_stats(servers["service"].address)
        report = build_report(args, generator, pairs, cache, time.monotonic() - started)
        report["spans_exported"] = spans_exported(logs)
    complaints = [s for s in servers.values() if s.complaints()]
    for server in complaints:
        print(f"note: {server.label} logged errors, see {server.log_path}")
    print_report(report)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nresults written to {args.json}")
    for problem in problems:
        print(f"bench: ERROR: {problem}", file=sys.stderr)
    if not problems and not complaints:
        shutil.rmtree(logs, ignore_errors=True)
    return 1 if problems else 0


async def check_writes(dsn: str, before: dict[str, int], pairs: list[Pair]) -> list[str]:
    """Every OK create wrote its row (and the service its outbox row), checked in the tables."""
    after = await fetch_counts(dsn)
    created = {t: after[t] - before[t] for t in after}
    pair = next((p for p in pairs if p.name == "CreateProject"), None)
    problems: list[str] = []
    if pair is None:  # not measured in this run (--only)
        return problems
    if created["projects"] < pair.service.total_ok:
        problems.append(f"service: {pair.service.total_ok} OK creates, {created['projects']} rows")
    if created["mesh_outbox"] != created["projects"]:
        problems.append(f"service: {created['projects']} rows, {created['mesh_outbox']} events")
    if created[BASELINE_TABLE] < pair.baseline.total_ok:
        problems.append(
            f"baseline: {pair.baseline.total_ok} OK creates, {created[BASELINE_TABLE]} rows"
        )
    print(
        f"\nrows written during the run: service {created['projects']} projects + "
        f"{created['mesh_outbox']} outbox events (for {pair.service.total_ok} OK calls), "
        f"baseline {created[BASELINE_TABLE]} (for {pair.baseline.total_ok} OK calls)"
    )
    return problems


def spans_exported(logs: Path) -> int:
    """Spans the traced service delivered to the OTLP sink: proof that tracing was on."""
    try:
        return int((logs / SPAN_COUNT_FILE).read_text() or 0)
    except (OSError, ValueError):
        return 0


async def cache_stats(address: str) -> dict[str, str]:
    """The service's cache counters as of its last health check (every few seconds)."""
    async with AdminClient(address) as client:
        summary = await client.get_service_summary()
    for component in summary.components:
        if component.name == "cache":
            return dict(component.health.details)
    return {}


def main() -> None:
    parser = argparse.ArgumentParser(description="meshkit benchmarks (make bench)")
    parser.add_argument("--driver", choices=["auto", "h2load", "python"], default="auto")
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=1.0, help="warm-up seconds per run")
    parser.add_argument("--rounds", type=int, default=3, help="runs per side; the best counts")
    parser.add_argument("--connections", type=int, default=4, help="HTTP/2 connections")
    parser.add_argument("--streams", type=int, default=8, help="calls in flight per connection")
    parser.add_argument(
        "--json", type=Path, default=Path(tempfile.gettempdir()) / "mesh-bench-results.json"
    )
    parser.add_argument("--suite", choices=["projects", "events", "sqlite", "all"], default="all")
    parser.add_argument(
        "--only", default="", help="measure only the pairs whose name contains this, e.g. auth"
    )
    events.add_arguments(parser)
    sys.exit(asyncio.run(run_suites(parser.parse_args())))


async def run_suites(args: argparse.Namespace) -> int:
    """The projects suite (above), the events suite (tests/bench/events.py), SQLite under
    mixed load (tests/bench/sqlite_mixed.py), or all three."""
    status = await run(args) if args.suite in ("projects", "all") else 0
    if args.suite in ("events", "all"):
        status = max(status, await events.run(args))
    if args.suite in ("sqlite", "all"):
        with tempfile.TemporaryDirectory(prefix="mesh-bench-sqlite-") as logs:
            results = await sqlite_mixed.measure(args.seconds, 16, Path(logs))
        sqlite_mixed.print_results(results)
    return status


if __name__ == "__main__":
    main()
