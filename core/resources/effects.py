"""What every write of a resource does beside its row, in the same transaction: its outbox
event (carrying the resource's owner and the principal that caused it), its audit record,
and the invalidation of its cached copy once the transaction commits.

Usage (inside `Crud`)::

    effects = WriteEffects(PROJECTS, Ownership(PROJECTS), cache)
    await effects.written(tx, "updated", message, old=before, request_id=request_id)
"""

from __future__ import annotations

from typing import Any, Generic, TypeVar, cast

import sqlalchemy as sa
from google.protobuf.message import Message

from core.data.transaction import Transaction
from core.events.outbox import emit, event_row, with_event
from core.resources import audit
from core.resources.cache import Cache
from core.resources.ownership import Ownership
from core.resources.resource import Resource
from core.security.principal import current_principal

M = TypeVar("M", bound=Message)

_ACTIONS = {"created": "create", "updated": "update", "deleted": "delete", "undeleted": "undelete"}


class WriteEffects(Generic[M]):
    """The event, audit record and cache invalidation of the writes of one resource."""

    def __init__(self, resource: Resource[M], owner: Ownership, cache: Cache | None) -> None:
        self.resource = resource
        self._owner = owner
        self._cache = cache
        # The row, its event and its record in one statement (PostgreSQL creates).
        self.insert_at_once: sa.Insert = audit.insert_with_event_and_audit(resource.table)
        # A write's event and record in one statement (PostgreSQL, inside a transaction).
        self._event_and_record: sa.Insert = audit.insert_event_and_audit()

    async def written(
        self, tx: Transaction, verb: str, message: M, *, old: M | None, request_id: str | None
    ) -> None:
        """Emits the event of a write and records it in the audit log, unless `request_id`
        is None (not a caller's write: a purge); drops the cached copy after commit."""
        if request_id is None:
            await emit(tx, **self.event(message, verb))
        else:
            changes = audit.diff(self.resource, old, message)
            name = cast(Any, message).name
            action = _ACTIONS[verb]
            if tx.conn.dialect.name == "postgresql":  # one round trip for both
                event = event_row(**self.event(message, verb))
                record = audit.audit_row(
                    resource=name, action=action, request_id=request_id, changes=changes
                )
                parameters = audit.with_audit(with_event({}, event), record)
                await tx.conn.execute(self._event_and_record, parameters)
            else:
                await emit(tx, **self.event(message, verb))
                await audit.record(
                    tx, resource=name, action=action, request_id=request_id, changes=changes
                )
        if self._cache is not None:
            cache, key = self._cache, cast(Any, message).name
            tx.after_commit(lambda: cache.invalidate(key))

    def at_once(self, values: dict[str, Any], message: M) -> dict[str, Any]:
        """The parameters of `insert_at_once` creating `values` (as `message`)."""
        event = event_row(**self.event(message, "created"))
        changes = audit.diff(self.resource, None, message)
        name = cast(Any, message).name
        record = audit.audit_row(resource=name, action="create", request_id="", changes=changes)
        return audit.with_audit(with_event(values, event), record)

    def event(self, message: M, verb: str) -> dict[str, Any]:
        """The outbox event of a write: `mesh.projects.v1.project.created` and so on.

        Its attributes say who caused it and whom it belongs to: the events service shows
        a caller without events.admin only the events it owns (core.events.visibility).
        """
        attributes = {"principal": current_principal().subject}
        owner = self._owner.of(message)
        if owner is not None:
            attributes["owner"] = owner
        return {
            "type": f"{self.resource.event_prefix}.{verb}",
            "source": self.resource.source,
            "subject": cast(Any, message).name,
            "data": message,
            "attributes": attributes,
        }
