"""Who sees which event: events follow the resource they are about.

An event may carry two attributes: `owner`, the subject of the principal owning the
resource it is about, and `principal`, the subject of the principal that caused it. The
CRUD engine sets both in its outbox events; the events service sets them on what callers
publish. One rule then decides what a network caller sees:

- a principal holding `events.admin` (which `admin` satisfies) sees every event; it is
  the scope of the services that relay, consume and operate the stream;
- any other principal sees only the events whose `owner` is its subject: in
  subscriptions, listings, dead letters and GetEventStatus, where someone else's event is
  NOT_FOUND like a missing one;
- a consumer group shares every event of its selector among its members, so joining one,
  Ack and Nack need `events.admin` (PERMISSION_DENIED otherwise);
- publishing without `events.admin`, a caller publishes as itself: `owner` defaults to
  its subject and may not name anyone else (PERMISSION_DENIED), and `principal` is its
  subject whatever the event said. With `events.admin` (the outbox relay passing on its
  service's events) both attributes are kept, and filled from the caller when absent.

Usage::

    stamp_publisher(events)                 # before publishing what a caller sent
    if not sees(event): raise NotFoundError(...)
"""

from __future__ import annotations

from collections.abc import Iterable

from core.errors import PermissionDeniedError
from core.events.model import Event
from core.security.principal import current_principal

OWNER = "owner"
PRINCIPAL = "principal"
EVENTS_ADMIN = "events.admin"


def sees_all() -> bool:
    """Whether the current principal sees every event."""
    return current_principal().holds(EVENTS_ADMIN)


def sees(event: Event) -> bool:
    """Whether the current principal may see `event`."""
    principal = current_principal()
    return principal.holds(EVENTS_ADMIN) or event.attributes.get(OWNER) == principal.subject


def require_events_admin(what: str) -> None:
    """Raises PERMISSION_DENIED unless the current principal holds `events.admin`."""
    if not sees_all():
        raise PermissionDeniedError(
            f"{what} needs the events.admin scope: a group shares every owner's events",
            reason="EVENTS_ADMIN_REQUIRED",
        )


def stamp_publisher(events: Iterable[Event]) -> None:
    """Sets `owner` and `principal` on events a caller publishes (see the module rules).

    Raises:
        PermissionDeniedError: a caller without `events.admin` named another owner.
    """
    principal = current_principal()
    trusted = principal.holds(EVENTS_ADMIN)
    for event in events:
        attributes = event.attributes
        owner = attributes.get(OWNER, "")
        if owner and owner != principal.subject and not trusted:
            raise PermissionDeniedError(
                "only a principal with events.admin publishes events of another owner",
                reason="OWNER_NOT_CALLER",
                metadata={"owner": owner},
            )
        if not owner:
            attributes[OWNER] = principal.subject
        if not trusted or PRINCIPAL not in attributes:
            attributes[PRINCIPAL] = principal.subject
