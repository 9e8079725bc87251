"""Filter restrictions compiled to SQLAlchemy Core for SQLite and PostgreSQL alike.

`FilterField` and `Kind` say which fields a filter may name and how their values are
written; every value, label key included, reaches the database as a bound parameter.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum
from typing import Any

import sqlalchemy as sa
from sqlalchemy.sql.elements import ColumnElement

from core.resources.filtering.lexer import Token, fail
from core.resources.syntax import quote


class Kind(Enum):
    """How a filterable field's values are written and compared."""

    STRING = "string"
    INT = "int"
    FLOAT = "float"
    BOOL = "bool"
    TIMESTAMP = "timestamp"
    ENUM = "enum"
    MAP = "map"  # string -> string, in a JSON (SQLite) or JSONB (PostgreSQL) column


@dataclass(frozen=True, slots=True)
class FilterField:
    """One field a filter may name: its column, its kind and, for enums, the allowed values."""

    column: ColumnElement[Any]
    kind: Kind
    values: frozenset[str] = frozenset()
    # For enums stored without their proto prefix: `PROJECT_TYPE_MUSIC_CLIP` is accepted too.
    prefix: str = ""

    def __post_init__(self) -> None:
        if (self.kind is Kind.ENUM) != bool(self.values):
            raise ValueError("values are required for enum fields and only for them")

    @classmethod
    def enum(
        cls, column: ColumnElement[Any], values: Iterable[str], *, prefix: str = ""
    ) -> FilterField:
        """An enum stored as its name, e.g. ``FilterField.enum(t.c.state, ["ACTIVE"])``.

        With `prefix` ("STATE_"), the full proto name (STATE_ACTIVE) works as well.
        """
        return cls(column, Kind.ENUM, frozenset(values), prefix)


LABEL_KEY = re.compile(r"[a-z0-9_-]{1,63}")
_INT = re.compile(r"-?[0-9]+")
_RFC3339 = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?"
    r"([Zz]|[+-][0-9]{2}:[0-9]{2})"
)
_ORDERED = frozenset({"=", "!=", "<", "<=", ">", ">="})
_EQUALITY = frozenset({"=", "!="})
_OPERATORS = {  # for a map, on labels.key
    kind: _EQUALITY if kind in (Kind.BOOL, Kind.ENUM, Kind.MAP) else _ORDERED for kind in Kind
}
_Compare = Callable[[ColumnElement[Any], ColumnElement[Any]], ColumnElement[bool]]
_COMPARE: dict[str, _Compare] = {
    "=": lambda a, b: a == b,
    "!=": lambda a, b: a != b,
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
}


@dataclass(frozen=True, slots=True)
class Target:
    """A field named by a restriction."""

    name: str  # as written, for messages
    spec: FilterField
    key: str | None = None  # the label key of `labels.key`


def resolve(path: Sequence[Token], fields: Mapping[str, FilterField]) -> Target:
    """The field a member path (`display_name`, `labels.env`) names; unknown is an error."""
    name = ".".join(_raw(t) for t in path)
    if name in fields and all(t.kind == "word" for t in path):
        return Target(name, fields[name])
    head = fields.get(path[0].text)
    if head is not None and head.kind is Kind.MAP and len(path) == 2:
        return Target(name, head, _label_key(path[1]))
    fail(path[0].pos, f"unknown field {quote(name)}")


def _raw(token: Token) -> str:
    """A token's text as a name; a quoted one loses its quotes (and keeps its wildcard)."""
    return token.value + ("*" if token.wildcard else "") if token.kind == "string" else token.text


def _label_key(token: Token) -> str:
    key = _raw(token)
    if not LABEL_KEY.fullmatch(key):
        fail(token.pos, f"invalid label key {quote(key)}, expected [a-z0-9_-]{{1,63}}")
    return key


def compile_restriction(target: Target, op: Token, arg: Token) -> ColumnElement[bool]:
    """The SQL expression of one restriction: `target` `op` `arg`."""
    spec = target.spec
    if spec.kind is Kind.MAP:
        return _compile_map(target, op, arg)
    if op.text == ":":
        if arg.kind != "star":
            fail(arg.pos, f"':' on {quote(target.name)} only takes '*' (presence)")
        present = spec.column.is_not(None)
        return sa.and_(present, spec.column != "") if spec.kind is Kind.STRING else present
    _check_operator(target, op)
    if spec.kind is Kind.STRING:
        return _compile_string(spec.column, op, arg, target.name)
    value = _CONVERT[spec.kind](arg, target)
    return _COMPARE[op.text](spec.column, sa.literal(value, spec.column.type))


def _check_operator(target: Target, op: Token) -> None:
    if op.text not in _OPERATORS[target.spec.kind]:
        kind = target.spec.kind.value
        fail(op.pos, f"operator '{op.text}' is not valid for {kind} field {quote(target.name)}")


