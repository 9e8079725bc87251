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
from core.config import Settings
from core.errors import DomainError

C = TypeVar("C")

ADDRESS_HELP = "HOST:PORT of the server (default: MESH_ADDRESS)"

# What a command does with its open client; a plain dict is printed as it is.
Call = Callable[[C, argparse.Namespace], Awaitable[Message | dict[str, Any]]]
# The typed client class, called as `Client(address, channel=settings.channel())`.
OpenClient = Callable[..., AbstractAsyncContextManager[C]]
ToJson = Callable[[Message], dict[str, Any]]


def add_call(
    sub: Any,
    name: str,
    help: str,
    client: OpenClient[C],
    call: Call[C],
    to_json: ToJson = output.message_json,
) -> argparse.ArgumentParser:
    """Adds subcommand `name` to `sub`: it opens `client` at `--address` and prints what
    `call` returns (converted by `to_json`), exiting 0, or the error, exiting 1."""
    parser: argparse.ArgumentParser = sub.add_parser(name, help=help)
    parser.add_argument("--address", help=ADDRESS_HELP)

    def run(args: argparse.Namespace, settings: Settings) -> int:
        return asyncio.run(_call(client, call, to_json, args, settings))

    parser.set_defaults(run=run)
    return parser


async def _call(
    client: OpenClient[C],
    call: Call[C],
    to_json: ToJson,
    args: argparse.Namespace,
    settings: Settings,
) -> int:
    address = args.address or settings.address
    try:
        async with client(address, channel=settings.channel()) as opened:
            result = await call(opened, args)
    except DomainError as exc:
        return output.print_error(exc)
    output.print_json(result if isinstance(result, dict) else to_json(result))
    return 0
