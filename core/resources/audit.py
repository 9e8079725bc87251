"""The audit log: one record per write of a resource, in the transaction of the write.

The CRUD engine records every create, update, delete and undelete a caller makes: who
(the principal's subject), through which method (the RPC, or the engine's verb outside
one), under which request id, when, on which resource, and which fields changed from what
to what. A field the resource declares secret (`Resource.secret_fields`) is recorded as
changed without its values. The record is written inside the write's transaction, so a
write that rolls back leaves no record. No RPC changes a record: they are read with
`AuditLog.page` (AdminService.ListAuditRecords) and deleted only once older than the
retention, by the resource's purger (`forget_expired`).

Usage::

    async with db.transaction() as tx:
        ...  # the write
        await record(tx, resource="projects/demo", action="update", request_id=rid,
                     changes=diff(PROJECTS, old, new))
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
import structlog
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message

from core.data.transaction import Transaction
from core.events.outbox import metadata, outbox
from core.resources.resource import Resource
from core.security.principal import current_principal

# Mirrors core/data/migrations/versions/0003_audit.py.
audit_records = sa.Table(
    "mesh_audit_records",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
    sa.Column("time", sa.DateTime(timezone=True), nullable=False),
    sa.Column("principal", sa.String(500), nullable=False),
    sa.Column("method", sa.String(200), nullable=False),
    sa.Column("action", sa.String(32), nullable=False),
    sa.Column("request_id", sa.String(64), nullable=False),
    sa.Column("resource", sa.String(500), nullable=False),
    sa.Column("changes", sa.JSON(), nullable=False),
)

# Fields every write changes, or that only repeat the name: left out of the changes.
_NOISE = frozenset({"name", "etag", "update_time", "create_time"})


@dataclass(frozen=True, slots=True)
class Change:
    """One field a write changed. `old`/`new` are JSON values (None: unset); both None
    and `secret` True for a secret field."""

    field: str
    old: Any
    new: Any
    secret: bool = False

    def to_json(self) -> dict[str, Any]:
        if self.secret:
            return {"field": self.field, "secret": True}
        return {"field": self.field, "old": self.old, "new": self.new}


def diff(resource: Resource[Any], old: Message | None, new: Message) -> list[Change]:
    """The top-level fields that differ between `old` (None: created) and `new`, by name.

    Values are as `MessageToDict` (preserving field names) gives them; see `_fields`.
    """
    before = _fields(old)
    after = _fields(new)
    secret = resource.secret_fields
    changes = []
    for name in sorted(before.keys() | after.keys()):
        if before.get(name) == after.get(name):
            continue
        if name in secret:
            changes.append(Change(name, None, None, secret=True))
        else:
            changes.append(Change(name, before.get(name), after.get(name)))
    return changes


def _fields(message: Message | None) -> dict[str, Any]:
    """The set top-level fields of `message` but the noise, as JSON values.

    The same values as `MessageToDict(message, preserving_proto_field_name=True)`, but
    only the fields kept are converted, and the common kinds (strings, bools, 32-bit
    integers, enums, string maps) skip json_format's walk, which was two thirds of the
    CPU a create spent in Python on its audit record.
    """
    if message is None:
        return {}
    converters = _converters(message.DESCRIPTOR)
    found: dict[str, Any] = {}
    whole: dict[str, Any] | None = None
    for field, value in message.ListFields():
        name = field.name
        if name in _NOISE:
            continue
        convert = converters.get(name)
        if convert is None:  # anything else: json_format's own conversion
            if whole is None:
                whole = MessageToDict(message, preserving_proto_field_name=True)
            found[name] = whole[name]
        else:
            found[name] = convert(value)
    return found


def _identity(value: Any) -> Any:
    return value


def _enum_name(names: dict[int, str], number: int) -> str | int:
    return names.get(number, number)  # an open enum's unknown value stays a number


def _json_value(value: Message) -> Any:
    return MessageToDict(value, preserving_proto_field_name=True)


@functools.cache
def _converters(message: Descriptor) -> dict[str, Callable[[Any], Any]]:
    """How to turn each field of `message` that has a plain JSON form into it; the
    fields left out take `MessageToDict`'s path."""
    found: dict[str, Callable[[Any], Any]] = {}
    for field in message.fields:
        entry = field.message_type
        if entry is not None and entry.GetOptions().map_entry:
            key, value = entry.fields_by_name["key"], entry.fields_by_name["value"]
            if key.type == FieldDescriptor.TYPE_STRING and value.type in _PLAIN:
                found[field.name] = dict
        elif field.is_repeated:
            continue
        elif field.type in _PLAIN:
            found[field.name] = _identity
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            found[field.name] = _json_value
        elif field.enum_type is not None and (names := _enum_names(field.enum_type)):
            found[field.name] = functools.partial(_enum_name, names)
    return found


