"""AIP-160 `filter` strings compiled to SQLAlchemy Core expressions.

Only whitelisted fields can be named; every value, label key included, reaches the database
as a bound parameter. Anything malformed raises `InvalidArgumentError` (reason
`INVALID_FILTER` on field `filter`) whose message names the 1-based character position,
e.g. ``filter: unexpected ')' at position 14``. AIP-132 `order_by` is in `core.resources.ordering`,
which reports its errors through `_raise` and `_show` here.

Supported subset of https://google.aip.dev/160: ``= != < <= > >=``, the has operator ``:``
(``field:*`` for presence, ``labels:key`` and ``labels.key:*`` for a map key), ``AND``,
``OR``, ``NOT`` and ``-``, parentheses, implicit AND by juxtaposition, strings in double or
single quotes (escapes ``\\\\ \\" \\' \\* \\n \\t \\r``), numbers, ``true``/``false``, RFC 3339
timestamps as strings, enum values bare or quoted, and a trailing ``*`` in string equality as a
prefix match. As AIP-160 says, OR binds tighter than AND: ``a OR b c`` is ``(a OR b) AND c``.
A comparison on a missing value (NULL column, absent label) is never true, negated or not.

Usage::

    fields = {
        "display_name": FilterField(projects.c.display_name, Kind.STRING),
        "state": FilterField.enum(projects.c.state, ["ACTIVE", "DELETED"]),
        "labels": FilterField(projects.c.labels, Kind.MAP),
    }
    where = compile_filter('state = ACTIVE labels.env = "prod" OR labels:canary', fields)
    stmt = select(projects).where(where)
"""

# Why hand-written: the one SQLAlchemy-targeting AIP-160 package on PyPI (sqlalchemy-aip160,
# 0.1.x) needs Python >= 3.13, filters ORM models by attribute name rather than typed column
# specs, and has no error positions or size limits; the grammar subset here is small enough
# that a recursive-descent parser is shorter than adapting one.

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum
from typing import Any, NoReturn

import sqlalchemy as sa
from sqlalchemy.sql.elements import ColumnElement

from core.errors import FieldViolation, InvalidArgumentError


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


@dataclass(frozen=True, slots=True)
class FilterLimits:
    """Bounds that keep a hostile filter cheap to reject."""

    max_length: int = 2000
    max_depth: int = 16  # nested parentheses
    max_comparisons: int = 64


DEFAULT_LIMITS = FilterLimits()
LABEL_KEY = re.compile(r"[a-z0-9_-]{1,63}")
KEYWORDS = frozenset({"AND", "OR", "NOT"})

_TOKEN = re.compile(
    r"(?P<ws>[ \t\r\n]+)|(?P<op><=|>=|!=|=|<|>|:)|(?P<lparen>\()|(?P<rparen>\))|(?P<dot>\.)"
    r"|(?P<star>\*)|(?P<number>-?[0-9]+(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?(?![A-Za-z0-9_-]))"
    r"|(?P<word>[A-Za-z0-9_][A-Za-z0-9_-]*)|(?P<minus>-)"
)
_ESCAPES = {"\\": "\\", '"': '"', "'": "'", "*": "*", "n": "\n", "t": "\t", "r": "\r"}
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


def compile_filter(
    text: str, fields: Mapping[str, FilterField], *, limits: FilterLimits = DEFAULT_LIMITS
) -> ColumnElement[bool]:
    """Compiles an AIP-160 filter into a WHERE clause over the whitelisted `fields`.

    Args:
        text: The request's `filter`; empty or blank matches every row.
        fields: Filterable field name (as clients write it) -> its column and kind.
        limits: Length, nesting and comparison-count bounds.

    Returns:
        A boolean expression for ``select(...).where(...)``; ``true()`` for an empty filter.

    Raises:
        InvalidArgumentError: reason ``INVALID_FILTER``, with the position in the message.
    """
    if len(text) > limits.max_length:
        _fail(limits.max_length, f"longer than {limits.max_length} characters")
    return _Parser(_lex(text), fields, limits).parse()


# --- errors -----------------------------------------------------------------------------


def _fail(index: int, detail: str) -> NoReturn:
    """Raises INVALID_FILTER for the 0-based `index` (reported 1-based)."""
    _raise("filter", "INVALID_FILTER", index, detail)


