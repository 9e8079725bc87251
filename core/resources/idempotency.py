"""Request ids (AIP-155): a retried request with the same id gets the first response.

The id is recorded in the same transaction as the write it guards, so a write and its
record commit together or not at all. A concurrent duplicate blocks on the primary key
until the first commits, then fails and reads the stored response.

Usage::

    request_ids = RequestIds(database, "projects", Project, keep=timedelta(days=1))
    project = await request_ids.run("create", request.request_id, request, insert_project)
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Generic, TypeVar, cast

import sqlalchemy as sa
from google.protobuf.message import Message
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from core.data.database import Database
from core.data.transaction import Transaction
from core.errors import FieldViolation, InvalidArgumentError
from core.events.outbox import metadata
from core.security.principal import current_principal

# Mirrors core/data/migrations/versions/0001_core.py.
request_ids = sa.Table(
    "mesh_request_ids",
    metadata,
    sa.Column("request_id", sa.String(64), primary_key=True),
    sa.Column("method", sa.String(200), nullable=False),
    sa.Column("request_hash", sa.String(64), nullable=False),
    sa.Column("response", sa.LargeBinary(), nullable=False),
    sa.Column("expire_time", sa.DateTime(timezone=True), nullable=False),
)

M = TypeVar("M", bound=Message)

_LOOKUP = sa.select(request_ids.c.method, request_ids.c.request_hash, request_ids.c.response).where(
    request_ids.c.request_id == sa.bindparam("request_id")
)


def check_request_id(request_id: str) -> str:
    """A request id must be a UUID; returns it normalised to lower case."""
    try:
        return str(uuid.UUID(request_id))
    except ValueError:
        raise InvalidArgumentError(
            f"request_id {request_id!r} is not a UUID",
            reason="INVALID_REQUEST_ID",
            violations=[FieldViolation("request_id", "must be a UUID")],
        ) from None


def fingerprint(method: str, request: Message, request_id: str) -> str:
    """Identifies a request body, whatever the spelling of its request id.

    The request is hashed with its `request_id` field set to the normalised id, and
    serialized deterministically so map order does not matter.
    """
    normal = type(request)()
    normal.CopyFrom(request)
    cast(Any, normal).request_id = request_id
    body = normal.SerializeToString(deterministic=True)
    return hashlib.sha256(method.encode() + b"\0" + body).hexdigest()


async def recall(conn: AsyncConnection, request_id: str, method: str, digest: str) -> bytes | None:
    """The stored response for this request id, or None if it is new.

    Raises:
        InvalidArgumentError: the id was used for a different request.
    """
    row = (await conn.execute(_LOOKUP, {"request_id": request_id})).first()
    if row is None:
        return None
    if row.method != method or row.request_hash != digest:
        raise InvalidArgumentError(
            "request_id was already used for a different request",
            reason="REQUEST_ID_REUSED",
            violations=[FieldViolation("request_id", "already used for a different request")],
        )
    response: bytes = row.response
    return response


async def claim(
    tx: Transaction, request_id: str, method: str, digest: str, keep: timedelta
) -> None:
    """Records the id first thing in the write's transaction; a duplicate fails here."""
    await tx.conn.execute(
        request_ids.insert(),
        {
            "request_id": request_id,
            "method": method,
            "request_hash": digest,
            "response": b"",
            "expire_time": datetime.now(UTC) + keep,
        },
    )


async def record(tx: Transaction, request_id: str, response: Message) -> None:
    """Stores the response that a retry of this request id will get."""
    await tx.conn.execute(
        request_ids.update()
        .where(request_ids.c.request_id == request_id)
        .values(response=response.SerializeToString())
    )


async def forget_expired(tx: Transaction, batch: int = 5000) -> int:
    """Deletes up to `batch` ids past their retention; returns how many."""
    due = (
        sa.select(request_ids.c.request_id)
        .where(request_ids.c.expire_time < datetime.now(UTC))
        .limit(batch)
        .with_for_update(skip_locked=True)
    )
    result = await tx.conn.execute(
        request_ids.delete().where(request_ids.c.request_id.in_(due.scalar_subquery()))
    )
    return int(result.rowcount)


class _DuplicateRequestError(Exception):
    """A concurrent request with the same request id committed first."""


class RequestIds(Generic[M]):
    """Runs the writes of one resource once per request id.

    Args:
        database: Where ids are recorded, in the transaction of the write they guard.
        scope: Names the resource in a request's fingerprint, e.g. "projects".
        response: The message type a write returns, stored for retries.
        keep: How long an id is remembered after its first use.
    """

    def __init__(
        self, database: Database, scope: str, response: type[M], *, keep: timedelta
    ) -> None:
        self._db = database
        self._scope = scope
        self._response = response
        self._keep = keep

    async def run(
        self,
        method: str,
        request_id: str,
        request: Message,
        work: Callable[[Transaction], Awaitable[M]],
    ) -> M:
        """Runs `work` in a transaction once per request id; a retry gets the first response.

        Without a request id, `work` simply runs in a transaction.

        Raises:
            InvalidArgumentError: the id is not a UUID, or was used for another request.
        """
        if not request_id:
            return await self._db.run(work)
        request_id = check_request_id(request_id)
        # Bound to the caller too: another principal's retry is REQUEST_ID_REUSED, never
        # the first caller's stored response.
        scope = f"{self._scope}.{method}@{current_principal().subject}"
        digest = fingerprint(scope, request, request_id)
        response_type = self._response

        async def once(tx: Transaction) -> M:
            stored = await recall(tx.conn, request_id, method, digest)
            if stored is not None:
                return response_type.FromString(stored)
            try:
                await claim(tx, request_id, method, digest, self._keep)
            except IntegrityError:
                raise _DuplicateRequestError from None
            result = await work(tx)
            await record(tx, request_id, result)
            return result

        try:
            return await self._db.run(once)
        except _DuplicateRequestError:
            async with self._db.connect(autocommit=True) as conn:
                stored = await recall(conn, request_id, method, digest)
            assert stored is not None  # the other request committed its record
            return response_type.FromString(stored)