def _enum_names(enum: EnumDescriptor) -> dict[int, str] | None:
    """The JSON names of an open enum's values, or None when json_format must decide (a
    closed enum, NullValue, or a value with options of its own such as a JSON name)."""
    if enum.full_name == "google.protobuf.NullValue" or enum.is_closed:
        return None
    if any(v.GetOptions().ListFields() for v in enum.values):
        return None
    return {v.number: v.name for v in enum.values}


_PLAIN = frozenset(
    {
        FieldDescriptor.TYPE_STRING,
        FieldDescriptor.TYPE_BOOL,
        FieldDescriptor.TYPE_INT32,
        FieldDescriptor.TYPE_SINT32,
        FieldDescriptor.TYPE_SFIXED32,
        FieldDescriptor.TYPE_UINT32,
        FieldDescriptor.TYPE_FIXED32,
    }
)
"""Field types whose JSON value is the Python value itself."""


def audit_row(
    *, resource: str, action: str, request_id: str, changes: Sequence[Change]
) -> dict[str, Any]:
    """The record of one write by the current principal, in the current call's method."""
    method = structlog.contextvars.get_contextvars().get("rpc") or action
    return {
        "time": datetime.now(UTC),
        "principal": current_principal().subject,
        "method": str(method)[:200],
        "action": action,
        "request_id": request_id,
        "resource": resource,
        "changes": [c.to_json() for c in changes],
    }


async def record(
    tx: Transaction, *, resource: str, action: str, request_id: str, changes: Sequence[Change]
) -> None:
    """Writes the record of one write inside `tx`: it commits or rolls back with it."""
    row = audit_row(resource=resource, action=action, request_id=request_id, changes=changes)
    await tx.conn.execute(_INSERT, row)


_INSERT = audit_records.insert()


async def forget_expired(tx: Transaction, keep: timedelta, batch: int = 5000) -> int:
    """Deletes up to `batch` records older than `keep`; returns how many."""
    table = audit_records
    due = (
        sa.select(table.c.id)
        .where(table.c.time < datetime.now(UTC) - keep)
        .limit(batch)
        .with_for_update(skip_locked=True)
    )
    result = await tx.conn.execute(table.delete().where(table.c.id.in_(due.scalar_subquery())))
    return int(result.rowcount)


def insert_with_event_and_audit(table: sa.Table) -> sa.Insert:
    """One statement that inserts a row of `table` and, only if that succeeds, its outbox
    event and its audit record: PostgreSQL runs data-modifying WITHs as one atomic statement.

    Parameters: the row's columns by name, the event's with an `event_` prefix
    (`core.events.outbox.with_event`) and the record's with an `audit_` prefix (`with_audit`).
    """
    row = {c.name: sa.bindparam(c.name, type_=c.type) for c in table.c}
    created = table.insert().values(row).returning(*table.primary_key.columns).cte("created")
    event_columns = [c for c in outbox.c if c.name not in ("position", "sent_time")]
    event = sa.select(
        *[sa.bindparam(f"event_{c.name}", type_=c.type).label(c.name) for c in event_columns]
    ).select_from(created)
    evented = outbox.insert().from_select([c.name for c in event_columns], event).cte("evented")
    record = sa.select(
        *[sa.bindparam(f"audit_{c.name}", type_=c.type).label(c.name) for c in _RECORD_COLUMNS]
    ).select_from(created)
    return (
        audit_records.insert()
        .from_select([c.name for c in _RECORD_COLUMNS], record)
        .add_cte(created)
        .add_cte(evented)
    )


def insert_event_and_audit() -> sa.Insert:
    """One statement that inserts an outbox event and an audit record (PostgreSQL runs
    a data-modifying WITH to completion even unreferenced): a write in a transaction
    then makes one round trip for both instead of two.

    Parameters: the event's with an `event_` prefix, the record's with an `audit_` one.
    """
    event_columns = [c for c in outbox.c if c.name not in ("position", "sent_time")]
    evented = (
        outbox.insert()
        .values({c.name: sa.bindparam(f"event_{c.name}", type_=c.type) for c in event_columns})
        .cte("evented")
    )
    record = {c.name: sa.bindparam(f"audit_{c.name}", type_=c.type) for c in _RECORD_COLUMNS}
    return audit_records.insert().values(record).add_cte(evented)


def with_audit(parameters: dict[str, Any], record: dict[str, Any]) -> dict[str, Any]:
    """The parameters of `insert_with_event_and_audit`: `parameters` and the record's."""
    return {**parameters, **{f"audit_{name}": value for name, value in record.items()}}


_RECORD_COLUMNS = [c for c in audit_records.c if c.name != "id"]
