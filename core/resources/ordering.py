"""AIP-132 `order_by` strings parsed into normalized sort keys and SQLAlchemy ORDER BY clauses.

Only whitelisted fields can be named. Anything malformed raises `InvalidArgumentError`
(reason `INVALID_ORDER_BY` on field `order_by`) whose message names the 1-based character
position, e.g. ``order_by: unknown field 'size' at position 15``.

Usage::

    ordering = parse_order_by("display_name desc", {"display_name": projects.c.display_name})
    stmt = select(projects).where(where).order_by(*ordering.clauses)
    ordering.text  # "display_name desc", canonical, e.g. to bind into a page token
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

import sqlalchemy as sa
from sqlalchemy.sql.elements import ColumnElement, UnaryExpression

from core.resources.syntax import fail_at, quote

MAX_ORDER_BY_LENGTH = 1000


@dataclass(frozen=True, slots=True)
class SortKey:
    """One normalized `order_by` item, as needed to build and check a keyset page token."""

    field: str
    descending: bool = False


@dataclass(frozen=True, slots=True)
class Ordering:
    """A parsed `order_by`: normalized keys and the matching ORDER BY clauses.

    Iterating, indexing and ``len()`` go over `keys`, so ``for key in ordering`` works.
    """

    keys: tuple[SortKey, ...]
    clauses: tuple[UnaryExpression[Any], ...]

    def __iter__(self) -> Iterator[SortKey]:
        return iter(self.keys)

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, index: int) -> SortKey:
        return self.keys[index]

    @property
    def text(self) -> str:
        """The canonical spelling, e.g. ``"display_name desc, create_time"``."""
        return ", ".join(k.field + (" desc" if k.descending else "") for k in self.keys)


def parse_order_by(text: str, allowed: Mapping[str, ColumnElement[Any]]) -> Ordering:
    """Parses an AIP-132 `order_by` such as ``"display_name desc, create_time"``.

    Args:
        text: Comma-separated field names, each optionally followed by ``asc`` or ``desc``.
        allowed: Sortable field name -> its column.

    Returns:
        The keys and clauses in order; both empty for a blank `text`.

    Raises:
        InvalidArgumentError: reason ``INVALID_ORDER_BY`` for an unknown or repeated field,
            a bad direction, an empty item or an over-long string.
    """
    if len(text) > MAX_ORDER_BY_LENGTH:
        _fail(MAX_ORDER_BY_LENGTH, f"longer than {MAX_ORDER_BY_LENGTH} characters")
    keys: list[SortKey] = []
    if text.strip():
        offset = 0
        for segment in text.split(","):
            keys.append(_sort_key(segment, offset, allowed, {k.field for k in keys}))
            offset += len(segment) + 1
    clauses = tuple(
        allowed[k.field].desc() if k.descending else allowed[k.field].asc() for k in keys
    )
    return Ordering(tuple(keys), clauses)


def _sort_key(
    segment: str, offset: int, allowed: Mapping[str, ColumnElement[Any]], seen: set[str]
) -> SortKey:
    words = list(re.finditer(r"\S+", segment))
    if not words:
        _fail(offset + len(segment), "expected a field name")
    if len(words) > 2:
        _fail(offset + words[2].start(), f"unexpected {quote(words[2].group())}")
    name = words[0].group()
    if name not in allowed:
        _fail(offset + words[0].start(), f"unknown field {quote(name)}")
    if name in seen:
        _fail(offset + words[0].start(), f"field {quote(name)} appears twice")
    direction = words[1].group().lower() if len(words) == 2 else "asc"
    if direction not in ("asc", "desc"):
        detail = f"invalid direction {quote(words[1].group())}, expected 'asc' or 'desc'"
        _fail(offset + words[1].start(), detail)
    return SortKey(name, direction == "desc")


def _fail(index: int, detail: str) -> NoReturn:
    """Raises INVALID_ORDER_BY for the 0-based `index` (reported 1-based)."""
    fail_at("order_by", "INVALID_ORDER_BY", index, detail)


def after(
    columns: Sequence[sa.ColumnElement[Any]], descending: Sequence[bool], keys: Sequence[Any]
) -> sa.ColumnElement[bool]:
    """Rows strictly after `keys` in the order given by `columns` and `descending`.

    (a, b, id) > (ka, kb, kid) expands to a > ka OR (a = ka AND (b > kb OR (...)))
    so each column may sort in its own direction.
    """
    condition: sa.ColumnElement[bool] | None = None
    for column, desc, key in reversed(list(zip(columns, descending, keys, strict=True))):
        beyond = column < key if desc else column > key
        condition = (
            beyond if condition is None else sa.or_(beyond, sa.and_(column == key, condition))
        )
    assert condition is not None
    return condition
