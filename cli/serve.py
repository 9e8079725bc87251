"""`mesh serve [SERVICE ...] [--address HOST:PORT]`: run services in this process.

The services are those installed (`core.runtime.declaration.discover`): each named one, or
every one hosted by default when none is named, plus those every process hosts.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from cli import VERSION, output
from core import faults
from core.config import Settings
from core.errors import ConfigError
from core.logging import configure_logging
from core.runtime.declaration import ServiceDeclaration
from core.runtime.host import container_for, host
from core.runtime.process import serve
from core.telemetry import configure_telemetry

Services = Mapping[str, ServiceDeclaration]


def add_commands(commands: Any, services: Services) -> None:
    """Adds `serve` to the `mesh` parser; `mesh serve --help` lists `services`."""

    def known(name: str) -> str:
        if name not in services:
            raise argparse.ArgumentTypeError(
                f"unknown service {name!r} (known: {', '.join(services)})"
            )
        return name

    parser = commands.add_parser(
        "serve",
        help="run services (all of them when none is named)",
        description="Run services in this process: those named, or all of them.",
        epilog=_listing(services),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "services", nargs="*", metavar="SERVICE", type=known, help="one of the services below"
    )
    parser.add_argument("--address", help="HOST:PORT to listen on (default: MESH_ADDRESS)")
    parser.set_defaults(run=lambda args, settings: _serve(args, settings, services))


def _listing(services: Services) -> str:
    width = max((len(name) for name in services), default=0)
    lines = ["services:"]
    for name, service in services.items():
        always = " (in every process)" if service.always_hosted else ""
        lines.append(f"  {name:<{width}}  {service.summary}{always}".rstrip())
    return "\n".join(lines)


def _serve(args: argparse.Namespace, settings: Settings, services: Services) -> int:
    if args.address:
        settings = _with_address(settings, args.address)
    try:
        settings.check_serving()
    except ConfigError as exc:
        return output.fail(str(exc), code=output.USAGE)
    configure_logging(
        service=settings.service_name,
        version=VERSION,
        log_format=settings.log_format,
        level=settings.log_level,
    )
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    faults.install(settings.test_faults)  # none unless MESH_TEST_FAULTS (never in production)
    try:
        telemetry = configure_telemetry(
            settings.telemetry, service=settings.service_name, version=VERSION
        )
    except OSError as exc:
        address = settings.telemetry.metrics_address
        message = f"cannot serve metrics on {address} (MESH_METRICS_ADDRESS): {exc}"
        return output.fail(message, code=output.USAGE)
    try:
        return asyncio.run(_run(settings, _hosted(services, args.services)))
    finally:
        telemetry.shutdown()  # exports the spans still batched


def _hosted(services: Services, named: list[str]) -> list[ServiceDeclaration]:
    """Those every process hosts, then those named (all when none is), once each."""
    chosen = named or list(services)
    always = [name for name, s in services.items() if s.always_hosted]
    return [services[name] for name in dict.fromkeys([*always, *chosen])]


async def _run(settings: Settings, hosted: list[ServiceDeclaration]) -> int:
    container = container_for(settings)
    host(hosted, settings, container)
    return await serve(container)


def _with_address(settings: Settings, address: str) -> Settings:
    try:
        parsed = Settings.from_env({"MESH_ADDRESS": address})
    except ConfigError:
        sys.exit(output.fail(f"--address {address!r} must be HOST:PORT", code=output.USAGE))
    # What `mesh status` shows as set: the address the option chose, not the variable's.
    kept = tuple(o for o in settings.overrides if o.name != "MESH_ADDRESS")
    overrides = tuple(sorted(kept + parsed.overrides, key=lambda o: o.name))
    return replace(settings, address=parsed.address, overrides=overrides)
