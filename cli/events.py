"""`mesh events ...`: the events service from the command line, JSON in and out.

mesh events publish --type T --source S [--subject S] [--data JSON] [--id ID]
mesh events subscribe [--type PATTERN ...] [--from-beginning | --after POS] [--group G --ack]
mesh events status ID [--json]
mesh events history [--type PATTERN ...] [--since TIME] [--until TIME]
mesh events nack GROUP EVENT_ID [--delay SECONDS | --park] [--error TEXT]
mesh events dead-letters GROUP [--replay [ID ...]]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
from datetime import UTC, datetime
from typing import Any

from google.protobuf import descriptor_pool
from google.protobuf.message import Message
from google.protobuf.struct_pb2 import Struct
from google.protobuf.timestamp_pb2 import Timestamp

from cli import output
from cli.commands import ADDRESS_HELP, CLI_RESILIENCE, Call, add_call
from cli.output import Column, Table
from clients.events import Event, EventsClient, make_event
from core.config import Settings
from core.errors import DomainError, FieldViolation, InvalidArgumentError, NotFoundError
from mesh.events.v1 import events_pb2 as pb

DATA_HELP = (
    "the event's data as a JSON object; it is sent as a google.protobuf.Struct packed in "
    "the event's Any (type URL type.googleapis.com/google.protobuf.Struct), so numbers "
    "become doubles"
)
PATTERN_HELP = "an event type, or a prefix ending in .* (repeat for several; default: all)"
GROUP_POSITIONS = (
    "Consumer groups: a group has one position, shared by its members and kept by the "
    "server. The first subscription with --group creates the group, starting at its "
    "--from-beginning or --after, or else with the events published from then on. Every "
    "later member, and a member that comes back, continues where the group is: a start "
    "given then is ignored (the command says so on stderr)."
)


def add_commands(commands: Any) -> None:
    """Adds `events` and its subcommands to the `mesh` parser."""
    parser = commands.add_parser("events", help="publish, follow and inspect events")
    sub = parser.add_subparsers(required=True, metavar="ACTION")

    publish = _command(sub, "publish", "store one event; prints its id and position", _publish)
    publish.add_argument("--type", required=True, help="e.g. mesh.demo.v1.thing.done")
    publish.add_argument("--source", required=True, help="the producer, e.g. mesh.demo.v1")
    publish.add_argument("--subject", default="", help="the resource, e.g. things/1")
    publish.add_argument("--data", metavar="JSON", help=DATA_HELP)
    publish.add_argument("--id", default="", help="the event id (default: a new UUID)")
    publish.add_argument("--attribute", action="append", default=[], metavar="KEY=VALUE")

    subscribe = sub.add_parser(
        "subscribe",
        help="print events as they come, one JSON object per line, until Ctrl-C",
        description="Prints each message of the subscription as one JSON line, e.g. "
        '{"event": {...}} (group deliveries add "attempt"). Events the server lost or '
        'trimmed before they were read are printed as {"gap": {...}}, and said on stderr. '
        "Reconnects by itself when the server goes away, resuming where it was. "
        "Exits 0 on Ctrl-C.",
        epilog=GROUP_POSITIONS,
    )
    subscribe.add_argument("--address", help=ADDRESS_HELP)
    subscribe.add_argument("--type", action="append", default=[], help=PATTERN_HELP)
    subscribe.add_argument("--subject", default="", help="only events about this subject")
    start = subscribe.add_mutually_exclusive_group()
    start.add_argument(
        "--from-beginning",
        action="store_true",
        help="start at the first stored event (with --group: only if this creates the group)",
    )
    start.add_argument(
        "--after",
        default="",
        metavar="POS",
        help="start after this position (with --group: only if this creates the group)",
    )
    subscribe.add_argument("--group", default="", help="join this consumer group")
    subscribe.add_argument("--consumer", default="", help="this member's name in the group")
    subscribe.add_argument("--ack", action="store_true", help="ack each event once printed")
    subscribe.add_argument(
        "--markers", action="store_true", help="also print caught_up and checkpoint messages"
    )
    subscribe.set_defaults(run=_run_subscribe)

    status = add_call(
        sub,
        "status",
        "show an event, its delivery to every group and each failed attempt (a table)",
        EventsClient,
        _status,
        to_json=_json,
        to_text=_status_text,
    )
    status.add_argument("id", help="the event id")

    history = _command(sub, "history", "list stored events, oldest first", _history)
    history.add_argument("--type", action="append", default=[], help=PATTERN_HELP)
    history.add_argument("--subject", default="", help="only events about this subject")
    for flag, edge in (("--since", "at or after"), ("--until", "before")):
        history.add_argument(flag, type=_time, metavar="TIME", help=f"only events {edge} TIME")
    history.add_argument("--page-size", type=int, default=0)
    history.add_argument("--page-token", default="")

    nack = _command(sub, "nack", "give an event back to its group; prints its state", _nack)
    nack.add_argument("group", help="the group the event was delivered to")
    nack.add_argument("event_id", metavar="EVENT_ID")
    again = nack.add_mutually_exclusive_group()
    again.add_argument(
        "--delay", type=float, metavar="SECONDS", help="retry after this long (default: at once)"
    )
    again.add_argument("--park", action="store_true", help="move it to the dead letters")
    nack.add_argument("--error", default="", metavar="TEXT", help="why, kept in its status")

    letters = _command(sub, "dead-letters", "list (or replay) a group's dead letters", _letters)
    letters.add_argument("group")
    letters.add_argument("--page-size", type=int, default=0)
    letters.add_argument("--page-token", default="")
    letters.add_argument(
        "--replay",
        nargs="*",
        metavar="ID",
        help="deliver these dead letters (all of them when no ID is given) to the group again",
    )


def _command(sub: Any, name: str, help: str, call: Call[EventsClient]) -> argparse.ArgumentParser:
    return add_call(sub, name, help, EventsClient, call, to_json=_json)


async def _publish(client: EventsClient, args: argparse.Namespace) -> Message:
    data = None
    if args.data is not None:
        data = Struct()
        data.update(_object(args.data))
    attributes = dict(_pair(item) for item in args.attribute)
    event = make_event(
        args.type, args.source, subject=args.subject, data=data, attributes=attributes, id=args.id
    )
    return await client.publish(event)


async def _status(client: EventsClient, args: argparse.Namespace) -> Message:
    return await client.status(args.id)


def _status_text(message: Message) -> str:
    """GetEventStatus as `mesh events status` prints it: the event, its groups, and every
    failed attempt kept (with its stack after the table, where the server returns stacks)."""
    assert isinstance(message, pb.GetEventStatusResponse)
    event = message.event
    lines = [
        f"event {event.id}  type {event.type}  source {event.source}",
        f"subject {event.subject or '-'}  position {event.position}  time {_when(event.time)}",
        "",
    ]
    if not message.groups:
        return "\n".join([*lines, "no group wants this event"])
    groups = Table(
        *(Column("GROUP", 20), Column("STATE", 14), Column("ATTEMPTS", 8, right=True)),
        *(Column("CONSUMER", 20), Column("UPDATED")),
    )
    lines.append(groups.header())
    for g in message.groups:
        state = pb.DeliveryState.Name(g.state).removeprefix("DELIVERY_STATE_")
        row = (g.group, state, str(g.attempts), g.consumer or "-", _when(g.update_time))
        lines.append(groups.row(*row))
    attempts = Table(
        *(Column("GROUP", 20), Column("ATTEMPT", 7, right=True), Column("TIME", 24)),
        *(Column("CONSUMER", 20), Column("END REASON", 14), Column("ERROR TYPE", 20)),
        Column("MESSAGE"),
    )
    failed = [(g.group, e) for g in message.groups for e in g.errors]
    lines += ["", attempts.header() if failed else "no failed attempts"]
    for group, e in failed:
        reason = pb.DeliveryEndReason.Name(e.reason).removeprefix("DELIVERY_END_REASON_")
        cells = (str(e.attempt), _when(e.time), e.consumer or "-", reason, e.error_type or "-")
        lines.append(attempts.row(group, *cells, e.message.replace("\n", " ")))
    for group, e in failed:
        if e.stack:
            lines += ["", f"stack of {group} attempt {e.attempt}:", e.stack.rstrip()]
    return "\n".join(lines)


def _when(stamp: Timestamp) -> str:
    if not stamp.seconds and not stamp.nanos:
        return "-"
    return stamp.ToDatetime(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


async def _history(client: EventsClient, args: argparse.Namespace) -> Message:
    return await client.history(
        types=args.type,
        subject=args.subject,
        start_time=args.since,
        end_time=args.until,
        page_size=args.page_size,
        page_token=args.page_token,
    )


async def _nack(client: EventsClient, args: argparse.Namespace) -> Message:
    state = await client.nack(
        args.group, args.event_id, retry_delay=args.delay, park=args.park, error=args.error
    )
    return pb.NackResponse(state=state)


async def _letters(client: EventsClient, args: argparse.Namespace) -> Message | dict[str, Any]:
    if args.replay is not None:
        return {"replayed_count": await client.replay(args.group, args.replay)}
    return await client.dead_letters(
        args.group, page_size=args.page_size, page_token=args.page_token
    )


def _run_subscribe(args: argparse.Namespace, settings: Settings) -> int:
    try:
        return asyncio.run(_subscribe(args, settings))
    except KeyboardInterrupt:  # Ctrl-C is how a follower is meant to stop
        return 0


async def _subscribe(args: argparse.Namespace, settings: Settings) -> int:
    try:
        if args.ack and not args.group:
            raise _invalid("--ack", "needs --group: only group deliveries are acked")
        address = args.address or settings.address
        opening = EventsClient(address, channel=settings.channel(), resilience=CLI_RESILIENCE)
        async with opening as client:
            if args.group:
                await _explain_group_start(client, args)
            stream = client.subscribe(
                types=args.type,
                subject=args.subject,
                after=args.after,
                beginning=args.from_beginning,
                group=args.group,
                consumer=args.consumer,
                markers=True,  # for the gaps; the other markers are printed on request
            )
            async with stream:
                async for message in stream:
                    kind = message.WhichOneof("kind")
                    if kind == "gap":
                        output.notice(f"events lost: {message.gap.message}")
                    elif kind != "event" and not args.markers:
                        continue
                    output.print_json(_json(message), indent=None, flush=True)
                    if args.ack and message.HasField("event"):
                        await client.ack(args.group, [message.event.id])
    except DomainError as exc:
        return output.print_error(exc)
    return 0


async def _explain_group_start(client: EventsClient, args: argparse.Namespace) -> None:
    """Says on stderr when the group's start is not what the flags may suggest: a start
    given for a group that exists (ignored), or none for a new group (it starts now)."""
    try:
        await client.dead_letters(args.group, page_size=1)
    except NotFoundError as exc:
        if exc.reason != "GROUP_NOT_FOUND":
            return
        if not (args.from_beginning or args.after):
            output.notice(
                f"group {args.group!r} is new: it starts with the events published from now "
                "on (add --from-beginning to take the stored ones too)"
            )
        return
    except DomainError:  # e.g. not reachable yet: the subscription retries by itself
        return
    given = "--from-beginning" if args.from_beginning else "--after" if args.after else ""
    if given:
        output.notice(
            f"group {args.group!r} exists: {given} is ignored; "
            "its members continue where the group is"
        )


def _object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise _invalid("--data", f"not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise _invalid("--data", "must be a JSON object, e.g. '{\"n\": 1}'")
    return value


def _pair(item: str) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    if not sep:
        raise _invalid("--attribute", f"{item!r} must be KEY=VALUE")
    return key, value


def _time(text: str) -> datetime:
    """An ISO 8601 time; without an offset it is UTC."""
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an ISO 8601 time") from None


def _invalid(flag: str, description: str) -> InvalidArgumentError:
    return InvalidArgumentError(f"invalid {flag}", violations=[FieldViolation(flag, description)])


def _json(message: Message) -> dict[str, Any]:
    """The message as JSON. Event data of a type this program does not know is shown as
    its type URL and base64 bytes, where MessageToDict would fail."""
    copy = type(message)()
    copy.CopyFrom(message)
    opaque: dict[str, dict[str, str]] = {}
    for event in _events(copy):
        if event.HasField("data") and not _known(event.data.type_url):
            value = base64.b64encode(event.data.value).decode()
            opaque[event.id] = {"@type": event.data.type_url, "base64": value}
            event.ClearField("data")
    found = output.message_json(copy)
    _fill(found, opaque)
    return found


def _events(message: Message) -> list[Event]:
    if isinstance(message, pb.ListEventsResponse):
        return list(message.events)
    if isinstance(message, pb.ListDeadLettersResponse):
        return [letter.event for letter in message.dead_letters]
    if isinstance(message, pb.SubscribeResponse | pb.GetEventStatusResponse):
        return [message.event]
    return []


def _known(type_url: str) -> bool:
    try:
        descriptor_pool.Default().FindMessageTypeByName(type_url.rpartition("/")[2])
    except KeyError:
        return False
    return True


def _fill(node: Any, opaque: dict[str, dict[str, str]]) -> None:
    """Puts each opaque payload back into the JSON of its event (ids are unique)."""
    if isinstance(node, list):
        for item in node:
            _fill(item, opaque)
    elif isinstance(node, dict):
        if "source" in node and node.get("id") in opaque:
            node["data"] = opaque[node["id"]]
        for item in node.values():
            _fill(item, opaque)
