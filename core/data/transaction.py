"""The unit of work of `core.data.database.Database.transaction`: a connection inside a
transaction, and what runs once it has committed."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import structlog
from sqlalchemy.ext.asyncio import AsyncConnection

log = structlog.get_logger()

Hook = Callable[[], Awaitable[None] | None]


class Transaction:
    """One unit of work: a connection inside a transaction, plus after-commit hooks."""

    def __init__(self, conn: AsyncConnection) -> None:
        self.conn = conn
        self._hooks: list[Hook] = []

    def after_commit(self, hook: Hook) -> None:
        """Runs `hook` (sync or async) after a successful commit; never after a rollback."""
        self._hooks.append(hook)

    async def run_hooks(self) -> None:
        """Called by the database after the commit."""
        for hook in self._hooks:
            try:
                result = hook()
                if result is not None:
                    await result
            except Exception:
                # The commit stands; a failed hook (e.g. a cache invalidation) is logged.
                log.exception("transaction.hook_failed")