def _raise(field: str, reason: str, index: int, detail: str) -> NoReturn:
    """Raises InvalidArgumentError at the 0-based `index`; core.resources.ordering uses it too."""
    described = f"{detail} at position {index + 1}"
    raise InvalidArgumentError(
        f"{field}: {described}",
        reason=reason,
        violations=[FieldViolation(field, described)],
        metadata={"position": str(index + 1)},
    )


def _show(text: str) -> str:
    """Quotes user text for a message: shortened, with non-printables as \\uXXXX."""
    short = text if len(text) <= 32 else text[:32] + "..."
    return "'" + "".join(c if c.isprintable() else f"\\u{ord(c):04x}" for c in short) + "'"


# --- lexer ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Token:
    kind: str  # a group name of _TOKEN, "string" or "end"
    text: str  # as written
    pos: int  # 0-based
    value: str = ""  # unescaped, for strings
    wildcard: bool = False  # a string ending in an unescaped '*'

    def is_word(self, word: str) -> bool:
        return self.kind == "word" and self.text == word


def _lex(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    i = 0
    while i < len(text):
        if text[i] in "\"'":
            token = _lex_string(text, i)
        elif (m := _TOKEN.match(text, i)) is not None and m.lastgroup is not None:
            token = _Token(m.lastgroup, m.group(), i)
        else:
            _fail(i, f"unexpected character {_show(text[i])}")
        if token.kind != "ws":
            tokens.append(token)
        i += len(token.text)
    tokens.append(_Token("end", "", len(text)))
    return tokens


def _lex_string(text: str, start: int) -> _Token:
    quote, i = text[start], start + 1
    chars: list[str] = []
    while i < len(text) and text[i] != quote:
        ch = text[i]
        if unicodedata.category(ch) in ("Cc", "Cs"):
            _fail(i, f"unexpected character {_show(ch)} in string")
        if ch == "*":
            if text[i + 1 : i + 2] != quote:
                _fail(i, "wildcard '*' is only allowed at the end of a string; escape it as \\*")
            return _Token("string", text[start : i + 2], start, "".join(chars), wildcard=True)
        if ch == "\\":
            escape = text[i + 1 : i + 2]
            if escape not in _ESCAPES:
                _fail(i, f"invalid escape {_show(text[i : i + 2])} in string")
            ch, i = _ESCAPES[escape], i + 1
        chars.append(ch)
        i += 1
    if i >= len(text):
        _fail(start, "unterminated string")
    return _Token("string", text[start : i + 1], start, "".join(chars))


# --- parser -----------------------------------------------------------------------------


class _Parser:
    """Recursive descent over the AIP-160 grammar, compiling each restriction as it goes.

    expression: sequence {AND sequence};  sequence: factor {factor};  factor: term {OR term}
    term: [NOT | -] simple;  simple: restriction | "(" expression ")"
    restriction: member comparator arg;  member: name {"." key}
    """

    def __init__(
        self, tokens: Sequence[_Token], fields: Mapping[str, FilterField], limits: FilterLimits
    ) -> None:
        self._tokens, self._fields, self._limits = tokens, fields, limits
        self._i = self._depth = self._comparisons = 0

    def parse(self) -> ColumnElement[bool]:
        if self._peek().kind == "end":
            return sa.true()
        expr = self._expression()
        if self._peek().kind != "end":
            self._unexpected(self._peek())
        return expr

    def _peek(self) -> _Token:
        return self._tokens[self._i]

    def _next(self) -> _Token:
        token = self._tokens[self._i]
        self._i = min(self._i + 1, len(self._tokens) - 1)
        return token

    def _accept_word(self, word: str) -> bool:
        if self._peek().is_word(word):
            self._next()
            return True
        return False

    def _unexpected(self, token: _Token) -> NoReturn:
        what = "end of filter" if token.kind == "end" else _show(token.text)
        _fail(token.pos, f"unexpected {what}")

    def _expression(self) -> ColumnElement[bool]:
        items = [self._sequence()]
        while self._accept_word("AND"):
            items.append(self._sequence())
        return sa.and_(*items) if len(items) > 1 else items[0]

    def _sequence(self) -> ColumnElement[bool]:
        items = [self._factor()]
        while self._peek().kind not in ("end", "rparen") and not self._peek().is_word("AND"):
            items.append(self._factor())
        return sa.and_(*items) if len(items) > 1 else items[0]

    def _factor(self) -> ColumnElement[bool]:
        items = [self._term()]
        while self._accept_word("OR"):
            items.append(self._term())
        return sa.or_(*items) if len(items) > 1 else items[0]

    def _term(self) -> ColumnElement[bool]:
        negated = self._peek().kind == "minus" or self._peek().is_word("NOT")
        if negated:
            self._next()
        expr = self._composite() if self._peek().kind == "lparen" else self._restriction()
        return sa.not_(expr) if negated else expr

    def _composite(self) -> ColumnElement[bool]:
        opening = self._next()
        self._depth += 1
        if self._depth > self._limits.max_depth:
            _fail(opening.pos, f"nesting deeper than {self._limits.max_depth}")
        expr = self._expression()
        if self._peek().kind != "rparen":
            self._unexpected(self._peek())
        self._next()
        self._depth -= 1
        return expr

    def _restriction(self) -> ColumnElement[bool]:
        self._comparisons += 1
        if self._comparisons > self._limits.max_comparisons:
            _fail(self._peek().pos, f"more than {self._limits.max_comparisons} comparisons")
        path = self._member()
        op = self._next()
        if op.kind != "op":
            name = ".".join(t.text for t in path)
            what = "end of filter" if op.kind == "end" else _show(op.text)
            _fail(op.pos, f"expected an operator after {_show(name)}, got {what}")
        arg = self._next()
        if arg.kind not in ("string", "number", "word", "star") or arg.text in KEYWORDS:
            self._unexpected(arg)
        return _compile(_resolve(path, self._fields), op, arg)

    def _member(self) -> list[_Token]:
        path = [self._next()]
        if path[0].kind != "word" or path[0].text in KEYWORDS:
            self._unexpected(path[0])
        while self._peek().kind == "dot":
            self._next()
            path.append(self._next())
            if path[-1].kind not in ("word", "number", "string"):
                self._unexpected(path[-1])
        return path


# --- compiler ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Target:
    name: str  # as written, for messages
    spec: FilterField
    key: str | None = None  # the label key of `labels.key`


def _resolve(path: Sequence[_Token], fields: Mapping[str, FilterField]) -> _Target:
    name = ".".join(_raw(t) for t in path)
    if name in fields and all(t.kind == "word" for t in path):
        return _Target(name, fields[name])
    head = fields.get(path[0].text)
    if head is not None and head.kind is Kind.MAP and len(path) == 2:
        return _Target(name, head, _label_key(path[1]))
    _fail(path[0].pos, f"unknown field {_show(name)}")


def _raw(token: _Token) -> str:
    """A token's text as a name; a quoted one loses its quotes (and keeps its wildcard)."""
    return token.value + ("*" if token.wildcard else "") if token.kind == "string" else token.text


def _label_key(token: _Token) -> str:
    key = _raw(token)
    if not LABEL_KEY.fullmatch(key):
        _fail(token.pos, f"invalid label key {_show(key)}, expected [a-z0-9_-]{{1,63}}")
    return key


def _compile(target: _Target, op: _Token, arg: _Token) -> ColumnElement[bool]:
    spec = target.spec
    if spec.kind is Kind.MAP:
        return _compile_map(target, op, arg)
    if op.text == ":":
        if arg.kind != "star":
            _fail(arg.pos, f"':' on {_show(target.name)} only takes '*' (presence)")
        present = spec.column.is_not(None)
        return sa.and_(present, spec.column != "") if spec.kind is Kind.STRING else present
    _check_operator(target, op)
    if spec.kind is Kind.STRING:
        return _compile_string(spec.column, op, arg, target.name)
    value = _CONVERT[spec.kind](arg, target)
    return _COMPARE[op.text](spec.column, sa.literal(value, spec.column.type))


def _check_operator(target: _Target, op: _Token) -> None:
    if op.text not in _OPERATORS[target.spec.kind]:
        kind = target.spec.kind.value
        _fail(op.pos, f"operator '{op.text}' is not valid for {kind} field {_show(target.name)}")


def _compile_map(target: _Target, op: _Token, arg: _Token) -> ColumnElement[bool]:
    column = target.spec.column
    if target.key is None:
        if op.text != ":":
            _fail(op.pos, f"compare a key of {_show(target.name)} as {target.name}.<key>")
        return _has_key(column, _label_key(arg))
    if op.text == ":":
        if arg.kind != "star":
            _fail(arg.pos, f"':' on {_show(target.name)} only takes '*' (has key)")
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
    column: ColumnElement[Any], op: _Token, arg: _Token, name: str
) -> ColumnElement[bool]:
    if arg.kind not in ("string", "word"):
        _fail(arg.pos, f"expected a string for {_show(name)}, got {_show(arg.text)}")
    value = arg.value if arg.kind == "string" else arg.text
    if not arg.wildcard:
        return _COMPARE[op.text](column, sa.literal(value, column.type))
    if op.text not in _EQUALITY:
        _fail(arg.pos, "a wildcard '*' only works with '=' or '!='")
    matched = _prefix_match(column, value)
    return matched if op.text == "=" else sa.not_(matched)


