"""`mesh`: its parser, built from meshkit's commands and every installed service's group.

mesh serve [SERVICE ...] [--address HOST:PORT]
mesh health [--service NAME] [--watch] [--address HOST:PORT]
mesh status [--json] [--address HOST:PORT]
mesh cache clear [--resource NAME] [--address HOST:PORT]
mesh audit [--resource NAME] [--principal SUBJECT] [--since TIME] [--until TIME] [--json]
mesh db upgrade
mesh <service> ...   (e.g. `mesh projects get ID`, `mesh events subscribe`)

With MESH_TRACES_EXPORTER set, every command that calls a server traces its calls: a
CLIENT span per call (service `mesh-cli`), its `traceparent` sent, the spans exported
before the command exits (console spans on stderr: stdout is the command's result).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from dataclasses import replace

from cli import VERSION, audit, cache, db, output, serve, status
from core.config import Settings
from core.errors import ConfigError
from core.logging import configure_logging
from core.runtime.declaration import discover
from core.telemetry import configure_telemetry

# Commands the CLI does not trace: `serve` sets up its own telemetry, `db` calls no server.
UNTRACED = frozenset({"serve", "db"})


def main(argv: Sequence[str] | None = None) -> None:
    """Runs `mesh` with `argv` (default: the process's arguments) and exits with its code.

    When the reader of stdout goes away (`mesh events history | head`), the command ends
    at once, without a traceback, with the status of a process killed by SIGPIPE (141).
    """
    try:
        try:
            code = _run(argv)
        finally:  # also after argparse's exit (--help): a closed pipe fails here, not at exit
            sys.stdout.flush()
    except BrokenPipeError:
        # Later writes (the interpreter's final flush) go nowhere rather than failing again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = output.BROKEN_PIPE
    sys.exit(code)


def _run(argv: Sequence[str] | None) -> int:
    try:
        parser = build_parser()
    except ConfigError as exc:  # an installed service that does not load
        return output.fail(str(exc), code=output.USAGE)
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        return output.fail(str(exc), code=output.USAGE)
    if args.command in UNTRACED:
        code: int = args.run(args, settings)
        return code
    level = settings.log_level if settings.log_level in ("warning", "error") else "warning"
    # A command's logs (a client's `retry.scheduled`, the exporter's failures) go to
    # stderr, quietly: stdout is the command's result.
    configure_logging(
        service="mesh-cli", version=VERSION, log_format=settings.log_format, level=level
    )
    if not settings.telemetry.tracing:
        code = args.run(args, settings)
        return code
    return _traced(args, settings)


def _traced(args: argparse.Namespace, settings: Settings) -> int:
    """Runs the command with tracing on, and exports its spans before returning."""
    telemetry = configure_telemetry(
        replace(settings.telemetry, metrics=False, metrics_address=""),
        service="mesh-cli",
        version=VERSION,
        console=sys.stderr,
    )
    try:
        code: int = args.run(args, settings)
        return code
    finally:
        telemetry.shutdown()  # exports the spans still batched


def build_parser() -> argparse.ArgumentParser:
    """The `mesh` parser; each command sets `run(args, settings) -> exit code`."""
    services = discover()
    parser = argparse.ArgumentParser(prog="mesh", description="Run and inspect a meshkit mesh.")
    parser.add_argument("--version", action="version", version=f"meshkit {VERSION}")
    commands = parser.add_subparsers(required=True, metavar="COMMAND", dest="command")
    serve.add_commands(commands, services)
    status.add_commands(commands)
    cache.add_commands(commands)
    audit.add_commands(commands)
    db.add_commands(commands, services)
    for service in services.values():
        add_commands = service.load_commands()
        if add_commands is not None:
            add_commands(commands)
    return parser
