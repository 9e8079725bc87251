"""What every `mesh` command that calls a service shares: its `--address` flag, a typed
client opened for the one call, and the result printed as JSON or the error on stderr."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, TypeVar

from google.protobuf.message import Message

from cli import output
from clients.admin import AdminClient
from clients.base import SERVER_NOT_READY
from core.calls.channel import Resilience
from core.config import Settings
from core.errors import DomainError
from mesh.admin.v1 import admin_pb2

C = TypeVar("C")

NOT_READY_ASK_SECONDS = 3.0  # how long to wait for the admin service to say why

# A person waits at the terminal: a call waits a second, not five, for a server to be
# ready (enough for a quick restart), and a server that is down is said to be at once.
CLI_RESILIENCE = Resilience(ready_wait=1.0)

ADDRESS_HELP = "HOST:PORT of the server (default: MESH_ADDRESS)"

# What a command does with its open client; a plain dict is printed as it is.
Call = Callable[[C, argparse.Namespace], Awaitable[Message | dict[str, Any]]]
# The typed client class, called as `Client(address, channel=..., resilience=...)`.
OpenClient = Callable[..., AbstractAsyncContextManager[C]]
ToJson = Callable[[Message], dict[str, Any]]
ToText = Callable[[Message], str]


def add_call(
    sub: Any,
    name: str,
    help: str,
    client: OpenClient[C],
    call: Call[C],
    to_json: ToJson = output.message_json,
    to_text: ToText | None = None,
) -> argparse.ArgumentParser:
    """Adds subcommand `name` to `sub`: it opens `client` at `--address` and prints what
    `call` returns (converted by `to_json`), exiting 0, or the error, exiting 1.

    With `to_text`, the result is printed as that text (tables), and as JSON with `--json`.
    """
    parser: argparse.ArgumentParser = sub.add_parser(name, help=help)
    parser.add_argument("--address", help=ADDRESS_HELP)
    if to_text is not None:
        parser.add_argument("--json", action="store_true", help="print the result as JSON")

    def run(args: argparse.Namespace, settings: Settings) -> int:
        text = None if getattr(args, "json", True) else to_text
        return asyncio.run(_call(client, call, to_json, args, settings, text))

    parser.set_defaults(run=run)
    return parser


async def _call(
    client: OpenClient[C],
    call: Call[C],
    to_json: ToJson,
    args: argparse.Namespace,
    settings: Settings,
    to_text: ToText | None = None,
) -> int:
    address = args.address or settings.address
    try:
        opening = client(address, channel=settings.channel(), resilience=CLI_RESILIENCE)
        async with opening as opened:
            result = await call(opened, args)
    except DomainError as exc:
        if exc.reason == SERVER_NOT_READY:
            return output.fail(await not_ready(address, settings, exc))
        return output.print_error(exc)
    if to_text is not None and not isinstance(result, dict):
        print(to_text(result))
    else:
        output.print_json(result if isinstance(result, dict) else to_json(result))
    return 0


async def not_ready(address: str, settings: Settings, exc: DomainError) -> str:
    """What to print when a call failed with `SERVER_NOT_READY`: which service at which
    address is not ready and, when the server's admin service answers (it serves while
    the server is not ready), which components are not healthy and why."""
    service = exc.metadata.get("service") or "the server"
    said = f"{service} at {address} is not ready"
    try:
        async with AdminClient(address, channel=settings.channel()) as admin:
            summary = await admin.get_service_summary(timeout=NOT_READY_ASK_SECONDS)
    except DomainError as asked:
        return f"{said} (its admin service did not say why: {asked.code.name})"
    return f"{said}: {why_not_ready(summary)}"


def why_not_ready(summary: admin_pb2.ServiceSummary) -> str:
    """The components of `summary` that are not healthy, as `NAME STATE (reason)`
    (the unhealthy ones if any); else the process's own status or reason."""
    health = admin_pb2.HealthState.Name
    unwell = [c for c in summary.components if c.health.state != admin_pb2.HEALTH_STATE_HEALTHY]
    # The unhealthy ones are what holds readiness back; degraded ones only when none is.
    unhealthy = [c for c in unwell if c.health.state == admin_pb2.HEALTH_STATE_UNHEALTHY]
    down = [
        f"{c.name} {health(c.health.state)[13:]}"
        + (f" ({c.health.reason})" if c.health.reason else "")
        for c in unhealthy or unwell
    ]
    if down:
        return "; ".join(down)
    if summary.status != admin_pb2.COMPONENT_STATUS_RUNNING:
        return admin_pb2.ComponentStatus.Name(summary.status)[17:]
    return summary.overall.reason or "every component reports healthy (it may be changing)"
