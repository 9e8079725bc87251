"""What a CRUD resource is (`Resource`), and the AIP plumbing every one shares: names,
etags, field masks, field behaviours, timestamps, and the standard columns and fields of
every row and message."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cached_property
from typing import Any, Generic, TypeVar, cast

import sqlalchemy as sa
from google.api import field_behavior_pb2
from google.protobuf.field_mask_pb2 import FieldMask
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from core.errors import (
    AbortedError,
    AlreadyExistsError,
    FieldViolation,
    InvalidArgumentError,
    NotFoundError,
)
from core.resources.filtering import FilterField


def etag_for(resource_id: str, revision: int) -> str:
    """An opaque etag that changes with every write of the resource."""
    digest = hashlib.sha256(f"{resource_id}:{revision}".encode()).hexdigest()[:16]
    return f'W/"{digest}"'


def check_etag(etag: str, row: RowLike, name: str) -> None:
    """ABORTED (reason ETAG_MISMATCH) when `etag` is given and is not the row's."""
    if etag and etag != etag_for(row["id"], row["revision"]):
        raise AbortedError(
            f"etag for {name!r} is stale: read it again and retry",
            reason="ETAG_MISMATCH",
            metadata={"resource": name},
        )


def precondition_etag(request_etag: str, message: Message, *, field: str) -> str:
    """The etag a write is conditional on: the request's `etag` or the one inside `message`.

    AIP-154 lets a client send the etag it read either in the request or inside the
    resource; either one makes the write conditional. Both set and different is
    INVALID_ARGUMENT (reason ETAG_CONFLICT) naming both fields, since the write cannot
    tell which one the caller meant. `field` is the message's field in the request
    (`project`). Returns "" when neither is set: the write is unconditional.
    """
    inside = cast(Any, message).etag if "etag" in message.DESCRIPTOR.fields_by_name else ""
    if request_etag and inside and request_etag != inside:
        raise InvalidArgumentError(
            f"etag and {field}.etag differ; send one of them, or the same etag in both",
            reason="ETAG_CONFLICT",
            violations=[
                FieldViolation("etag", f"differs from {field}.etag"),
                FieldViolation(f"{field}.etag", "differs from etag"),
            ],
        )
    return request_etag or inside


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
    immutable: Iterable[str] = (),
    field: str = "update_mask",
) -> list[str]:
    """The top-level fields an update writes, checked against the message's fields.

    An empty mask means the fields set in `message`; `*` means every writable field,
    except immutable ones left unset (a replacement that omits them keeps them). Output-only
    paths are ignored, as AIP-203 asks, so a client may send back the mask of a resource
    as read; unknown paths are INVALID_ARGUMENT, each named.
    """
    writable, output_only = set(writable), set(output_only)
    if mask is None or not mask.paths:
        return sorted(f.name for f, _ in message.ListFields() if f.name in writable)
    if list(mask.paths) == ["*"]:
        present = {f.name for f, _ in message.ListFields()}
        return sorted(writable - (set(immutable) - present))
    unknown = [p for p in mask.paths if p not in writable and p not in output_only]
    if unknown:
        raise InvalidArgumentError(
            "update_mask names fields that cannot be updated",
            reason="INVALID_UPDATE_MASK",
            violations=[
                FieldViolation(field, f"{path!r} is not a field that can be updated")
                for path in unknown
            ],
        )
    return sorted(set(mask.paths) & writable)


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
# The fields the engine fills on every message (`Resource.message_of`): output only whatever
# the contract says.
ENGINE_FIELDS = ("name", "state", "create_time", "update_time", "delete_time", "purge_time", "etag")