def _prefix_match(column: ColumnElement[Any], prefix: str) -> ColumnElement[bool]:
    """LIKE for the index, and substr() because SQLite's LIKE ignores ASCII case."""
    pattern = prefix.replace("/", "//").replace("%", "/%").replace("_", "/_") + "%"
    return sa.and_(
        column.like(sa.literal(pattern, sa.String()), escape="/"),
        sa.func.substr(column, 1, len(prefix)) == sa.literal(prefix, column.type),
    )


def _to_int(arg: _Token, target: _Target) -> int:
    if arg.kind != "number" or not _INT.fullmatch(arg.text):
        _fail(arg.pos, f"expected an integer for {_show(target.name)}, got {_show(arg.text)}")
    value = int(arg.text)
    if not -(2**63) <= value < 2**63:
        _fail(arg.pos, f"integer {_show(arg.text)} is out of range")
    return value


def _to_float(arg: _Token, target: _Target) -> float:
    if arg.kind != "number":
        _fail(arg.pos, f"expected a number for {_show(target.name)}, got {_show(arg.text)}")
    value = float(arg.text)
    if not math.isfinite(value):
        _fail(arg.pos, f"number {_show(arg.text)} is out of range")
    return value


def _to_bool(arg: _Token, target: _Target) -> bool:
    if not (arg.is_word("true") or arg.is_word("false")):
        _fail(arg.pos, f"expected true or false for {_show(target.name)}, got {_show(arg.text)}")
    return arg.text == "true"


