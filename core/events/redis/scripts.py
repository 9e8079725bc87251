"""The Lua scripts of the Redis event store: each state change is one atomic script.

The scripts are the `lua/*.lua` files of this package (package data, read with
`importlib.resources`). Each runs as the constants below, then `lua/prelude.lua` (the key
prefix, from ARGV[1], and helpers), then its own file.
"""

from __future__ import annotations

import json
from importlib import resources

from core.events.failures import DISCONNECTED_MESSAGE, MAX_ERRORS_KEPT, TIMED_OUT_MESSAGE, EndReason
from core.events.model import State

SCAN = 2_000  # most entries one read, history or claim script looks at: bounds its run time

NAMES = (
    "append",
    "scan",
    "info",
    "open",
    "recover",
    "join",
    "claim",
    "ack",
    "nack",
    "release",
    "unacked",
    "get",
    "status",
    "dead_letters",
    "replay",
)

_CONSTANTS = (
    f"local DELIVERED, ACKED, RETRYING, DEAD = {State.DELIVERED:d}, {State.ACKED:d}, "
    f"{State.RETRYING:d}, {State.DEAD_LETTERED:d}\n"
    f"local TIMED_OUT, DISCONNECTED = {EndReason.TIMED_OUT:d}, {EndReason.DISCONNECTED:d}\n"
    f"local TIMED_OUT_MESSAGE = {json.dumps(TIMED_OUT_MESSAGE)}\n"
    f"local DISCONNECTED_MESSAGE = {json.dumps(DISCONNECTED_MESSAGE)}\n"
    f"local MAX_ERRORS = {MAX_ERRORS_KEPT:d}\n"
    f"local SCAN = {SCAN:d}\n"
)


def _read(name: str) -> str:
    return (resources.files("core.events.redis") / "lua" / f"{name}.lua").read_text("utf-8")


# Read once, at import: the text Redis runs for each script.
SOURCES = {name: _CONSTANTS + _read("prelude") + _read(name) for name in NAMES}
