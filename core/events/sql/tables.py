"""The SQL event store's tables, and how rows become events, selectors and positions.

The tables mirror core/data/migrations/versions/0002_events.py: queries use these,
migrations own the DDL.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from core.errors import FieldViolation, InvalidArgumentError, NotFoundError
from core.events.model import Event, Selector

metadata = sa.MetaData()
_Position = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

events = sa.Table(
    "mesh_events",
    metadata,
    sa.Column("position", _Position, primary_key=True),
    sa.Column("event_id", sa.String(64), nullable=False, unique=True),
    sa.Column("type", sa.String(200), nullable=False),
    sa.Column("subject", sa.String(500), nullable=False),
    sa.Column("time_us", sa.BigInteger(), nullable=False),  # the event's time, for history
    sa.Column("body", sa.LargeBinary(), nullable=False),  # the serialized Event, no position
)
groups = sa.Table(
    "mesh_event_groups",
    metadata,
    sa.Column("name", sa.String(100), primary_key=True),
    sa.Column("types", sa.JSON(), nullable=False),
    sa.Column("subject", sa.String(500), nullable=False),
    sa.Column("cursor", sa.BigInteger(), nullable=False),  # every position up to it is handed
)
deliveries = sa.Table(
    "mesh_event_deliveries",
    metadata,
    sa.Column("group_name", sa.String(100), primary_key=True),
    sa.Column("event_id", sa.String(64), primary_key=True),
    sa.Column("position", sa.BigInteger(), nullable=False),
    sa.Column("state", sa.SmallInteger(), nullable=False),
    sa.Column("consumer", sa.String(200), nullable=False),
    sa.Column("attempts", sa.Integer(), nullable=False),
    sa.Column("due", sa.Float(), nullable=True),  # when it is handed out (again); epoch seconds
    sa.Column("update_time", sa.Float(), nullable=False),
    sa.Column("errors", sa.JSON(), nullable=False),
)

HEAD = sa.select(sa.func.max(events.c.position))


def order_key(position: str) -> tuple[int, ...]:
    """A position (a row number) as a sortable key; INVALID_POSITION if malformed."""
    if not position:
        return ()
    if not position.isdigit() or len(position) > 19:
        raise InvalidArgumentError(
            "malformed position",
            reason="INVALID_POSITION",
            violations=[FieldViolation("position", "not a position of this event store")],
        )
    return (int(position),)


def start_of(after: str) -> int:
    """The row number after which a read starts; 0 for the beginning."""
    return order_key(after)[0] if after else 0


def as_event(body: bytes, position: int) -> Event:
    """A stored body as an event at `position`."""
    event = Event.FromString(body)
    event.position = str(position)
    return event


def as_text(position: int | None) -> str:
    """A row number as a position; "" for none (an empty table's head)."""
    return str(position) if position else ""


def where(selector: Selector) -> list[sa.ColumnElement[bool]]:
    """The conditions on `events` rows that `selector` matches."""
    found = []
    if selector.types:
        kinds = [events.c.type.startswith(p, autoescape=True) for p in selector.prefixes]
        if selector.exact:
            kinds.append(events.c.type.in_(selector.exact))
        found.append(sa.or_(*kinds))
    if selector.subject:
        found.append(events.c.subject == selector.subject)
    return found


def group_query(group: str, lock: bool = False) -> sa.Select[Any]:
    """The group's row, locked for the transaction with `lock`."""
    query = sa.select(groups).where(groups.c.name == group)
    return query.with_for_update() if lock else query


def selector_of(group: Any) -> Selector:
    """The selector of a `groups` row."""
    return Selector(tuple(group.types), group.subject)


def no_group(group: str) -> NotFoundError:
    """NOT_FOUND (GROUP_NOT_FOUND) for a group nobody joined."""
    return NotFoundError(f"no group {group!r}", reason="GROUP_NOT_FOUND", metadata={"group": group})
