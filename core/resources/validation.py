"""Checks of resource ids, names and text fields, for domain modules and the CRUD engine.

Imports neither SQLAlchemy nor grpc, so a service's rules (its `domain.py`) load alone.
"""

from __future__ import annotations

import re

from core.errors import FieldViolation, InvalidArgumentError

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
