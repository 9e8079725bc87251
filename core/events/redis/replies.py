"""The scripts' replies as events, selectors and statuses, and the errors they stand for."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from core.errors import NotFoundError
from core.events.failures import DeliveryError, EndReason
from core.events.model import Event, GroupStatus, Selector, State


def as_text(value: bytes | str) -> str:
    """A reply value as text."""
    return value.decode() if isinstance(value, bytes) else value


def as_position(sid: bytes | str) -> str:
    """A stream id as a position; "0-0" (an empty stream's head) is ""."""
    found = as_text(sid)
    return "" if found == "0-0" else found


def parse_event(sid: bytes | str, body: bytes) -> Event:
    """A stored body as an event at stream id `sid`."""
    parsed = Event.FromString(body)
    parsed.position = as_text(sid)
    return parsed


def parse_events(flat: Sequence[Any]) -> list[Event]:
    """Events from a flat reply of stream id, body, stream id, body, ..."""
    return [parse_event(flat[i], flat[i + 1]) for i in range(0, len(flat), 2)]


def selector_json(selector: Selector) -> str:
    """A selector as the JSON the scripts read (`groups` values, the scan's argument)."""
    return json.dumps({"types": list(selector.types), "subject": selector.subject})


def parse_selector(raw: bytes | str) -> Selector:
    """A selector from its JSON."""
    found = json.loads(raw)
    return Selector(tuple(found["types"] or ()), found["subject"])


def parse_status(group: str, st: dict[str, Any], due: float | None, now: float) -> GroupStatus:
    """A group's status JSON (`st:<event>`) as a GroupStatus; `due` and `now` in ms and s."""
    state = State(st["s"])
    if state == State.DELIVERED and due is not None and due / 1000 <= now:
        state = State.RETRYING  # its visibility timeout ran out: it will be handed out again
    errors = [
        DeliveryError(
            e["m"],
            e["t"] / 1000,
            int(e["a"]),
            EndReason(int(e.get("r", 0))),
            e.get("y", ""),
            e.get("k", ""),
            e.get("c", ""),
        )
        for e in (st["e"] or [])
    ]
    return GroupStatus(group, state, int(st["a"]), st["c"], st["t"] / 1000, errors)


def no_group(group: str) -> NotFoundError:
    """NOT_FOUND (GROUP_NOT_FOUND) for a group nobody joined."""
    return NotFoundError(f"no group {group!r}", reason="GROUP_NOT_FOUND", metadata={"group": group})


def no_delivery(event_id: str, group: str) -> NotFoundError:
    """NOT_FOUND (DELIVERY_NOT_FOUND) for an event never handed to `group`."""
    return NotFoundError(
        f"event {event_id!r} was never delivered to group {group!r}",
        reason="DELIVERY_NOT_FOUND",
        metadata={"id": event_id, "group": group},
    )
