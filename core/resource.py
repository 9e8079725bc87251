"""What a CRUD resource is (`Resource`), and the AIP plumbing every one shares: names,
etags, field masks and timestamps."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Generic, TypeVar

import sqlalchemy as sa
from google.protobuf.field_mask_pb2 import FieldMask
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from core.errors import FieldViolation, InvalidArgumentError
from core.filtering import FilterField

# AIP-122: lowercase letters, digits and hyphens; starts with a letter, ends with a letter
# or digit; 4 to 63 characters.
ID_PATTERN = re.compile(r"[a-z][a-z0-9-]{2,61}[a-z0-9]")


def id_violations(resource_id: str, field: str) -> list[FieldViolation]:
    """Nothing for a valid id; otherwise the violation that names `field`."""
    if ID_PATTERN.fullmatch(resource_id):
        return []
    return [
        FieldViolation(
            field,
            f"{resource_id!r} must be 4 to 63 lowercase letters, digits or hyphens, "
            "starting with a letter and not ending with a hyphen",
        )
    ]


# Unicode's control characters (category Cc) are exactly these two ranges; one regex
# search is some fifty times cheaper than asking unicodedata about every character.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")
_CONTROL_IN_MULTILINE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")  # not \t \n \r


def text_violations(
    field: str, value: str, *, max_length: int, required: bool = False, multiline: bool = False
) -> list[FieldViolation]:
    """Checks a text field: present if required, not too long, no control characters.

    Control characters (NUL above all, which PostgreSQL cannot store) are refused;
    `multiline` text may still hold tabs and line breaks.
    """
    if required and not value.strip():
        return [FieldViolation(field, "is required")]
    if len(value) > max_length:
        return [FieldViolation(field, f"at most {max_length} characters")]
    if (_CONTROL_IN_MULTILINE if multiline else _CONTROL).search(value):
        return [FieldViolation(field, "must not contain control characters")]
    return []


def parse_name(name: str, collection: str, field: str = "name") -> str:
    """`projects/demo` -> `demo`; INVALID_ARGUMENT naming `field` for anything else."""
    prefix = f"{collection}/"
    if not name.startswith(prefix) or not ID_PATTERN.fullmatch(name[len(prefix) :]):
        raise InvalidArgumentError(
            f"{field} {name!r} is not a valid resource name: expected {collection}/{{id}}",
            reason="INVALID_NAME",
            violations=[FieldViolation(field, f"must look like {collection}/{{id}}")],
        )
    return name[len(prefix) :]


def etag_for(resource_id: str, revision: int) -> str:
    """An opaque etag that changes with every write of the resource."""
    digest = hashlib.sha256(f"{resource_id}:{revision}".encode()).hexdigest()[:16]
    return f'W/"{digest}"'


def timestamp(at: datetime | None) -> Timestamp | None:
    if at is None:
        return None
    ts = Timestamp()
    ts.FromDatetime(utc(at))
    return ts


def utc(at: datetime) -> datetime:
    """Aware UTC; SQLite hands back naive datetimes, which we always store as UTC."""
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)


def mask_paths(
    message: Message,
    mask: FieldMask | None,
    *,
    writable: Iterable[str],
    output_only: Iterable[str],
    field: str = "update_mask",
) -> list[str]:
    """The top-level fields an update writes, checked against the message's fields.

    An empty mask means the fields set in `message`; `*` means every writable field.
    Unknown and output-only paths are INVALID_ARGUMENT, each named.
    """
    writable, output_only = set(writable), set(output_only)
    if mask is None or not mask.paths:
        return sorted(f.name for f, _ in message.ListFields() if f.name in writable)
    if list(mask.paths) == ["*"]:
        return sorted(writable)
    violations = []
    for path in mask.paths:
        if path in output_only:
            violations.append(FieldViolation(field, f"{path!r} is output only"))
        elif path not in writable:
            violations.append(FieldViolation(field, f"{path!r} is not a field that can be updated"))
    if violations:
        raise InvalidArgumentError(
            "update_mask names fields that cannot be updated",
            reason="INVALID_UPDATE_MASK",
            violations=violations,
        )
    return sorted(set(mask.paths))


def apply_paths(source: Message, target: Message, paths: Iterable[str]) -> None:
    """Copies each top-level field in `paths` from `source` onto `target` (replacing maps)."""
    for path in paths:
        target.ClearField(path)
        descriptor = source.DESCRIPTOR.fields_by_name[path]
        value = getattr(source, path)
        if descriptor.message_type is not None and descriptor.message_type.GetOptions().map_entry:
            getattr(target, path).update(value)
        elif descriptor.is_repeated:
            getattr(target, path).extend(value)
        elif descriptor.message_type is not None:
            if source.HasField(path):
                getattr(target, path).CopyFrom(value)
        else:
            setattr(target, path, value)


M = TypeVar("M", bound=Message)
RowLike = Mapping[Any, Any]  # a row's mapping (SQLAlchemy's RowMapping) or a dict of values
OUTPUT_ONLY = ("name", "state", "create_time", "update_time", "delete_time", "purge_time", "etag")


def standard_columns() -> list[sa.Column[Any]]:
    """The columns every resource table has, beside its own."""
    return [
        sa.Column("id", sa.String(63), primary_key=True),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("update_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("delete_time", sa.DateTime(timezone=True), nullable=True),
        sa.Column("purge_time", sa.DateTime(timezone=True), nullable=True),
    ]


@dataclass(frozen=True)
class Resource(Generic[M]):
    """What the engine needs to know about one resource type.

    `to_columns` maps the writable fields of a message to column values; `to_message`
    builds a message from a row's own columns (the engine fills name, etag, state and
    the timestamps); `validate` returns the violations of a whole message, with field
    paths relative to the message (`display_name`).
    """

    message: type[M]
    collection: str
    singular: str
    table: sa.Table
    source: str
    event_prefix: str
    writable: tuple[str, ...]
    to_columns: Callable[[M], dict[str, Any]]
    to_message: Callable[[RowLike], M]
    validate: Callable[[M], list[FieldViolation]]
    filter_fields: Mapping[str, FilterField]
    order_fields: Mapping[str, str]
    default_order: str = "create_time"
    purge_after: timedelta = timedelta(days=30)
    request_id_retention: timedelta = timedelta(days=1)
    output_only: tuple[str, ...] = field(default=OUTPUT_ONLY)
