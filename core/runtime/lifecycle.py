"""Lifecycle states, their legal transitions, and the component base class.

Usage::

    class Database(Component):
        name = "database"

        async def start(self) -> None: ...
        async def stop(self) -> None: ...
        async def check_health(self) -> Health: ...

    class OutboxRelay(Component):
        name = "outbox-relay"
        depends_on = ("database",)
"""

from __future__ import annotations

import asyncio
import enum
import inspect
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import structlog

from core.runtime.health import Health

log = structlog.get_logger()

HISTORY_SIZE = 20
OBSERVER_TIMEOUT = 5.0


class Status(enum.Enum):
    STOPPED = "STOPPED"
    STARTING = "STARTING"
    RUNNING = "RUNNING"
    STOPPING = "STOPPING"
    ERROR = "ERROR"


# Any status may also go to ERROR; that edge is added in `is_legal`.
_LEGAL: dict[Status, frozenset[Status]] = {
    Status.STOPPED: frozenset({Status.STARTING}),
    Status.STARTING: frozenset({Status.RUNNING}),
    Status.RUNNING: frozenset({Status.STOPPING}),
    Status.STOPPING: frozenset({Status.STOPPED}),
    Status.ERROR: frozenset({Status.STARTING}),
}


def is_legal(old: Status, new: Status) -> bool:
    return new is Status.ERROR or new in _LEGAL[old]


class IllegalTransitionError(RuntimeError):
    """A caller tried to move a lifecycle along an edge the state machine does not have."""


class FatalStartError(Exception):
    """A start failure that retrying cannot fix, such as a port that is already in use."""


@dataclass(frozen=True, slots=True)
class Transition:
    name: str
    old: Status
    new: Status
    cause: str
    at: datetime


Observer = Callable[[Transition], Awaitable[None] | None]


class Lifecycle:
    """The status of one thing (a component or the container), its history and its observers."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.status = Status.STOPPED
        self.history: deque[Transition] = deque(maxlen=HISTORY_SIZE)
        self.running_since: float | None = None  # monotonic seconds
        self._observers: list[Observer] = []

    def observe(self, observer: Observer) -> None:
        """Registers a sync or async callback that receives every transition."""
        self._observers.append(observer)

    @property
    def uptime(self) -> float:
        return 0.0 if self.running_since is None else time.monotonic() - self.running_since

    async def move(self, new: Status, cause: str) -> None:
        """Moves to `new`, logs it and tells every observer; illegal moves raise."""
        old = self.status
        if not is_legal(old, new):
            raise IllegalTransitionError(f"{self.name}: {old.value} -> {new.value} is not allowed")
        self.status = new
        self.running_since = time.monotonic() if new is Status.RUNNING else None
        transition = Transition(self.name, old, new, cause, datetime.now(UTC))
        self.history.append(transition)
        logger = log.error if new is Status.ERROR else log.info
        logger(
            "lifecycle.transition", component=self.name, old=old.value, new=new.value, cause=cause
        )
        for observer in list(self._observers):
            await _notify(observer, transition)


async def _notify(observer: Observer, transition: Transition) -> None:
    # An observer is someone else's code: it must not break or stall the lifecycle.
    try:
        result = observer(transition)
        if inspect.isawaitable(result):
            async with asyncio.timeout(OBSERVER_TIMEOUT):
                await result
    except Exception:
        log.exception("lifecycle.observer_failed", component=transition.name)


class Component:
    """Anything that must be opened, checked and closed: a database, a cache, a server.

    Subclasses set `name` (unique in a container), optionally `version`, `depends_on`
    (names of components that must be RUNNING first) and `groups`, and override
    `start`, `stop` and `check_health`. `start` must leave nothing half-open when it
    raises: the container retries it. Raise `FatalStartError` for failures a retry
    cannot fix.
    """

    name: str = ""
    version: str = "0.1.0"
    depends_on: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()
    # A component that callers reach (the gRPC server) starts before every other one, so
    # probes are answered while dependencies come up, and stops before them, so calls
    # drain while what they use is still there. It depends on nothing.
    faces_callers: bool = False
    # Overrides the container's stop timeout, for a component whose stop is long by design.
    stop_timeout: float | None = None

    @property
    def lifecycle(self) -> Lifecycle:
        # Created on first use so subclasses need not call super().__init__().
        existing: Lifecycle | None = self.__dict__.get("_lifecycle")
        if existing is None:
            existing = self.__dict__["_lifecycle"] = Lifecycle(self.name)
        return existing

    @property
    def status(self) -> Status:
        return self.lifecycle.status

    async def start(self) -> None:
        """Opens the component's resources. Raises to report a failed start."""

    async def stop(self) -> None:
        """Releases everything `start` opened. Must be safe to call once after a start."""

    async def check_health(self) -> Health:
        """Returns the component's health; the monitor bounds it with a timeout."""
        return Health.healthy()

    def interrupt(self, health: Health) -> None:
        """Called once when the monitor finds the running component UNHEALTHY: work that
        waits on a hung dependency (a query on a frozen connection) should fail now rather
        than at its deadline. Must not block; does nothing by default."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} {self.status.value}>"
