"""`mesh audit`: the audit log of a server's resource writes (AdminService.ListAuditRecords).

mesh audit [--resource NAME] [--principal SUBJECT] [--since TIME] [--until TIME]
           [--page-size N] [--page-token TOKEN] [--json] [--address HOST:PORT]

Prints one page, newest first, as a table (or with --json the response as JSON); when
more pages follow, the table ends with the `--page-token=TOKEN` of the next one (pass it
with "=": a token may start with "-").
"""

from __future__ import annotations

import argparse
import asyncio
import json
from datetime import datetime
from typing import Any

from google.protobuf import struct_pb2
from google.protobuf.json_format import MessageToDict

from cli import output
from cli.commands import ADDRESS_HELP
from cli.output import Column, Table
from clients.admin import AdminClient
from core.config import Settings
from core.errors import DomainError
from mesh.admin.v1 import admin_pb2

RECORDS = Table(
    Column("TIME", 24),
    Column("PRINCIPAL", 16),
    Column("ACTION", 8),
    Column("RESOURCE", 28),
    Column("CHANGES", gap=2),
)


def add_commands(commands: Any) -> None:
    """Adds `audit` to the `mesh` parser."""
    audit = commands.add_parser("audit", help="list the audit log of resource writes")
    audit.add_argument("--resource", default="", help="only writes of this resource")
    audit.add_argument("--principal", default="", help="only writes by this subject")
    for flag, edge in (("--since", "at or after"), ("--until", "before")):
        audit.add_argument(flag, type=_time, metavar="TIME", help=f"only writes {edge} TIME")
    audit.add_argument("--page-size", type=int, default=0)
    audit.add_argument("--page-token", default="")
    audit.add_argument("--json", action="store_true", help="print the page as JSON")
    audit.add_argument("--address", help=ADDRESS_HELP)
    audit.set_defaults(run=lambda a, s: asyncio.run(_audit(a, s)))


async def _audit(args: argparse.Namespace, settings: Settings) -> int:
    address = args.address or settings.address
    try:
        async with AdminClient(address, channel=settings.channel()) as client:
            page = await client.list_audit_records(
                resource=args.resource,
                principal=args.principal,
                start=args.since,
                end=args.until,
                page_size=args.page_size,
                page_token=args.page_token,
            )
    except DomainError as exc:
        return output.print_error(exc)
    if args.json:
        output.print_json(output.message_json(page))
    else:
        print(records_table(page))
    return 0


def records_table(page: admin_pb2.ListAuditRecordsResponse) -> str:
    """A page as `mesh audit` prints it: one line per record, then the next page's token."""
    lines = [RECORDS.header()]
    for r in page.records:
        time = r.time.ToDatetime().isoformat(timespec="milliseconds")
        changes = "; ".join(_change(c) for c in r.changes)
        lines.append(RECORDS.row(time, r.principal, r.action, r.resource, changes))
    if page.next_page_token:
        # With "=": a token may start with "-", which argparse would take for an option.
        lines.append(f"more: --page-token={page.next_page_token}")
    return "\n".join(lines)


def _change(change: admin_pb2.FieldChange) -> str:
    if change.secret:
        return f"{change.field}: (secret)"
    return f"{change.field}: {_value(change.old_value)} -> {_value(change.new_value)}"


def _value(value: struct_pb2.Value) -> str:
    kind = value.WhichOneof("kind")
    if kind in (None, "null_value"):
        return "-"
    return json.dumps(MessageToDict(value))


def _time(text: str) -> datetime:
    """An ISO 8601 time; without an offset it is UTC."""
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an ISO 8601 time") from None