def _to_enum(arg: _Token, target: _Target) -> str:
    value = _raw(arg)
    if target.spec.prefix and value.startswith(target.spec.prefix):
        value = value[len(target.spec.prefix) :]
    if arg.kind not in ("word", "string") or value not in target.spec.values:
        allowed = ", ".join(sorted(target.spec.values))
        detail = f"unknown value {_show(value)} for {_show(target.name)}, expected one of"
        _fail(arg.pos, f"{detail} {allowed}")
    return value


def _to_timestamp(arg: _Token, target: _Target) -> datetime:
    if arg.kind != "string" or arg.wildcard or not _RFC3339.fullmatch(arg.value):
        detail = f"expected an RFC 3339 timestamp string for {_show(target.name)}"
        _fail(arg.pos, f'{detail}, e.g. "2024-05-01T12:00:00Z"')
    text = re.sub(r"(\.[0-9]{6})[0-9]+", r"\1", arg.value)  # datetime keeps microseconds
    try:
        value = datetime.fromisoformat(text.upper().replace("Z", "+00:00")).astimezone(UTC)
    except (ValueError, OverflowError):
        _fail(arg.pos, f"invalid timestamp {_show(arg.value)}")
    timezone_aware = getattr(target.spec.column.type, "timezone", True)
    return value if timezone_aware else value.replace(tzinfo=None)


_CONVERT: dict[Kind, Callable[[_Token, _Target], object]] = {
    Kind.INT: _to_int,
    Kind.FLOAT: _to_float,
    Kind.BOOL: _to_bool,
    Kind.ENUM: _to_enum,
    Kind.TIMESTAMP: _to_timestamp,
}
