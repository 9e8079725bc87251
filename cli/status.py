"""`mesh health` and `mesh status`: how a running process is, from its health service and
its admin service.

mesh health [--service NAME] [--watch] [--address HOST:PORT]
mesh status [--json] [--address HOST:PORT]
"""

from __future__ import annotations

import argparse
import asyncio
from datetime import UTC, datetime
from typing import Any

from cli import output
from cli.commands import ADDRESS_HELP
from cli.output import Column, Table
from clients.admin import AdminClient
from clients.health import HealthClient
from core.config import Settings
from core.errors import DomainError
from mesh.admin.v1 import admin_pb2

COMPONENTS = Table(
    Column("COMPONENT", 20),
    Column("STATUS", 9),
    Column("HEALTH", 10),
    Column("UPTIME", 10, right=True),
    Column("DEPENDS ON / REASON", gap=2),
)
METHODS = Table(
    Column("METHOD", 48),
    Column("CALLS", 8, right=True),
    Column("AVG MS", 9, right=True),
    Column("P99 MS", 9, right=True),
    Column("OK", 7, right=True),
    Column("ERRORS", 7, right=True),
)


def add_commands(commands: Any) -> None:
    """Adds `health` and `status` to the `mesh` parser."""
    health = commands.add_parser("health", help="check a server's grpc.health.v1 status")
    health.add_argument("--service", default="", help='a name such as "readiness" (default: "")')
    health.add_argument("--watch", action="store_true", help="print every change until stopped")
    health.add_argument("--address", help=ADDRESS_HELP)
    health.set_defaults(run=lambda a, s: asyncio.run(_health(a, s)))

    status = commands.add_parser("status", help="show every component of a running server")
    status.add_argument("--json", action="store_true", help="print the summary as JSON")
    status.add_argument("--address", help=ADDRESS_HELP)
    status.set_defaults(run=lambda a, s: asyncio.run(_status(a, s)))


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
        return output.fail(f"{label} at {address}: {exc.code.name}: {exc.message}")


async def _status(args: argparse.Namespace, settings: Settings) -> int:
    address = args.address or settings.address
    try:
        async with AdminClient(address, channel=settings.channel()) as client:
            summary = await client.get_service_summary()
    except DomainError as exc:
        return output.fail(f"{address}: {exc.code.name}: {exc.message}")
    if args.json:
        output.print_json(output.message_json(summary))
    else:
        print(status_table(summary))
    ok = summary.status == admin_pb2.COMPONENT_STATUS_RUNNING
    return 0 if ok and summary.health != admin_pb2.HEALTH_STATE_UNHEALTHY else 1


def status_table(summary: admin_pb2.ServiceSummary) -> str:
    """The summary as `mesh status` prints it: the process, its components, its calls."""
    status = admin_pb2.ComponentStatus.Name
    health = admin_pb2.HealthState.Name
    lines = [
        f"{summary.service} {summary.version}: {status(summary.status)[17:]}, "
        f"{health(summary.health)[13:]} (score {summary.health_score}), "
        f"{summary.healthy_components}/{summary.total_components} components healthy, "
        f"up {summary.uptime.ToTimedelta()}",
        *_configuration(summary),
        COMPONENTS.header(),
    ]
    for c in summary.components:
        uptime = f"{c.uptime.ToTimedelta().total_seconds():.1f}s"
        detail = ", ".join(c.dependencies) + (f"  ({c.health.reason})" if c.health.reason else "")
        lines.append(
            COMPONENTS.row(
                c.name, status(c.status)[17:], health(c.health.state)[13:], uptime, detail
            )
        )
    lines.append("services: " + ", ".join(summary.grpc_services))
    if summary.overall.reason:
        lines.append("not healthy: " + summary.overall.reason)
    return "\n".join(lines + _calls_table(summary))


def _configuration(summary: admin_pb2.ServiceSummary) -> list[str]:
    """The profile, and each setting that differs from its default (a secret by name only)."""
    if not summary.profile:  # a server from before MESH_ENV
        return []
    if not summary.overrides:
        return [f"profile: {summary.profile}, every setting at its default"]
    shown = [f"{o.name} (secret)" if o.secret else f"{o.name}={o.value}" for o in summary.overrides]
    return [f"profile: {summary.profile}, set otherwise: " + ", ".join(shown)]


def _calls_table(summary: admin_pb2.ServiceSummary) -> list[str]:
    if not summary.metrics_enabled:
        return ["calls: not measured (MESH_METRICS is off)"]
    lines = [METHODS.header()]
    for m in summary.methods:
        name = m.service.rpartition(".")[2] + "/" + m.method
        lines.append(
            METHODS.row(
                name,
                str(m.calls),
                f"{m.average_ms:.3f}",
                f"{m.p99_ms:.3f}",
                f"{m.success_rate:.1%}",
                f"{m.error_rate:.1%}",
            )
        )
    state = admin_pb2.CircuitBreakerState.Name
    for b in summary.circuit_breakers:
        lines.append(
            f"breaker {b.target}: {state(b.state)[22:]}, {b.consecutive_failures} failures "
            f"in a row, opened {b.times_opened} times"
        )
    return lines
