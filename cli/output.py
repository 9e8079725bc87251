"""What `mesh` prints: errors on stderr with their exit codes, JSON on stdout, and tables.

Every command prints through these, so a failed call looks the same whichever service
answered, and a script can rely on stdout holding only the result.
"""

from __future__ import annotations

import json
import signal
import sys
from dataclasses import dataclass
from typing import Any

from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message

from core.errors import DomainError, InvalidArgumentError

FAILED = 1  # the call or check failed, or what it reports is not well
USAGE = 2  # the command line or the environment is wrong; nothing was tried
# The reader of stdout went away (`mesh ... | head`): what a shell reports for a command
# killed by SIGPIPE, as `cat` or `grep` would be, so `set -o pipefail` scripts see the same.
BROKEN_PIPE = 128 + signal.SIGPIPE


def fail(message: str, *, code: int = FAILED) -> int:
    """Prints `mesh: message` on stderr; returns `code` for the command to exit with."""
    print(f"mesh: {message}", file=sys.stderr)
    return code


def notice(message: str) -> None:
    """Prints `mesh: message` on stderr: something the user should know; nothing failed."""
    print(f"mesh: {message}", file=sys.stderr, flush=True)


def print_json(payload: object, *, indent: int | None = 2, flush: bool = False) -> None:
    """Prints `payload` as JSON on stdout (one line when `indent` is None)."""
    print(json.dumps(payload, indent=indent), flush=flush)


def message_json(message: Message) -> dict[str, Any]:
    """A protobuf message as JSON, with the proto's field names.

    Its own list and map fields are always there, empty when the message has none
    (`{"events": []}`), so a script can read them without checking first; fields of the
    messages inside are shown as protobuf's JSON mapping does, without their defaults.
    """
    found = MessageToDict(message, preserving_proto_field_name=True)
    for field in message.DESCRIPTOR.fields:
        if field.is_repeated:
            is_map = field.message_type is not None and field.message_type.GetOptions().map_entry
            found.setdefault(field.name, {} if is_map else [])
    return found


def error_json(exc: DomainError) -> dict[str, Any]:
    """A failed call as JSON: code, reason, message, and metadata and violations if any."""
    error: dict[str, Any] = {"code": exc.code.name, "reason": exc.reason, "message": exc.message}
    if exc.metadata:
        error["metadata"] = exc.metadata
    if isinstance(exc, InvalidArgumentError) and exc.violations:
        error["violations"] = [
            {"field": v.field, "description": v.description} for v in exc.violations
        ]
    return error


def print_error(exc: DomainError) -> int:
    """Prints a failed call as indented JSON on stderr; returns the exit code, 1."""
    print(json.dumps(error_json(exc), indent=2), file=sys.stderr)
    return FAILED


@dataclass(frozen=True, slots=True)
class Column:
    """One column of a `Table`.

    Args:
        title: Its header.
        width: Cells are padded to this many characters (never cut); 0 leaves them as
            they are, for the last column.
        right: Align right (numbers) rather than left.
        gap: Spaces between the previous column and this one.
    """

    title: str
    width: int = 0
    right: bool = False
    gap: int = 1


class Table:
    """Fixed-width lines: `header()` once, then `row(...)` with one string per column.

    Usage::

        table = Table(Column("NAME", 20), Column("CALLS", 8, right=True))
        lines = [table.header(), *(table.row(m.name, str(m.calls)) for m in methods)]
    """

    def __init__(self, *columns: Column) -> None:
        self.columns = columns

    def header(self) -> str:
        """The line of column titles."""
        return self.row(*(c.title for c in self.columns))

    def row(self, *cells: str) -> str:
        """One line, each cell padded to its column's width."""
        if len(cells) != len(self.columns):
            raise ValueError(f"{len(cells)} cells for {len(self.columns)} columns")
        parts = []
        for i, (column, cell) in enumerate(zip(self.columns, cells, strict=True)):
            gap = " " * column.gap if i else ""
            parts.append(gap + (cell.rjust if column.right else cell.ljust)(column.width))
        return "".join(parts)
