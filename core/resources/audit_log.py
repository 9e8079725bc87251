"""Reading the audit log (`core.resources.audit`): filtered pages of records, newest first.

Nothing here writes: records are only added by the writes they record and deleted by
the purger once past their retention. AdminService.ListAuditRecords reads through this.

Usage::

    log = AuditLog(database)
    records, token = await log.page(AuditQuery(resource="projects/demo"), size=50, token="")
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from core.data.database import Database
from core.data.pagination import PageTokens, fitting, page_size
from core.errors import FieldViolation, InvalidArgumentError
from core.events.model import CONTROL
from core.resources.audit import audit_records
from core.resources.resource import utc
from core.resources.shared_secrets import PAGE_TOKEN, read_secret


@dataclass(frozen=True, slots=True)
class AuditQuery:
    """Which records to read; every filter that is set must match."""

    resource: str = ""
    principal: str = ""
    start: datetime | None = None  # at or after
    end: datetime | None = None  # before

    def check(self) -> None:
        """Raises INVALID_ARGUMENT for a filter with control characters (PostgreSQL cannot
        even compare a NUL) and, reason INVALID_TIME_RANGE, for an empty time range."""
        for field in ("resource", "principal"):
            if CONTROL.search(getattr(self, field)):
                raise InvalidArgumentError(
                    f"{field} must not contain control characters",
                    reason="INVALID_FILTER",
                    violations=[FieldViolation(field, "must not contain control characters")],
                )
        if self.start is not None and self.end is not None and self.end <= self.start:
            raise InvalidArgumentError(
                "end_time must be after start_time",
                reason="INVALID_TIME_RANGE",
                violations=[FieldViolation("end_time", "must be after start_time")],
            )


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """One stored record; `changes` as `core.resources.audit.Change.to_json` wrote them."""

    id: int
    time: datetime
    principal: str
    method: str
    action: str
    request_id: str
    resource: str
    changes: list[dict[str, Any]]


class AuditLog:
    """The audit records of one database, read a page at a time."""

    def __init__(self, database: Database) -> None:
        self.db = database
        self._tokens: PageTokens | None = None

    async def page(
        self, query: AuditQuery, *, size: int, token: str
    ) -> tuple[list[AuditRecord], str]:
        """Up to `size` records matching `query`, newest first, and the next page's token.

        Raises:
            InvalidArgumentError: a bad page size, page token or time range.
        """
        limit = page_size(size)
        query.check()
        table = audit_records
        where = self._where(query)
        tokens = await self._page_tokens()
        signature = json.dumps(
            [query.resource, query.principal, _iso(query.start), _iso(query.end)]
        )
        if token:
            keys = tokens.decode(token, signature)
            if len(keys) != 1 or not isinstance(keys[0], int):
                raise InvalidArgumentError(
                    "page_token is not a token this service issued", reason="INVALID_PAGE_TOKEN"
                )
            where.append(table.c.id < keys[0])
        statement = sa.select(table).where(*where).order_by(table.c.id.desc()).limit(limit + 1)
        async with self.db.connect(autocommit=True) as conn:
            rows = (await conn.execute(statement)).all()
        found = [_record(row._mapping) for row in rows[:limit]]
        kept = fitting(_size(record) for record in found)
        if kept == len(rows):  # all of them: no row after the last
            return found, ""
        return found[:kept], tokens.encode(signature, [found[kept - 1].id])

    @staticmethod
    def _where(query: AuditQuery) -> list[sa.ColumnElement[bool]]:
        table = audit_records
        where = []
        if query.resource:
            where.append(table.c.resource == query.resource)
        if query.principal:
            where.append(table.c.principal == query.principal)
        if query.start is not None:
            where.append(table.c.time >= query.start)
        if query.end is not None:
            where.append(table.c.time < query.end)
        return where

    async def _page_tokens(self) -> PageTokens:
        if self._tokens is None:
            self._tokens = PageTokens(await read_secret(self.db, PAGE_TOKEN))
        return self._tokens


def _record(row: Any) -> AuditRecord:
    return AuditRecord(
        id=int(row["id"]),
        time=utc(row["time"]),
        principal=row["principal"],
        method=row["method"],
        action=row["action"],
        request_id=row["request_id"],
        resource=row["resource"],
        changes=list(row["changes"]),
    )


def _size(record: AuditRecord) -> int:
    """About the bytes `record` takes in a response: its texts and its changes as JSON."""
    texts = (record.principal, record.method, record.action, record.request_id, record.resource)
    return 32 + sum(len(t) for t in texts) + len(json.dumps(record.changes))


def _iso(at: datetime | None) -> str:
    return "" if at is None else utc(at).isoformat()
