"""Object-level authorization: a resource with an owner is visible to its owner and to admins.

A resource declares its owner once, with `Resource.owner_field` (the message field and the
column of the same name). The CRUD engine then applies one rule everywhere:

- on create the owner is the caller's subject; only a caller with the `admin` scope may
  name someone else (to create on their behalf), anyone else gets PERMISSION_DENIED;
- a caller without the `admin` scope reads, lists, counts and writes only the resources
  it owns. Someone else's resource is NOT_FOUND, with the same message and reason as a
  missing one, so a caller cannot learn that it exists; it never appears in a list or a
  count; and only an admin may give a resource to another owner.

Usage::

    owner = Ownership(PROJECTS)
    owner.claim(message)                  # on create: fills or checks the owner field
    if not owner.sees(row["owner"]): ...  # treat as missing
    where += owner.clauses(table)         # lists and counts
"""

from __future__ import annotations

from typing import Any, TypeVar, cast

import sqlalchemy as sa
from google.protobuf.message import Message

from core.errors import PermissionDeniedError
from core.resources.resource import Resource, RowLike
from core.security.principal import current_principal

M = TypeVar("M", bound=Message)


class Ownership:
    """The owner rule of one resource; every check is a no-op without `owner_field`."""

    def __init__(self, resource: Resource[Any]) -> None:
        self.field = resource.owner_field
        self._singular = resource.singular

    def of(self, message: Message) -> str | None:
        """The owner of `message`, or None if the resource has no owner."""
        return None if self.field is None else str(getattr(message, self.field))

    def claim(self, message: Message) -> None:
        """Makes the caller the owner of a message about to be created (or checks it).

        Raises:
            PermissionDeniedError: a caller without `admin` named another owner.
        """
        if self.field is None:
            return
        principal = current_principal()
        named = str(getattr(message, self.field))
        if not named:
            setattr(cast(Any, message), self.field, principal.subject)
        elif named != principal.subject and not principal.is_admin:
            raise self._denied(named)

    def owned(self, message: M) -> M:
        """A copy of `message` whose owner is the caller, or checked if it names one (see
        `claim`); `message` itself without an owner field."""
        if self.field is None:
            return message
        copy = type(message)()
        copy.CopyFrom(message)
        self.claim(copy)
        return copy

    def check_change(self, old: str | None, new: str | None) -> None:
        """An update may change the owner only with the `admin` scope."""
        if old != new and not current_principal().is_admin:
            raise self._denied(new or "")

    def sees(self, owner: str | None) -> bool:
        """Whether the current principal may see a resource owned by `owner`."""
        if self.field is None:
            return True
        principal = current_principal()
        return principal.is_admin or owner == principal.subject

    def sees_row(self, row: RowLike) -> bool:
        """Whether the current principal may see the resource stored in `row`."""
        return self.field is None or self.sees(str(row[self.field]))

    def clauses(self, table: sa.Table) -> list[sa.ColumnElement[bool]]:
        """The WHERE clauses that keep a non-admin's lists and counts to its own rows."""
        principal = current_principal()
        if self.field is None or principal.is_admin:
            return []
        return [table.c[self.field] == principal.subject]

    def scope(self) -> str:
        """Who the current principal sees: "*" (everyone's) or its subject. Page tokens
        and request ids are bound to it, so they never carry over to another caller."""
        principal = current_principal()
        return "*" if self.field is None or principal.is_admin else principal.subject

    def _denied(self, owner: str) -> PermissionDeniedError:
        return PermissionDeniedError(
            f"only an admin may make someone else the owner of a {self._singular}",
            reason="OWNER_NOT_CALLER",
            metadata={"field": f"{self._singular}.{self.field}", "owner": owner},
        )
