"""Runs component health checks and keeps their results and history.

The container runs `HealthMonitor.run` in a background task: every component's check
starts each `interval` seconds, each bounded by a timeout (a check that hangs is a
failure, not a hang), and readers get the cached result. A running component becomes
UNHEALTHY only after `failures` checks in a row failed, and serves again after
`recoveries` in a row passed, so one slow check does not flap readiness: with the
defaults (1 s, 1 s, 2, 1) a hung dependency is UNHEALTHY within about 3 s and serving
again about 1 s after it answers. Watchers (`HealthMonitor.watch`) hear of a running
component turning UNHEALTHY and, later, serving again: once per transition.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Sequence

import structlog

from core.runtime.health import Health, HealthState, worst
from core.runtime.lifecycle import Component, Status
from core.runtime.tasks import cancel_and_wait

log = structlog.get_logger()

HISTORY_SIZE = 20

# A component's name, its previous health (None if never recorded) and its health now.
HealthListener = Callable[[str, Health | None, Health], None]


class ChangeFeed:
    """Wakes every waiter when something changed; waiters then re-read the state.

    Take `waiter()` *before* reading the state, then wait on it: a change made in
    between has already set that event, so no change is ever missed.
    """

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def waiter(self) -> asyncio.Event:
        return self._event

    def notify(self) -> None:
        self._event.set()
        self._event = asyncio.Event()


class HealthMonitor:
    """Caches each component's latest `Health` and the history of its state changes.

    Args:
        interval: Seconds from the start of one round of checks to the next.
        timeout: Bound on each check.
        on_change: Called after every recorded change.
        failures: Failed checks in a row that make a serving component UNHEALTHY.
        recoveries: Passed checks in a row that make an UNHEALTHY component serve again.
    """

    def __init__(
        self,
        interval: float,
        timeout: float,
        on_change: Callable[[], None],
        *,
        failures: int = 1,
        recoveries: int = 1,
    ) -> None:
        self.interval = interval
        self.timeout = timeout
        self.failures = failures
        self.recoveries = recoveries
        self._on_change = on_change
        # Checks in a row that disagree with the record; no entry: not checked since started.
        self._streaks: dict[str, int] = {}
        self._lingering: dict[str, asyncio.Future[Health]] = {}  # timed out, still ending
        self._latest: dict[str, Health] = {}
        self._history: dict[str, deque[Health]] = {}
        self._overall: deque[Health] = deque(maxlen=HISTORY_SIZE)
        self._failing: set[str] = set()  # announced UNHEALTHY to the watchers
        self._watchers: list[HealthListener] = []

    def watch(self, listener: HealthListener) -> None:
        """Calls `listener` when a running component's check turns UNHEALTHY, and when it
        serves (HEALTHY or DEGRADED) again after that; once per transition, from the
        monitoring task, so it must not block. Starting and stopping are not announced.
        """
        self._watchers.append(listener)

    def latest(self, component: Component) -> Health:
        return self._latest.get(component.name) or _not_running(component)

    def history(self, name: str) -> list[Health]:
        """The component's recent health state changes, oldest first."""
        return list(self._history.get(name, ()))

    def overall(self) -> Health:
        """The worst state of all components, with the reasons of those not healthy."""
        state = worst(h.state for h in self._latest.values())
        reasons = [f"{n}: {h.reason}" for n, h in self._latest.items() if h.reason]
        return Health(state, "; ".join(reasons))

    def overall_history(self) -> list[Health]:
        """The recent changes of the overall state, oldest first."""
        return list(self._overall)

    def record(self, name: str, health: Health) -> None:
        """Stores a result; a change of state is logged, kept in history and announced."""
        previous = self._latest.get(name)
        self._latest[name] = health
        if previous is not None and previous.state is health.state:
            return
        self._history.setdefault(name, deque(maxlen=HISTORY_SIZE)).append(health)
        overall = self.overall()
        if not self._overall or self._overall[-1].state is not overall.state:
            self._overall.append(overall)
        if previous is not None:
            logger = log.info if health.state is HealthState.HEALTHY else log.warning
            logger(
                "health.changed",
                component=name,
                old=previous.state.value,
                new=health.state.value,
                reason=health.reason,
            )
        self._on_change()

    def record_status(self, component: Component) -> None:
        """Follows a lifecycle change: a started component counts as healthy until checked."""
        self._streaks.pop(component.name, None)
        if component.status is Status.RUNNING:
            self.record(component.name, Health.healthy())
        else:
            self._failing.discard(component.name)  # stopped: no recovery to announce
            self.record(component.name, _not_running(component))

    async def run(self, components: Sequence[Component]) -> None:
        """Checks `components` every `interval` seconds (start to start) until cancelled;
        a round that took longer is followed by the next at once."""
        try:
            while True:
                started = time.monotonic()
                try:
                    await self.check(components)
                except Exception:
                    log.exception("health.round_failed")
                await asyncio.sleep(max(0.0, started + self.interval - time.monotonic()))
        finally:
            await cancel_and_wait(*self._lingering.values())
            self._lingering.clear()

    async def check(self, components: Sequence[Component]) -> None:
        """Runs every running component's check at once, each bounded by the timeout."""
        running = [c for c in components if c.status is Status.RUNNING]
        results = await asyncio.gather(*(self._check_one(c) for c in running))
        for component, health in zip(running, results, strict=True):
            if component.status is Status.RUNNING and self._settled(component.name, health):
                previous = self._latest.get(component.name)
                self.record(component.name, health)
                if self._announce(component.name, previous, health) and not health.state.serving:
                    _interrupt(component, health)

    def _settled(self, name: str, health: Health) -> bool:
        """Whether to record `health`: at once when it is the first check since the start
        or agrees with the recorded state on serving, else only once enough checks in a
        row said the same (the hysteresis)."""
        recorded = self._latest.get(name)
        first = name not in self._streaks  # the first check since the start is taken as is
        if first or recorded is None or recorded.state.serving == health.state.serving:
            self._streaks[name] = 0
            return True
        streak = self._streaks[name] = self._streaks.get(name, 0) + 1
        needed = self.recoveries if health.state.serving else self.failures
        if streak >= needed:
            self._streaks[name] = 0
            return True
        log.info(
            "health.change_pending",
            component=name,
            new=health.state.value,
            reason=health.reason,
            checks=f"{streak}/{needed}",
        )
        return False

    def _announce(self, name: str, previous: Health | None, health: Health) -> bool:
        """Tells the watchers of a turn to UNHEALTHY, or of the recovery after one; says
        whether there was one."""
        if health.state.serving == (name not in self._failing):
            return False  # no transition: still serving, or still failing
        if health.state.serving:
            self._failing.discard(name)
        else:
            self._failing.add(name)
        for listener in self._watchers:
            try:
                listener(name, previous, health)
            except Exception:
                log.exception("health.watcher_failed", component=name)
        return True

    async def _check_one(self, component: Component) -> Health:
        """The component's check, in a task of its own so that its result is in within the
        timeout even when its cancellation takes long (closing a hung connection can). The
        next check first waits, within its own timeout, for such a check to end."""
        name = component.name
        timed_out = Health.unhealthy(f"health check timed out after {self.timeout:g}s")
        deadline = time.monotonic() + self.timeout
        lingering = self._lingering.get(name)
        if lingering is not None:
            await asyncio.wait((lingering,), timeout=self.timeout)
            if not lingering.done():
                return timed_out
            del self._lingering[name]
        check = asyncio.ensure_future(component.check_health())
        try:
            await asyncio.wait((check,), timeout=max(0.0, deadline - time.monotonic()))
        finally:
            if not check.done():  # timed out, or the monitor is stopping
                check.cancel()
                check.add_done_callback(_retrieve)  # whatever it ends with is not news
                self._lingering[name] = check
        if not check.done() or check.cancelled():
            return timed_out
        error = check.exception()
        if error is None:
            return check.result()
        log.error("health.check_failed", component=name, exc_info=error)
        return Health.unhealthy(f"health check failed: {type(error).__name__}")


def _interrupt(component: Component, health: Health) -> None:
    try:
        component.interrupt(health)
    except Exception:
        log.exception("health.interrupt_failed", component=component.name)


def _retrieve(task: asyncio.Future[Health]) -> None:
    if not task.cancelled():
        task.exception()


def _not_running(component: Component) -> Health:
    return Health.unhealthy(f"component is {component.status.value}")
