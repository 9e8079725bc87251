"""The `mesh` command: run the mesh, and ask a running one how it is.

mesh serve [SERVICE ...] [--address HOST:PORT]
mesh health [--service NAME] [--watch] [--address HOST:PORT]
mesh status [--json] [--address HOST:PORT]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from importlib.metadata import version as package_version
from pathlib import Path

from google.protobuf.json_format import MessageToDict

from clients.admin import AdminClient
from clients.health import HealthClient
from core.config import Settings
from core.errors import ConfigError, DomainError
from core.logging import configure_logging
from core.runtime.container import Container
from core.runtime.server import GrpcServer, Service, serve
from core.telemetry import configure_telemetry
from mesh.admin.v1 import admin_pb2
from servers.admin.server import admin_service
from servers.events import cli as events_cli
from servers.projects import cli as projects_cli

VERSION = package_version("meshkit")

# Each entry adds a service's components to the container and returns what it serves.
ServiceFactory = Callable[[Container, Settings, Callable[[], list[str]]], list[Service]]


def _admin(
    container: Container, settings: Settings, names: Callable[[], list[str]]
) -> list[Service]:
    return [
        admin_service(
            container, service=settings.service_name, version=VERSION, grpc_services=names
        )
    ]


def _projects(
    container: Container, settings: Settings, names: Callable[[], list[str]]
) -> list[Service]:
    from servers.projects import server as projects  # each service loads only when served

    return projects.register(container, settings)


def _events(
    container: Container, settings: Settings, names: Callable[[], list[str]]
) -> list[Service]:
    from servers.events import server as events

    return events.register(container, settings)


SERVICES: dict[str, ServiceFactory] = {"admin": _admin, "projects": _projects, "events": _events}
# Every service schema this build knows (core's is always included); `mesh db upgrade`
# brings a database to all their heads.
MIGRATIONS = [Path(__file__).parent / "projects" / "migrations"]


def main(argv: Sequence[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"mesh: {exc}", file=sys.stderr)
        sys.exit(2)
    sys.exit(args.run(args, settings))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mesh", description="Run and inspect a meshkit mesh.")
    parser.add_argument("--version", action="version", version=f"meshkit {VERSION}")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    run = commands.add_parser("serve", help="run services (all of them when none is named)")
    run.add_argument("services", nargs="*", metavar="SERVICE", choices=[[], *SERVICES])
    run.add_argument("--address", help="HOST:PORT to listen on (default: MESH_ADDRESS)")
    run.set_defaults(run=_serve)

    health = commands.add_parser("health", help="check a server's grpc.health.v1 status")
    health.add_argument("--service", default="", help='a name such as "readiness" (default: "")')
    health.add_argument("--watch", action="store_true", help="print every change until stopped")
    health.add_argument("--address", help="HOST:PORT of the server (default: MESH_ADDRESS)")
    health.set_defaults(run=lambda a, s: asyncio.run(_health(a, s)))

    status = commands.add_parser("status", help="show every component of a running server")
    status.add_argument("--json", action="store_true", help="print the summary as JSON")
    status.add_argument("--address", help="HOST:PORT of the server (default: MESH_ADDRESS)")
    status.set_defaults(run=lambda a, s: asyncio.run(_status(a, s)))

    db = commands.add_parser("db", help="manage the database schema")
    db_actions = db.add_subparsers(required=True, metavar="ACTION")
    upgrade = db_actions.add_parser(
        "upgrade", help="upgrade MESH_DATABASE_URL to the latest schema"
    )
    upgrade.set_defaults(run=lambda a, s: asyncio.run(_db_upgrade(s)))

    projects_cli.add_commands(commands)
    events_cli.add_commands(commands)
    return parser


def _serve(args: argparse.Namespace, settings: Settings) -> int:
    if args.address:
        settings = _with_address(settings, args.address)
    configure_logging(
        service=settings.service_name,
        version=VERSION,
        log_format=settings.log_format,
        level=settings.log_level,
    )
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    try:
        telemetry = configure_telemetry(
            settings.telemetry, service=settings.service_name, version=VERSION
        )
    except OSError as exc:
        address = settings.telemetry.metrics_address
        print(
            f"mesh: cannot serve metrics on {address} (MESH_METRICS_ADDRESS): {exc}",
            file=sys.stderr,
        )
        return 2
    try:
        return asyncio.run(_run(settings, args.services or list(SERVICES)))
    finally:
        telemetry.shutdown()  # exports the spans still batched


async def _run(settings: Settings, names: list[str]) -> int:
    container = Container(
        settings.start_policy,
        health_interval=settings.health_interval,
        health_timeout=settings.health_timeout,
    )
    services: list[Service] = []
    hosted: list[str] = []
    for name in dict.fromkeys(["admin", *names]):  # every process hosts the admin service
        services += SERVICES[name](container, settings, lambda: hosted)
    server = GrpcServer.for_container(container, services, settings)
    hosted.extend(server.service_names)
    return await serve(container)


async def _health(args: argparse.Namespace, settings: Settings) -> int:
    address = args.address or settings.address
    label = args.service or '""'
    try:
        async with HealthClient(address, channel=settings.channel()) as client:
            if not args.watch:
                status = await client.check(args.service)
                print(f"{label}: {status}")
                return 0 if status == "SERVING" else 1
            status = "UNKNOWN"
            async for status in client.watch(args.service):
                print(f"{datetime.now(UTC):%H:%M:%S} {label}: {status}", flush=True)
            return 0 if status == "SERVING" else 1
    except DomainError as exc:
        print(f"mesh: {label} at {address}: {exc.code.name}: {exc.message}", file=sys.stderr)
        return 1


async def _status(args: argparse.Namespace, settings: Settings) -> int:
    address = args.address or settings.address
    try:
        async with AdminClient(address, channel=settings.channel()) as client:
            summary = await client.get_service_summary()
    except DomainError as exc:
        print(f"mesh: {address}: {exc.code.name}: {exc.message}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(MessageToDict(summary), indent=2))
    else:
        print(_status_table(summary))
    ok = summary.status == admin_pb2.COMPONENT_STATUS_RUNNING
    return 0 if ok and summary.health != admin_pb2.HEALTH_STATE_UNHEALTHY else 1


def _status_table(summary: admin_pb2.ServiceSummary) -> str:
    status = admin_pb2.ComponentStatus.Name
    health = admin_pb2.HealthState.Name
    lines = [
        f"{summary.service} {summary.version}: {status(summary.status)[17:]}, "
        f"{health(summary.health)[13:]} (score {summary.health_score}), "
        f"{summary.healthy_components}/{summary.total_components} components healthy, "
        f"up {summary.uptime.ToTimedelta()}",
        f"{'COMPONENT':<20} {'STATUS':<9} {'HEALTH':<10} {'UPTIME':>10}  DEPENDS ON / REASON",
    ]
    for c in summary.components:
        uptime = f"{c.uptime.ToTimedelta().total_seconds():.1f}s"
        detail = ", ".join(c.dependencies) + (f"  ({c.health.reason})" if c.health.reason else "")
        lines.append(
            f"{c.name:<20} {status(c.status)[17:]:<9} {health(c.health.state)[13:]:<10} "
            f"{uptime:>10}  {detail}"
        )
    lines.append("services: " + ", ".join(summary.grpc_services))
    if summary.overall.reason:
        lines.append("not healthy: " + summary.overall.reason)
    return "\n".join(lines + _calls_table(summary))


def _calls_table(summary: admin_pb2.ServiceSummary) -> list[str]:
    if not summary.metrics_enabled:
        return ["calls: not measured (MESH_METRICS is off)"]
    lines = [f"{'METHOD':<48} {'CALLS':>8} {'AVG MS':>9} {'P99 MS':>9} {'OK':>7} {'ERRORS':>7}"]
    for m in summary.methods:
        lines.append(
            f"{m.service.rpartition('.')[2] + '/' + m.method:<48} {m.calls:>8} "
            f"{m.average_ms:>9.3f} {m.p99_ms:>9.3f} {m.success_rate:>7.1%} {m.error_rate:>7.1%}"
        )
    state = admin_pb2.CircuitBreakerState.Name
    for b in summary.circuit_breakers:
        lines.append(
            f"breaker {b.target}: {state(b.state)[22:]}, {b.consecutive_failures} failures "
            f"in a row, opened {b.times_opened} times"
        )
    return lines


async def _db_upgrade(settings: Settings) -> int:
    configure_logging(
        service="mesh", version=VERSION, log_format=settings.log_format, level="warning"
    )
    from core.data.database import Database, redacted

    database = Database(settings.database(), migrations=MIGRATIONS, migrate=True)
    try:
        await database.start()
    except Exception as exc:
        print(f"mesh: upgrade of {redacted(database.url)} failed: {exc}", file=sys.stderr)
        return 1
    await database.stop()
    print(f"{redacted(database.url)} is at the latest schema")
    return 0


def _with_address(settings: Settings, address: str) -> Settings:
    try:
        return replace(settings, address=Settings.from_env({"MESH_ADDRESS": address}).address)
    except ConfigError:
        print(f"mesh: --address {address!r} must be HOST:PORT", file=sys.stderr)
        sys.exit(2)
