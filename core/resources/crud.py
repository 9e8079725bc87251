"""A CRUD engine for AIP-style resources: one resource takes a proto, a table and a mapping.

It does what every resource repeats: names, field masks, etags, soft delete and purge,
outbox events in the same transaction, and a read-through cache invalidated after commit.
Request ids (`core.resources.idempotency`) and lists with filters, order and page tokens
(`core.resources.listing`) are parts of their own that it uses. Hot paths use SQLAlchemy
Core with statements built once, so SQLAlchemy's compiled-statement cache serves every call.

Usage (see servers/projects for the whole thing)::

    PROJECTS = Resource(message=Project, collection="projects", singular="project",
                        table=projects, source=SOURCE, event_prefix="mesh.projects.v1.project",
                        writable=WRITABLE, to_columns=to_columns, to_message=to_message,
                        validate=validate, filter_fields=FILTERS, order_fields=ORDER)
    crud = Crud(PROJECTS, database, cache)
    project = await crud.get("projects/demo")
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Generic, TypeVar, cast

import sqlalchemy as sa
from google.protobuf.field_mask_pb2 import FieldMask
from google.protobuf.message import Message
from sqlalchemy.exc import IntegrityError

from core.data.database import Database
from core.data.transaction import Transaction
from core.errors import (
    AbortedError,
    FailedPreconditionError,
    FieldViolation,
    InvalidArgumentError,
)
from core.resources import audit
from core.resources.cache import Cache
from core.resources.effects import WriteEffects
from core.resources.idempotency import RequestIds, check_request_id, forget_expired
from core.resources.listing import Listing
from core.resources.ownership import Ownership
from core.resources.resource import (
    Resource,
    RowLike,
    apply_paths,
    check_etag,
    mask_paths,
    precondition_etag,
)
from core.resources.validation import id_violations, parse_name
from core.telemetry.served import BYPASS, note_cache

M = TypeVar("M", bound=Message)

MAX_BATCH = 1000


class _LostRaceError(Exception):
    """A concurrent upsert created the row this one was about to create."""


class Crud(Generic[M]):
    """Create, read, update, delete, undelete and purge for one `Resource`.

    Every write by a caller leaves an audit record in its transaction
    (`core.resources.audit`), kept for `audit_retention` and then purged with the
    resource's expired rows. With `Resource.owner_field`, the owner rule of
    `core.resources.ownership` applies to every read and write.
    """

    def __init__(
        self,
        resource: Resource[M],
        database: Database,
        cache: Cache | None = None,
        *,
        audit_retention: timedelta = timedelta(days=365),
    ) -> None:
        self.resource = r = resource
        self.db = database
        self.cache = cache
        if cache is not None:
            cache.resources.add(r.collection)
        self.audit_retention = audit_retention
        self._owner = Ownership(r)
        self._upper = r.singular.upper()
        table = r.table
        by_id = table.c.id == sa.bindparam("id")
        self._select_one = sa.select(table).where(by_id)
        self._select_for_update = sa.select(table).where(by_id).with_for_update()
        self._insert = table.insert()
        self._effects = WriteEffects(r, self._owner, cache)
        self._message = r.message_of
        self._listing = Listing(r, database)
        self._request_ids = RequestIds(
            database, r.collection, r.message, keep=r.request_id_retention
        )

    # -- reads ----------------------------------------------------------------------------

    async def get(self, name: str) -> M:
        resource_id = parse_name(name, self.resource.collection)
        if self.cache is None:  # no bytes to share: skip the serialize-and-parse
            note_cache(BYPASS)
            message = await self._read(resource_id)
        else:
            raw = await self._cached(resource_id)
            message = None if raw is None else self.resource.message.FromString(raw)
        # Checked after the cache too: it holds every owner's resources.
        if message is None or not self._owner.sees(self._owner.of(message)):
            raise self.resource.not_found(name)
        return message

    async def batch_get(self, names: Sequence[str]) -> list[M]:
        if len(names) > MAX_BATCH:
            raise InvalidArgumentError(
                f"at most {MAX_BATCH} names per call",
                reason="TOO_MANY_NAMES",
                violations=[FieldViolation("names", f"at most {MAX_BATCH}")],
            )
        ids = [parse_name(n, self.resource.collection, f"names[{i}]") for i, n in enumerate(names)]
        table = self.resource.table
        note_cache(BYPASS)  # one query for the lot, past the cache
        async with self.db.connect(autocommit=True) as conn:
            rows = (await conn.execute(sa.select(table).where(table.c.id.in_(ids)))).all()
        found = {
            row.id: self._message(row._mapping)
            for row in rows
            if self._owner.sees_row(row._mapping)
        }
        for name, resource_id in zip(names, ids, strict=True):
            if resource_id not in found:
                raise self.resource.not_found(name)
        return [found[i] for i in ids]

    async def list_page(
        self, *, size: int, token: str, filter: str, order_by: str, show_deleted: bool
    ) -> tuple[list[M], str]:
        """One page of resources and the next page's token; see `Listing.page`."""
        return await self._listing.page(
            size=size, token=token, filter=filter, order_by=order_by, show_deleted=show_deleted
        )

    async def count(self, *, filter: str, show_deleted: bool) -> int:
        """How many resources match; see `Listing.count`."""
        return await self._listing.count(filter=filter, show_deleted=show_deleted)

    # -- writes ---------------------------------------------------------------------------

    async def create(
        self,
        message: M,
        *,
        resource_id: str,
        request_id: str,
        validate_only: bool,
        request: Message,
        id_field: str,
    ) -> M:
        if request_id:  # checked in a dry run too
            check_request_id(request_id)
        bad_id = id_violations(resource_id, id_field) if resource_id else []
        resource_id = resource_id or self._new_id()
        message = self._owner.owned(message)
        self.resource.check(message, bad_id)
        values = self.resource.new_row(message, resource_id)
        if validate_only:
            if await self._cached(resource_id) is not None:
                raise self.resource.already_exists(resource_id)
            return self._message(values)

        if not request_id and self.db.dialect == "postgresql":
            return await self._create_at_once(values)

        async def work(tx: Transaction) -> M:
            try:
                await tx.conn.execute(self._insert, values)
            except IntegrityError:
                raise self.resource.already_exists(resource_id) from None
            return await self._written(tx, "created", values, None, request_id)

        return await self._request_ids.run("create", request_id, request, work)

    async def _create_at_once(self, values: dict[str, Any]) -> M:
        """The row, its outbox event and its audit record in one atomic statement."""
        message = self._message(values)
        parameters = self._effects.at_once(values, message)
        try:
            await self.db.execute_one(self._effects.insert_at_once, parameters)
        except IntegrityError:
            raise self.resource.already_exists(values["id"]) from None
        if self.cache is not None:  # a cached "not found" for this id is now wrong
            await self.cache.invalidate(self._key(values["id"]))
        return message

    async def update(
        self,
        message: M,
        *,
        mask: FieldMask | None,
        etag: str,
        allow_missing: bool,
        request_id: str,
        request: Message,
    ) -> M:
        """Writes the fields of `message` that `mask` names; see `mask_paths`.

        The write is conditional on `etag` (the request's) or on `message.etag`, as AIP-154
        allows either: ABORTED (ETAG_MISMATCH) if it is stale, INVALID_ARGUMENT
        (ETAG_CONFLICT) if both are set and differ.
        """
        r = self.resource
        name = cast(Any, message).name
        resource_id = parse_name(name, r.collection, f"{r.singular}.name")
        paths = mask_paths(
            message, mask, writable=r.writable, output_only=r.output_only, immutable=r.immutable
        )
        etag = precondition_etag(etag, message, field=r.singular)

        async def work(tx: Transaction) -> M:
            row = (await tx.conn.execute(self._select_for_update, {"id": resource_id})).first()
            if row is not None and not self._owner.sees_row(row._mapping):
                if allow_missing:  # what a create of this id would answer
                    raise self.resource.already_exists(resource_id)
                raise self.resource.not_found(name)
            if row is None:
                if not allow_missing:
                    raise self.resource.not_found(name)
                return await self._upsert(tx, message, resource_id, request_id)
            current = row._mapping
            check_etag(etag, current, name)
            if current["delete_time"] is not None:
                raise FailedPreconditionError(
                    f"{r.singular} {name!r} is deleted; undelete it first",
                    reason=f"{self._upper}_DELETED",
                    metadata={"resource": name},
                )
            old = self._message(current)
            merged = self._message(current)
            apply_paths(message, merged, paths)
            r.check_immutable(old, merged)
            self._owner.check_change(self._owner.of(old), self._owner.of(merged))
            self.resource.check(merged)
            values = {**r.to_columns(merged), "update_time": datetime.now(UTC)}
            return await self._save(tx, current, values, "updated", request_id)

        try:
            return await self._request_ids.run("update", request_id, request, work)
        except _LostRaceError:  # the row exists now: this attempt updates it
            return await self._request_ids.run("update", request_id, request, work)

    async def delete(self, name: str, *, etag: str) -> M:
        return await self._set_deleted(name, etag, deleted=True)

    async def undelete(self, name: str, *, etag: str) -> M:
        return await self._set_deleted(name, etag, deleted=False)

    async def purge_expired(self, batch: int = 500) -> int:
        """Deletes for good what was soft-deleted before its purge time; returns how many.

        Works in batches of `batch` rows, each its own short transaction, so a backlog is
        worked off instead of timing out as one huge transaction; concurrent purgers on
        PostgreSQL skip each other's rows.
        """
        table = self.resource.table
        due = (
            sa.select(table.c.id)
            .where(table.c.purge_time < sa.bindparam("now"))
            .limit(batch)
            .with_for_update(skip_locked=True)
        )
        statement = table.delete().where(table.c.id.in_(due.scalar_subquery()))

        async def work(tx: Transaction) -> int:
            rows = (await tx.conn.execute(statement.returning(*table.c), {"now": now})).all()
            for row in rows:  # not a caller's write: an event, no audit record
                await self._written(tx, "purged", dict(row._mapping), None, None)
            return len(rows)

        total = 0
        now = datetime.now(UTC)
        while (purged := await self.db.run(work)) == batch:
            total += purged
        await self.db.run(forget_expired)
        keep = self.audit_retention
        await self.db.run(lambda tx: audit.forget_expired(tx, keep))
        return total + purged

    # -- internals ------------------------------------------------------------------------

    async def _set_deleted(self, name: str, etag: str, *, deleted: bool) -> M:
        r = self.resource
        resource_id = parse_name(name, r.collection)

        async def work(tx: Transaction) -> M:
            row = (await tx.conn.execute(self._select_for_update, {"id": resource_id})).first()
            if row is None or not self._owner.sees_row(row._mapping):
                raise self.resource.not_found(name)
            current = row._mapping
            check_etag(etag, current, name)
            if (current["delete_time"] is not None) == deleted:
                state = "already deleted" if deleted else "not deleted"
                raise FailedPreconditionError(
                    f"{r.singular} {name!r} is {state}",
                    reason=f"{self._upper}_{'ALREADY_DELETED' if deleted else 'NOT_DELETED'}",
                    metadata={"resource": name},
                )
            now = datetime.now(UTC)
            values = {
                "update_time": now,
                "delete_time": now if deleted else None,
                "purge_time": now + r.purge_after if deleted else None,
            }
            return await self._save(tx, current, values, "deleted" if deleted else "undeleted", "")

        return await self.db.run(work)

    async def _upsert(self, tx: Transaction, message: M, resource_id: str, request_id: str) -> M:
        message = self._owner.owned(message)
        self.resource.check(message)
        values = self.resource.new_row(message, resource_id)
        try:
            await tx.conn.execute(self._insert, values)
        except IntegrityError:
            # FOR UPDATE locks no missing row: a concurrent upsert inserted it first.
            raise _LostRaceError from None
        return await self._written(tx, "created", values, None, request_id)

    async def _save(
        self, tx: Transaction, current: RowLike, values: dict[str, Any], verb: str, request_id: str
    ) -> M:
        """Writes `values` if nobody else wrote since `current` was read (compare and set)."""
        table = self.resource.table
        revision = current["revision"]
        values = {**values, "revision": revision + 1}
        statement = (
            table.update()
            .where(table.c.id == current["id"], table.c.revision == revision)
            .values(values)
        )
        if (await tx.conn.execute(statement)).rowcount != 1:
            raise AbortedError(
                "the resource changed while it was being written; read it again and retry",
                reason="CONCURRENT_MODIFICATION",
            )
        return await self._written(tx, verb, {**current, **values}, current, request_id)

    async def _written(
        self,
        tx: Transaction,
        verb: str,
        row: RowLike,
        old: RowLike | None,
        request_id: str | None,
    ) -> M:
        """The message written; its event, audit record and cache invalidation (see
        `WriteEffects.written`)."""
        message = self._message(row)
        before = None if old is None else self._message(old)
        await self._effects.written(tx, verb, message, old=before, request_id=request_id)
        return message

    async def _cached(self, resource_id: str) -> bytes | None:
        if self.cache is None:
            return await self._load(resource_id)
        return await self.cache.get(self._key(resource_id), lambda: self._load(resource_id))

    async def _load(self, resource_id: str) -> bytes | None:
        message = await self._read(resource_id)
        return None if message is None else message.SerializeToString()

    async def _read(self, resource_id: str) -> M | None:
        row = await self.db.fetch_one(self._select_one, {"id": resource_id})
        return None if row is None else self._message(row)

    def _key(self, resource_id: str) -> str:
        return f"{self.resource.collection}/{resource_id}"

    def _new_id(self) -> str:
        return f"{self.resource.singular[0]}{secrets.token_hex(8)}"
