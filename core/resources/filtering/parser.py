"""The AIP-160 grammar, parsed by recursive descent into one SQLAlchemy WHERE clause."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import NoReturn

import sqlalchemy as sa
from sqlalchemy.sql.elements import ColumnElement

from core.resources.filtering.lexer import Token, fail, lex
from core.resources.filtering.sql import FilterField, compile_restriction, resolve
from core.resources.syntax import quote


@dataclass(frozen=True, slots=True)
class FilterLimits:
    """Bounds that keep a hostile filter cheap to reject."""

    max_length: int = 2000
    max_depth: int = 16  # nested parentheses
    max_comparisons: int = 64


DEFAULT_LIMITS = FilterLimits()
KEYWORDS = frozenset({"AND", "OR", "NOT"})


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
        fail(limits.max_length, f"longer than {limits.max_length} characters")
    return Parser(lex(text), fields, limits).parse()


class Parser:
    """Recursive descent over the AIP-160 grammar, compiling each restriction as it goes.

    expression: sequence {AND sequence};  sequence: factor {factor};  factor: term {OR term}
    term: [NOT | -] simple;  simple: restriction | "(" expression ")"
    restriction: member comparator arg;  member: name {"." key}
    """

    def __init__(
        self, tokens: Sequence[Token], fields: Mapping[str, FilterField], limits: FilterLimits
    ) -> None:
        self._tokens, self._fields, self._limits = tokens, fields, limits
        self._i = self._depth = self._comparisons = 0

    def parse(self) -> ColumnElement[bool]:
        """The WHERE clause of the whole filter; `true()` when it is blank."""
        if self._peek().kind == "end":
            return sa.true()
        expr = self._expression()
        if self._peek().kind != "end":
            self._unexpected(self._peek())
        return expr

    def _peek(self) -> Token:
        return self._tokens[self._i]

    def _next(self) -> Token:
        token = self._tokens[self._i]
        self._i = min(self._i + 1, len(self._tokens) - 1)
        return token

    def _accept_word(self, word: str) -> bool:
        if self._peek().is_word(word):
            self._next()
            return True
        return False

    def _unexpected(self, token: Token) -> NoReturn:
        what = "end of filter" if token.kind == "end" else quote(token.text)
        fail(token.pos, f"unexpected {what}")

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
            fail(opening.pos, f"nesting deeper than {self._limits.max_depth}")
        expr = self._expression()
        if self._peek().kind != "rparen":
            self._unexpected(self._peek())
        self._next()
        self._depth -= 1
        return expr

    def _restriction(self) -> ColumnElement[bool]:
        self._comparisons += 1
        if self._comparisons > self._limits.max_comparisons:
            fail(self._peek().pos, f"more than {self._limits.max_comparisons} comparisons")
        path = self._member()
        op = self._next()
        if op.kind != "op":
            name = ".".join(t.text for t in path)
            what = "end of filter" if op.kind == "end" else quote(op.text)
            fail(op.pos, f"expected an operator after {quote(name)}, got {what}")
        arg = self._next()
        if arg.kind not in ("string", "number", "word", "star") or arg.text in KEYWORDS:
            self._unexpected(arg)
        return compile_restriction(resolve(path, self._fields), op, arg)

    def _member(self) -> list[Token]:
        path = [self._next()]
        if path[0].kind != "word" or path[0].text in KEYWORDS:
            self._unexpected(path[0])
        while self._peek().kind == "dot":
            self._next()
            path.append(self._next())
            if path[-1].kind not in ("word", "number", "string"):
                self._unexpected(path[-1])
        return path
