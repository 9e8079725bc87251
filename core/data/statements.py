"""Single statements straight through asyncpg, on a connection from SQLAlchemy's pool.

SQLAlchemy's async Core adds about half a million instructions to each statement: an
AsyncConnection checkout and checkin through greenlets, then the execution context and
result wrappers around the driver's own call. A read by primary key spends more CPU
there than in the driver, the protocol and the message building together. For the
hottest single statements on PostgreSQL (`Database.fetch_one` and `execute_one`), this
module runs the statement as SQLAlchemy compiled it, with SQLAlchemy's own parameter
conversions, on the asyncpg connection under a pooled one. Each statement commits on its
own: asyncpg autocommits outside a transaction, as our autocommit connections do.

Usage (through `core.data.database.Database`, which picks this on PostgreSQL)::

    row = await db.fetch_one(select(projects).where(projects.c.id == bindparam("id")),
                             {"id": "demo"})
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, cast

import asyncpg
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.sql import ClauseElement, Executable
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.util import greenlet_spawn

from core.data.pool import STATEMENT_TIMEOUT, Checkouts, statement_timed_out, unavailable

# Connection exceptions, and the server shutting down: the connection is gone.
_CONNECTION_LOST = ("08", "57P01", "57P02", "57P03")
_REQUIRED = object()


class Prepared:
    """A statement compiled once for the driver: its SQL text and positional arguments."""

    def __init__(self, statement: Executable, dialect: Dialect) -> None:
        compiled = cast(SQLCompiler, cast(ClauseElement, statement).compile(dialect=dialect))
        self.sql = str(compiled)
        # The same conversions SQLAlchemy applies before handing values to the driver
        # (JSON to text, for instance), in the order of the $n placeholders.
        # A bind with a value of its own (a literal in the statement) needs no parameter.
        self._arguments = [
            (
                name,
                _REQUIRED if bind.required else bind.effective_value,
                bind.type.dialect_impl(dialect).bind_processor(dialect),
            )
            for name, bind in ((n, compiled.binds[n]) for n in compiled.positiontup or ())
        ]
        # And on the way back; asyncpg's codecs (set up by SQLAlchemy) usually leave none.
        columns = getattr(statement, "selected_columns", ())
        results = [
            (c.name, c.type.dialect_impl(dialect).result_processor(dialect, None)) for c in columns
        ]
        self._results: list[tuple[str, Callable[[Any], Any]]] | None = [
            (name, convert) for name, convert in results if convert is not None
        ] or None

    def arguments(self, params: Mapping[str, Any]) -> list[Any]:
        arguments = []
        for name, default, convert in self._arguments:
            value = params.get(name, default)
            if value is _REQUIRED:
                raise KeyError(f"no value for the statement's parameter {name!r}")
            arguments.append(value if convert is None else convert(value))
        return arguments

    def row(self, record: Any) -> Any:
        """A row readable by column name: the driver's record, converted where needed."""
        if record is None or self._results is None:
            return record
        row = dict(record)
        for name, convert in self._results:
            row[name] = convert(row[name])
        return row


class AsyncpgStatements:
    """Runs compiled statements on asyncpg connections checked out of `engine`'s pool."""

    def __init__(self, engine: AsyncEngine, checkouts: Checkouts) -> None:
        self._engine = engine
        self._compiled: dict[int, tuple[Executable, Prepared]] = {}
        self._checkouts = checkouts

    def prepared(self, statement: Executable) -> Prepared:
        """Compiles `statement` once; callers keep their statements for the process's life."""
        entry = self._compiled.get(id(statement))
        if entry is None or entry[0] is not statement:
            entry = self._compiled[id(statement)] = (
                statement,
                Prepared(statement, self._engine.dialect),
            )
        return entry[1]

    async def fetch_one(self, statement: Executable, params: Mapping[str, Any]) -> Any:
        """The first row (an asyncpg Record, read by column name) or None."""
        return await self._run(statement, params, fetch=True)

    async def execute(self, statement: Executable, params: Mapping[str, Any]) -> None:
        await self._run(statement, params, fetch=False)

    async def _run(self, statement: Executable, params: Mapping[str, Any], *, fetch: bool) -> Any:
        compiled = self.prepared(statement)
        arguments = compiled.arguments(params)
        pooled = await self._checkouts.take(self._engine.raw_connection)
        reusable = False
        try:
            conn: asyncpg.Connection = pooled.driver_connection
            try:
                if fetch:
                    row = await conn.fetchrow(compiled.sql, *arguments)
                else:
                    await conn.execute(compiled.sql, *arguments)
                    row = None
            except asyncpg.PostgresError as exc:
                sqlstate = exc.sqlstate or ""
                if sqlstate.startswith(_CONNECTION_LOST):
                    raise unavailable() from exc
                reusable = True  # the server answered: the connection is in a known state
                if sqlstate == STATEMENT_TIMEOUT:
                    raise statement_timed_out() from None
                if sqlstate.startswith("23"):  # integrity constraint violation
                    raise IntegrityError(compiled.sql, None, exc) from None
                raise
            except (OSError, asyncpg.InterfaceError, asyncpg.InternalClientError) as exc:
                # InternalClientError: the connection's protocol is mid-operation, seen
                # when the server terminates sessions under load; it is not reused.
                raise unavailable() from exc
            reusable = True
            return compiled.row(row)
        finally:
            if reusable:
                await greenlet_spawn(pooled.close)  # back to the pool
            else:
                # Lost, cancelled mid-statement or failed in an unknown way: never reuse it.
                # Outside a greenlet the pool closes it at once, without waiting.
                pooled.invalidate()
