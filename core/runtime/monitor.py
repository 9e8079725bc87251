"""Runs component health checks and keeps their results and history.

The container repeats `HealthMonitor.check` at the interval in a background task; each
check is bounded by a timeout (a check that hangs is UNHEALTHY, not a hang), and readers
get the cached result of the last run. Watchers (`HealthMonitor.watch`) hear of a running
component's check turning UNHEALTHY and, later, serving again: once per transition.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Sequence

import structlog

from core.runtime.health import Health, HealthState, worst
from core.runtime.lifecycle import Component, Status

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
    """Caches each component's latest `Health` and the history of its state changes."""

    def __init__(self, interval: float, timeout: float, on_change: Callable[[], None]) -> None:
        self.interval = interval
        self.timeout = timeout
        self._on_change = on_change
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
        if component.status is Status.RUNNING:
            self.record(component.name, Health.healthy())
        else:
            self._failing.discard(component.name)  # stopped: no recovery to announce
            self.record(component.name, _not_running(component))

    async def check(self, components: Sequence[Component]) -> None:
        """Runs every running component's check at once, each bounded by the timeout."""
        running = [c for c in components if c.status is Status.RUNNING]
        results = await asyncio.gather(*(self._check_one(c) for c in running))
        for component, health in zip(running, results, strict=True):
            if component.status is Status.RUNNING:  # it may have stopped meanwhile
                previous = self._latest.get(component.name)
                self.record(component.name, health)
                self._announce(component.name, previous, health)

    def _announce(self, name: str, previous: Health | None, health: Health) -> None:
        """Tells the watchers of a turn to UNHEALTHY, or of the recovery after one."""
        if health.state.serving == (name not in self._failing):
            return  # no transition: still serving, or still failing
        if health.state.serving:
            self._failing.discard(name)
        else:
            self._failing.add(name)
        for listener in self._watchers:
            try:
                listener(name, previous, health)
            except Exception:
                log.exception("health.watcher_failed", component=name)

    async def _check_one(self, component: Component) -> Health:
        deadline = asyncio.timeout(self.timeout)
        try:
            async with deadline:
                return await component.check_health()
        except Exception as exc:
            if deadline.expired():  # ours, not a TimeoutError of the check's own
                return Health.unhealthy(f"health check timed out after {self.timeout:g}s")
            log.exception("health.check_failed", component=component.name)
            return Health.unhealthy(f"health check failed: {type(exc).__name__}")


def _not_running(component: Component) -> Health:
    return Health.unhealthy(f"component is {component.status.value}")
