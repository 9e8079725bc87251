"""`mesh cache clear [--resource NAME]`: drops the cached reads of every process that
shares the server's Redis, and Redis's own, through the server's admin service."""

from __future__ import annotations

import argparse
from typing import Any

from google.protobuf.message import Message

from cli.commands import add_call
from clients.admin import AdminClient


def add_commands(commands: Any) -> None:
    """Adds `cache` and its subcommand `clear` to the `mesh` parser."""
    parser = commands.add_parser("cache", help="operate the cache of a running mesh")
    sub = parser.add_subparsers(required=True, metavar="ACTION")
    clear = add_call(
        sub,
        "clear",
        "drop cached reads in Redis and in every process sharing it",
        AdminClient,
        _clear,
    )
    clear.add_argument(
        "--resource", default="", help='only this resource collection, e.g. "projects"'
    )


async def _clear(client: AdminClient, args: argparse.Namespace) -> Message:
    return await client.clear_cache(args.resource)
