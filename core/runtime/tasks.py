"""Background loops owned by a component: started with it, cancelled and awaited at its stop.

Every loop a component runs on its own (a purger, the outbox relay, SQLite's WAL
checkpoints, the health monitor) is a `BackgroundTask`, so none is left without an owner
and "cancel it, then wait for it" is written once. A loop that repeats a step keeps the
step's last error for the component's health.

Usage::

    class Purger(Component):
        def __init__(self) -> None:
            self._task = BackgroundTask("purger")

        async def start(self) -> None:
            self._task.repeat(self._purge_once, every=60.0)

        async def stop(self) -> None:
            await self._task.stop()

        async def check_health(self) -> Health:
            if self._task.last_error:
                return Health.degraded(f"last purge failed: {self._task.last_error}")
            return Health.healthy()
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import structlog

log = structlog.get_logger()

T = TypeVar("T")


async def cancel_and_wait(*tasks: asyncio.Future[Any]) -> None:
    """Cancels `tasks` and waits until every one has finished; what they raise is dropped.

    If the caller is cancelled meanwhile, that cancellation still propagates.
    """
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


class BackgroundTask:
    """One named loop: `start` (or `repeat`) it, `stop` cancels it and waits for it.

    Args:
        name: The asyncio task's name, and the `task` field of its log lines.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.last_error = ""  # the type of the last failed step; "" after a success
        self._task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self, loop: Coroutine[Any, Any, None]) -> None:
        """Runs `loop` in a task of its own until `stop`.

        Should `loop` end with an exception, it is logged at once with its traceback and
        kept in `last_error`, rather than found (and dropped) only at `stop`.
        """
        if self._task is not None:
            loop.close()
            raise RuntimeError(f"background task {self.name!r} is already started")
        self._task = asyncio.create_task(loop, name=self.name)
        self._task.add_done_callback(self._ended)

    def repeat(
        self,
        step: Callable[[], Awaitable[object]],
        *,
        every: float,
        failure_event: str = "task.step_failed",
    ) -> None:
        """Runs `step` now and then `every` seconds after each run ends, until `stop`.

        A failed step is logged as `failure_event` with its traceback and kept in
        `last_error` until a step succeeds; the loop goes on either way.
        """
        self.start(self._repeat(step, every, failure_event))

    async def stop(self) -> None:
        """Cancels the loop and waits for it to end; a no-op when it is not started."""
        task, self._task = self._task, None
        if task is not None:
            await cancel_and_wait(task)

    def _ended(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        error = task.exception()
        if error is not None:
            self.last_error = type(error).__name__
            log.error("task.failed", task=self.name, exc_info=error)

    async def _repeat(
        self, step: Callable[[], Awaitable[object]], every: float, failure_event: str
    ) -> None:
        while True:
            try:
                await step()
                self.last_error = ""
            except Exception as exc:
                self.last_error = type(exc).__name__
                log.exception(failure_event, task=self.name)
            await asyncio.sleep(every)


class ShieldedWork:
    """Calls that run to their end even when the caller that made them is cancelled.

    A database call cut off mid-statement invalidates its connection and leaves it
    unclosed, a connection's return to the pool cut off drops it unclosed, and a claim
    cut off after its commit would strand what it handed out. Such work runs here, in
    tasks the owner waits for (`drain`) before it closes what the work uses.
    """

    def __init__(self) -> None:
        self._tasks: set[asyncio.Future[Any]] = set()

    def owned(self, work: Awaitable[T]) -> asyncio.Future[T]:
        """`work` as a task that `drain` waits for."""
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def settled(self, work: Awaitable[T]) -> T:
        """The result of `work`, which runs on if the caller is cancelled meanwhile."""
        return await asyncio.shield(self.owned(work))

    async def drain(self, timeout: float) -> None:
        """Waits up to `timeout` seconds for the work under way."""
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=timeout)
