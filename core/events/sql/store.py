"""`SqlEventStore`: the stream and group halves over the service's database."""

from __future__ import annotations

from core.data.database import Database
from core.events.model import AppendListener, LossListener
from core.events.sql.groups import SqlGroups
from core.events.sql.stream import SqlStream
from core.events.sql.tables import order_key


class SqlEventStore(SqlStream, SqlGroups):
    """`core.events.model.EventStore` over a `core.data.database.Database`."""

    name = "sql"

    def __init__(self, db: Database) -> None:
        SqlStream.__init__(self, db)
        SqlGroups.__init__(self, db)

    async def open(self, on_append: AppendListener, on_lost: LossListener) -> None:
        self._on_append = on_append  # a SQL database loses nothing: on_lost is never called
        if self._db.dialect == "sqlite":
            self._writer = await self._db.engine.connect()
            self._raw = (await self._writer.get_raw_connection()).driver_connection

    async def close(self) -> None:
        self._on_append = None
        if self._writer is not None:
            await self._writer.close()
            self._writer = self._raw = None

    async def check(self) -> str:
        return ""  # the database component reports the database's own health

    def order_key(self, position: str) -> tuple[int, ...]:
        return order_key(position)
