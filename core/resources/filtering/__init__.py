"""AIP-160 `filter` strings compiled to SQLAlchemy Core expressions.

Only whitelisted fields can be named; every value, label key included, reaches the database
as a bound parameter. Anything malformed raises `InvalidArgumentError` (reason
`INVALID_FILTER` on field `filter`) whose message names the 1-based character position,
e.g. ``filter: unexpected ')' at position 14``. AIP-132 `order_by` is in `core.resources.ordering`.

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

# The package: `lexer` splits the text into tokens, `parser` follows the grammar, and `sql`
# compiles each restriction it meets into a SQLAlchemy expression.

from core.resources.filtering.parser import DEFAULT_LIMITS, KEYWORDS, FilterLimits, compile_filter
from core.resources.filtering.sql import LABEL_KEY, FilterField, Kind

__all__ = [
    "DEFAULT_LIMITS",
    "KEYWORDS",
    "LABEL_KEY",
    "FilterField",
    "FilterLimits",
    "Kind",
    "compile_filter",
]
