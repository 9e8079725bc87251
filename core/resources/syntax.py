"""What the parsers of request strings (`filter`, `order_by`) share: an error that points at
one character of the text, and user text quoted safely for its message."""

from __future__ import annotations

from typing import NoReturn

from core.errors import FieldViolation, InvalidArgumentError


def fail_at(field: str, reason: str, index: int, detail: str) -> NoReturn:
    """Raises InvalidArgumentError on `field` at the 0-based `index` (reported 1-based).

    The message reads ``filter: unexpected ')' at position 14``; the position is also in
    the error's metadata.
    """
    described = f"{detail} at position {index + 1}"
    raise InvalidArgumentError(
        f"{field}: {described}",
        reason=reason,
        violations=[FieldViolation(field, described)],
        metadata={"position": str(index + 1)},
    )


def quote(text: str) -> str:
    """Quotes user text for a message: shortened, with non-printables as \\uXXXX."""
    short = text if len(text) <= 32 else text[:32] + "..."
    return "'" + "".join(c if c.isprintable() else f"\\u{ord(c):04x}" for c in short) + "'"
