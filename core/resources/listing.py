"""Listing one resource (AIP-132): filtered, ordered pages with keyset page tokens, and counts.

A page token carries the sort keys of the last row served, signed with the database's
shared `page_token` secret (see `core.resources.shared_secrets`), so any replica can
serve the next page. `Crud.list_page` and `Crud.count` use a `Listing`.

Usage::

    listing = Listing(PROJECTS, database)
    page, next_token = await listing.page(
        size=50, token="", filter='state = ACTIVE', order_by="display_name", show_deleted=False
    )
"""

from __future__ import annotations

import json
from typing import Any, Generic, TypeVar

import sqlalchemy as sa
from google.protobuf.message import Message

from core.data.database import Database
from core.data.pagination import PageTokens, fitting, page_size
from core.resources.filtering import compile_filter
from core.resources.ordering import after, parse_order_by
from core.resources.ownership import Ownership
from core.resources.resource import Resource
from core.resources.shared_secrets import PAGE_TOKEN, read_secret

M = TypeVar("M", bound=Message)


class Listing(Generic[M]):
    """Pages and counts of one resource's rows.

    Args:
        resource: The resource listed: its table, filter fields and order fields.
        database: Where its rows and the page-token secret live.
    """

    def __init__(self, resource: Resource[M], database: Database) -> None:
        self.resource = resource
        self.db = database
        self._owner = Ownership(resource)
        self._tokens: PageTokens | None = None

    async def page(
        self, *, size: int, token: str, filter: str, order_by: str, show_deleted: bool
    ) -> tuple[list[M], str]:
        """One page of messages and the token of the next page ("" after the last).

        Raises:
            InvalidArgumentError: a bad page size, page token, filter or order_by.
        """
        limit = page_size(size)
        order = parse_order_by(order_by or self.resource.default_order, self._order_columns())
        table = self.resource.table
        columns = [table.c[self.resource.order_fields[o.field]] for o in order] + [table.c.id]
        descending = [o.descending for o in order] + [order[-1].descending if order else False]
        # A token is bound to whom it lists for, so it never pages through another owner's.
        query = json.dumps(
            [filter, [(o.field, o.descending) for o in order], show_deleted, self._owner.scope()]
        )
        where = self._where(filter, show_deleted)
        tokens = await self._page_tokens()
        if token:
            where.append(after(columns, descending, tokens.decode(token, query)))
        sort = [c.desc() if d else c.asc() for c, d in zip(columns, descending, strict=True)]
        statement = sa.select(table).where(*where).order_by(*sort).limit(limit + 1)
        async with self.db.connect(autocommit=True) as conn:
            rows = (await conn.execute(statement)).all()
        page = [self.resource.message_of(row._mapping) for row in rows[:limit]]
        kept = fitting(message.ByteSize() for message in page)
        if kept == len(rows):  # all of them: no row after the last
            return page, ""
        last = rows[kept - 1]._mapping
        return page[:kept], tokens.encode(query, [last[c.name] for c in columns])

    async def count(self, *, filter: str, show_deleted: bool) -> int:
        """How many rows match `filter` (and are not deleted, unless `show_deleted`)."""
        statement = (
            sa.select(sa.func.count())
            .select_from(self.resource.table)
            .where(*self._where(filter, show_deleted))
        )
        async with self.db.connect(autocommit=True) as conn:
            return int((await conn.execute(statement)).scalar_one())

    def _where(self, filter: str, show_deleted: bool) -> list[sa.ColumnElement[bool]]:
        where = self._owner.clauses(self.resource.table)  # a non-admin's own rows only
        if filter:
            where.append(compile_filter(filter, self.resource.filter_fields))
        if not show_deleted:
            where.append(self.resource.table.c.delete_time.is_(None))
        return where

    def _order_columns(self) -> dict[str, sa.ColumnElement[Any]]:
        table = self.resource.table
        return {name: table.c[column] for name, column in self.resource.order_fields.items()}

    async def _page_tokens(self) -> PageTokens:
        if self._tokens is None:
            self._tokens = PageTokens(await read_secret(self.db, PAGE_TOKEN))
        return self._tokens
