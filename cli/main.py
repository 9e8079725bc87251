"""`mesh`: its parser, built from meshkit's commands and every installed service's group.

mesh serve [SERVICE ...] [--address HOST:PORT]
mesh health [--service NAME] [--watch] [--address HOST:PORT]
mesh status [--json] [--address HOST:PORT]
mesh db upgrade
mesh <service> ...   (e.g. `mesh projects get ID`, `mesh events subscribe`)
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from cli import VERSION, db, output, serve, status
from core.config import Settings
from core.errors import ConfigError
from core.runtime.declaration import discover


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
    code: int = args.run(args, settings)
    return code


def build_parser() -> argparse.ArgumentParser:
    """The `mesh` parser; each command sets `run(args, settings) -> exit code`."""
    services = discover()
    parser = argparse.ArgumentParser(prog="mesh", description="Run and inspect a meshkit mesh.")
    parser.add_argument("--version", action="version", version=f"meshkit {VERSION}")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")
    serve.add_commands(commands, services)
    status.add_commands(commands)
    db.add_commands(commands, services)
    for service in services.values():
        add_commands = service.load_commands()
        if add_commands is not None:
            add_commands(commands)
    return parser