def _compile_map(target: Target, op: Token, arg: Token) -> ColumnElement[bool]:
    column = target.spec.column
    if target.key is None:
        if op.text != ":":
            fail(op.pos, f"compare a key of {quote(target.name)} as {target.name}.<key>")
        return _has_key(column, _label_key(arg))
    if op.text == ":":
        if arg.kind != "star":
            fail(arg.pos, f"':' on {quote(target.name)} only takes '*' (has key)")
        return _has_key(column, target.key)
    _check_operator(target, op)
    return _compile_string(_label_value(column, target.key), op, arg, target.name)


def _label_value(column: ColumnElement[Any], key: str) -> ColumnElement[Any]:
    # JSON_EXTRACT(col, ?) on SQLite, col ->> $1 on PostgreSQL: the key is bound on both.
    value: ColumnElement[Any] = column[key].as_string()
    return value


def _has_key(column: ColumnElement[Any], key: str) -> ColumnElement[bool]:
    return _label_value(column, key).is_not(None)


def _compile_string(
    column: ColumnElement[Any], op: Token, arg: Token, name: str
) -> ColumnElement[bool]:
    if arg.kind not in ("string", "word"):
        fail(arg.pos, f"expected a string for {quote(name)}, got {quote(arg.text)}")
    value = arg.value if arg.kind == "string" else arg.text
    if not arg.wildcard:
        return _COMPARE[op.text](column, sa.literal(value, column.type))
    if op.text not in _EQUALITY:
        fail(arg.pos, "a wildcard '*' only works with '=' or '!='")
    matched = _prefix_match(column, value)
    return matched if op.text == "=" else sa.not_(matched)


def _prefix_match(column: ColumnElement[Any], prefix: str) -> ColumnElement[bool]:
    """LIKE for the index, and substr() because SQLite's LIKE ignores ASCII case."""
    pattern = prefix.replace("/", "//").replace("%", "/%").replace("_", "/_") + "%"
    return sa.and_(
        column.like(sa.literal(pattern, sa.String()), escape="/"),
        sa.func.substr(column, 1, len(prefix)) == sa.literal(prefix, column.type),
    )


def _to_int(arg: Token, target: Target) -> int:
    if arg.kind != "number" or not _INT.fullmatch(arg.text):
        fail(arg.pos, f"expected an integer for {quote(target.name)}, got {quote(arg.text)}")
    value = int(arg.text)
    if not -(2**63) <= value < 2**63:
        fail(arg.pos, f"integer {quote(arg.text)} is out of range")
    return value


def _to_float(arg: Token, target: Target) -> float:
    if arg.kind != "number":
        fail(arg.pos, f"expected a number for {quote(target.name)}, got {quote(arg.text)}")
    value = float(arg.text)
    if not math.isfinite(value):
        fail(arg.pos, f"number {quote(arg.text)} is out of range")
    return value


def _to_bool(arg: Token, target: Target) -> bool:
    if not (arg.is_word("true") or arg.is_word("false")):
        fail(arg.pos, f"expected true or false for {quote(target.name)}, got {quote(arg.text)}")
    return arg.text == "true"


def _to_enum(arg: Token, target: Target) -> str:
    value = _raw(arg)
    if target.spec.prefix and value.startswith(target.spec.prefix):
        value = value[len(target.spec.prefix) :]
    if arg.kind not in ("word", "string") or value not in target.spec.values:
        allowed = ", ".join(sorted(target.spec.values))
        detail = f"unknown value {quote(value)} for {quote(target.name)}, expected one of"
        fail(arg.pos, f"{detail} {allowed}")
    return value


def _to_timestamp(arg: Token, target: Target) -> datetime:
    if arg.kind != "string" or arg.wildcard or not _RFC3339.fullmatch(arg.value):
        detail = f"expected an RFC 3339 timestamp string for {quote(target.name)}"
        fail(arg.pos, f'{detail}, e.g. "2024-05-01T12:00:00Z"')
    text = re.sub(r"(\.[0-9]{6})[0-9]+", r"\1", arg.value)  # datetime keeps microseconds
    try:
        value = datetime.fromisoformat(text.upper().replace("Z", "+00:00")).astimezone(UTC)
    except (ValueError, OverflowError):
        fail(arg.pos, f"invalid timestamp {quote(arg.value)}")
    timezone_aware = getattr(target.spec.column.type, "timezone", True)
    return value if timezone_aware else value.replace(tzinfo=None)


_CONVERT: dict[Kind, Callable[[Token, Target], object]] = {
    Kind.INT: _to_int,
    Kind.FLOAT: _to_float,
    Kind.BOOL: _to_bool,
    Kind.ENUM: _to_enum,
    Kind.TIMESTAMP: _to_timestamp,
}