def field_behaviours(message: type[Message], *behaviours: int) -> tuple[str, ...]:
    """The fields of `message` annotated with any of `behaviours` (AIP-203's
    `google.api.field_behavior`, for example `field_behavior_pb2.IMMUTABLE`)."""
    extension = field_behavior_pb2.field_behavior
    return tuple(
        f.name
        for f in message.DESCRIPTOR.fields
        if set(f.GetOptions().Extensions[extension]) & set(behaviours)
    )


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

    Output-only and immutable fields are read from the contract's AIP-203 annotations
    (`google.api.field_behavior`), so they are declared once, in the `.proto`: an update
    ignores output-only fields and refuses a new value for an immutable one that is set.

    `owner_field` names the string field, stored in the column of the same name, that
    holds the subject of the principal owning a resource (`core.resources.ownership`):
    set from the caller on create, and a caller without the `admin` scope reads, lists
    and writes only its own. `secret_fields` are recorded in the audit log as changed,
    never with their values (`core.resources.audit`).
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
    owner_field: str | None = None
    secret_fields: tuple[str, ...] = ()

    @cached_property
    def output_only(self) -> frozenset[str]:
        """Fields an update ignores: those the engine fills, and those annotated OUTPUT_ONLY
        or IDENTIFIER (the name says which resource; it is never written)."""
        declared = field_behaviours(
            self.message, field_behavior_pb2.OUTPUT_ONLY, field_behavior_pb2.IDENTIFIER
        )
        fields = self.message.DESCRIPTOR.fields_by_name
        return frozenset(declared) | {name for name in ENGINE_FIELDS if name in fields}

    @cached_property
    def immutable(self) -> frozenset[str]:
        """Fields annotated IMMUTABLE: written on create, never changed once set."""
        return frozenset(field_behaviours(self.message, field_behavior_pb2.IMMUTABLE))

    def message_of(self, row: RowLike) -> M:
        """The message of a row: `to_message`, then name, etag, the timestamps and state."""
        message = self.to_message(row)
        m = cast(Any, message)
        m.name = f"{self.collection}/{row['id']}"
        m.etag = etag_for(row["id"], row["revision"])
        for name in ("create_time", "update_time", "delete_time", "purge_time"):
            ts = timestamp(row[name])
            if ts is not None:
                getattr(m, name).CopyFrom(ts)
        if "state" in message.DESCRIPTOR.fields_by_name:
            m.state = m.State.Value("STATE_DELETED" if row["delete_time"] else "STATE_ACTIVE")
        return message

    def new_row(self, message: M, resource_id: str) -> dict[str, Any]:
        """The column values of a resource created now from `message`."""
        now = datetime.now(UTC)
        return {
            **self.to_columns(message),
            "id": resource_id,
            "revision": 1,
            "create_time": now,
            "update_time": now,
            "delete_time": None,
            "purge_time": None,
        }

    def check(self, message: M, violations: Sequence[FieldViolation] = ()) -> None:
        """Raises one INVALID_ARGUMENT listing every bad field of the request."""
        found = [*violations] + [
            FieldViolation(f"{self.singular}.{v.field}", v.description)
            for v in self.validate(message)
        ]
        if found:
            raise InvalidArgumentError(
                "; ".join(f"{v.field}: {v.description}" for v in found),
                reason=f"INVALID_{self.singular.upper()}",
                violations=found,
            )

    def check_immutable(self, old: M, new: M) -> None:
        """INVALID_ARGUMENT (IMMUTABLE_FIELD) naming each immutable field that was set in
        `old` and differs in `new`; sending the value it has is no change, so allowed."""
        was_set = {f.name for f, _ in old.ListFields()}
        changed = sorted(
            name for name in self.immutable & was_set if getattr(old, name) != getattr(new, name)
        )
        if changed:
            raise InvalidArgumentError(
                f"{', '.join(changed)} cannot be changed once set",
                reason="IMMUTABLE_FIELD",
                violations=[
                    FieldViolation(f"{self.singular}.{name}", "is immutable") for name in changed
                ],
            )

    def not_found(self, name: str) -> NotFoundError:
        return NotFoundError(
            f"{self.singular} {name!r} does not exist",
            reason=f"{self.singular.upper()}_NOT_FOUND",
            metadata={"resource": name},
        )

    def already_exists(self, resource_id: str) -> AlreadyExistsError:
        name = f"{self.collection}/{resource_id}"
        return AlreadyExistsError(
            f"{self.singular} {name!r} already exists",
            reason=f"{self.singular.upper()}_ALREADY_EXISTS",
            metadata={"resource": name},
        )
