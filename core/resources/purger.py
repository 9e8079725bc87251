"""The purger: removes a resource's soft-deleted rows for good once their purge time passes.

One `Purger` per CRUD resource, registered beside its service. It calls
`Crud.purge_expired()` now and then every `interval` seconds until the process stops, and
is DEGRADED while its last purge failed (the rows wait for the next one).

It needs no leader: every instance runs one, at once if they like. Each batch deletes
the due rows it selects `FOR UPDATE SKIP LOCKED` and writes their `purged` events in the
same transaction, so two purgers never take the same row and a row's event is written
once, when it is deleted; the expired request ids and audit records go the same way. A
purger that dies mid-batch rolls back, and the rows are due again for the next purge on
any instance. (SQLite has one writer at a time, so purges there simply queue.)

Usage::

    projects = Crud(PROJECTS, db, cache)
    container.register(Purger(projects, settings.purge_interval))  # "project-purger"
"""

from __future__ import annotations

from typing import Any

import structlog

from core.resources.crud import Crud
from core.runtime.health import Health
from core.runtime.lifecycle import Component
from core.runtime.tasks import BackgroundTask

log = structlog.get_logger()


class Purger(Component):
    """Purges `crud`'s expired rows at an interval; named after the resource's singular.

    Args:
        crud: The resource's CRUD engine.
        interval: Seconds between the end of one purge and the start of the next.

    Logs `<singular>.purged` with the count when a purge removed rows, and
    `<singular>.purge_failed` with the traceback when one failed.
    """

    def __init__(self, crud: Crud[Any], interval: float) -> None:
        singular = crud.resource.singular
        self.name = f"{singular}-purger"
        self.depends_on = (crud.db.name,)
        self._crud = crud
        self._interval = interval
        self._purged_event = f"{singular}.purged"
        self._failed_event = f"{singular}.purge_failed"
        self._task = BackgroundTask(self.name)

    async def start(self) -> None:
        self._task.repeat(self._purge_once, every=self._interval, failure_event=self._failed_event)

    async def stop(self) -> None:
        await self._task.stop()

    async def check_health(self) -> Health:
        if self._task.last_error:
            return Health.degraded(f"last purge failed: {self._task.last_error}")
        return Health.healthy()

    async def _purge_once(self) -> None:
        purged = await self._crud.purge_expired()
        if purged:
            log.info(self._purged_event, count=purged)
