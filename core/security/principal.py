"""The principal of the current call, set once by the boundary and read by any layer.

grpc.aio runs every call in a task of its own with its own copy of the context variables,
so what the boundary sets here belongs to that call alone.

Usage::

    principal = current_principal()
    if not principal.is_admin and project.owner != principal.subject:
        raise ProjectNotFoundError(name)
"""

from __future__ import annotations

from contextvars import ContextVar, Token
from dataclasses import dataclass, field

ADMIN_SCOPE = "admin"  # satisfies every scope and acts on every owner's resources


@dataclass(frozen=True, slots=True)
class Principal:
    """A caller: a token's subject, a client certificate's identity, or the local caller.

    `subject` is what ownership and the audit log record, e.g. "alice" or
    "spiffe://mesh.local/ns/default/sa/events".
    """

    subject: str
    scopes: frozenset[str] = field(default_factory=frozenset)
    # How the caller was identified: "token", "certificate" or "unauthenticated".
    method: str = "token"

    @property
    def is_admin(self) -> bool:
        return ADMIN_SCOPE in self.scopes

    def holds(self, scope: str) -> bool:
        return scope in self.scopes or ADMIN_SCOPE in self.scopes


# The caller when authentication is off or optional and no credentials came: everything a
# process without security allows, as before security existed.
UNAUTHENTICATED = Principal("anonymous", frozenset({ADMIN_SCOPE}), "unauthenticated")

_current: ContextVar[Principal] = ContextVar("principal", default=UNAUTHENTICATED)


def current_principal() -> Principal:
    """The principal of the call being handled (UNAUTHENTICATED outside any call)."""
    return _current.get()


def act_as(principal: Principal) -> Token[Principal]:
    """Makes `principal` the current one in this context; the boundary calls it per call."""
    return _current.set(principal)
