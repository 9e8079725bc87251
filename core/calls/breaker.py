"""A circuit breaker per call target, shared by every client of the process.

A breaker counts consecutive failed calls to one target. After `failures_to_open` of
them it opens: calls fail at once with `UnavailableError` (reason `CIRCUIT_OPEN`)
instead of waiting for a deadline. After `reset` seconds it is half-open: up to
`trials` calls go through; a success closes it, a failure opens it again.

Only outcomes that say the target itself is in trouble count as failures:
UNAVAILABLE (down, unreachable, no ready replica) and DEADLINE_EXCEEDED (too slow to
answer). Every other code is an answer from a working server (NOT_FOUND, INVALID_ARGUMENT,
...) and counts as a success; CANCELLED (the caller gave up) counts as neither. Clients
(`clients.base`) record unary calls only, and record an UNAVAILABLE that a meshkit
server sent with error details (its database is down, it is stopping) as a success: the
server is up and answering, and its reason is more useful to the caller than CIRCUIT_OPEN.

A breaker that opened because no server was there to take the calls (the failures came
while the client's channel had no ready server: refused connections, a restart, every
replica not ready) half-opens as soon as a client sees a ready server again (`recover`),
rather than after `reset`: a restart that opened it costs no fast failures once the new
server is up. One opened by a server that is there but too slow waits out `reset`.

`watch_breakers(listener)` hears of every breaker opening (from closed) and closing
again, once per transition: a failed trial call re-opens a half-open breaker without a
new announcement, so a target that stays down is announced once.

Usage::

    breaker = breaker_for("dns:///events:50051", failures_to_open=5, reset=5.0)
    breaker.check()                     # raises UnavailableError while open
    ...                                 # make the call
    breaker.record(grpc.StatusCode.OK)  # or the failed call's code
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable

import grpc
import structlog
from opentelemetry import metrics

from core.errors import UnavailableError

log = structlog.get_logger()

FAILURE_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
NEUTRAL_CODES = frozenset({grpc.StatusCode.CANCELLED})


class BreakerState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    """The breaker of one target; get it from `breaker_for`, not by constructing it.

    Attributes:
        target: The channel target the breaker guards.
        failures: Consecutive failures counted so far (reset by a success).
        opened: How many times the breaker has opened since the process started.
    """

    def __init__(
        self,
        target: str,
        *,
        failures_to_open: int = 5,
        reset: float = 5.0,
        trials: int = 1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.target = target
        self.failures = 0
        self.opened = 0
        self._failures_to_open = failures_to_open
        self._reset = reset
        self._trials = trials
        self._clock = clock
        self._state = BreakerState.CLOSED
        self._opened_at = 0.0
        self._in_trial = 0
        self._unreachable = False  # the last failure came while no server was ready
        self._opened_unreachable = False

    @property
    def state(self) -> BreakerState:
        """The state now: an open breaker becomes half-open once `reset` has passed."""
        if self._state is BreakerState.OPEN and self._clock() - self._opened_at >= self._reset:
            self._state = BreakerState.HALF_OPEN
            self._in_trial = 0
        return self._state

    def check(self) -> None:
        """Lets a call through or raises `UnavailableError(reason="CIRCUIT_OPEN")`.

        In the half-open state a call that passes is one of the trial calls, so every
        `check` that returns must be followed by exactly one `record`.
        """
        state = self.state
        if state is BreakerState.CLOSED:
            return
        if state is BreakerState.HALF_OPEN and self._in_trial < self._trials:
            self._in_trial += 1
            return
        raise UnavailableError(
            f"circuit breaker for {self.target} is open: calls fail fast until it recovers",
            reason="CIRCUIT_OPEN",
            metadata={"target": self.target, "state": state.value},
        )

    @property
    def awaits_server(self) -> bool:
        """Open because no server was ready: `recover` half-opens it once one is."""
        return self._state is BreakerState.OPEN and self._opened_unreachable

    def recover(self) -> None:
        """A server of the target is ready again: an open breaker that opened because none
        was (`awaits_server`) half-opens now, to let its trial calls through."""
        if not self.awaits_server:
            return
        self._state = BreakerState.HALF_OPEN
        self._in_trial = 0
        log.info("breaker.half_open", target=self.target, cause="a server is ready again")

    def record(self, code: grpc.StatusCode, *, unreachable: bool = False) -> None:
        """Counts the outcome of a call that `check` let through; `unreachable` says that
        the call failed while the client had no ready server (see `recover`)."""
        half_open = self._state is BreakerState.HALF_OPEN
        if half_open:
            self._in_trial = max(0, self._in_trial - 1)
        if code in NEUTRAL_CODES:
            return
        if code not in FAILURE_CODES:
            self.failures = 0
            if half_open:
                self._state = BreakerState.CLOSED
                log.info("breaker.closed", target=self.target)
                _announce(self, BreakerState.CLOSED)
            return
        self.failures += 1
        self._unreachable = unreachable
        if half_open or (
            self._state is BreakerState.CLOSED and self.failures >= self._failures_to_open
        ):
            self._open(code)

    def _open(self, code: grpc.StatusCode) -> None:
        was_closed = self._state is BreakerState.CLOSED
        self._state = BreakerState.OPEN
        self._opened_at = self._clock()
        self._opened_unreachable = self._unreachable
        self.opened += 1
        log.warning(
            "breaker.opened",
            target=self.target,
            failures=self.failures,
            code=code.name,
            reset_s=self._reset,
            no_ready_server=self._unreachable,
        )
        if was_closed:
            _announce(self, BreakerState.OPEN)


_breakers: dict[str, CircuitBreaker] = {}

# Called with a breaker and its new state (OPEN or CLOSED); must not block.
BreakerListener = Callable[[CircuitBreaker, BreakerState], None]
_watchers: list[BreakerListener] = []


def watch_breakers(listener: BreakerListener) -> Callable[[], None]:
    """Calls `listener` whenever a breaker of the process opens or closes; returns the
    function that stops it. It runs in the call that changed the breaker: queue the work."""
    _watchers.append(listener)
    return lambda: _watchers.remove(listener) if listener in _watchers else None


def _announce(breaker: CircuitBreaker, state: BreakerState) -> None:
    for listener in list(_watchers):
        try:
            listener(breaker, state)
        except Exception:  # a watcher's bug must not fail the call being counted
            log.exception("breaker.watcher_failed", target=breaker.target)


def breaker_for(
    target: str, *, failures_to_open: int = 5, reset: float = 5.0, trials: int = 1
) -> CircuitBreaker:
    """The process-wide breaker of `target`, created with these settings on first use.

    Later callers share the first breaker of a target and its settings, so all clients
    of one target see it open together.
    """
    breaker = _breakers.get(target)
    if breaker is None:
        breaker = CircuitBreaker(
            target, failures_to_open=failures_to_open, reset=reset, trials=trials
        )
        _breakers[target] = breaker
    return breaker


def all_breakers() -> list[CircuitBreaker]:
    """Every breaker of the process, for metrics and the admin summary."""
    return list(_breakers.values())


def forget_breakers() -> None:
    """Drops every breaker (tests that reuse a target start from a closed breaker)."""
    _breakers.clear()


# -- metrics: read from the breakers when collected, nothing per call ----------------------


def _states(options: metrics.CallbackOptions) -> list[metrics.Observation]:
    return [
        metrics.Observation(int(b.state is state), {"target": b.target, "state": state.value})
        for b in all_breakers()
        for state in BreakerState
    ]


def _openings(options: metrics.CallbackOptions) -> list[metrics.Observation]:
    return [metrics.Observation(b.opened, {"target": b.target}) for b in all_breakers()]


_meter = metrics.get_meter("core.calls.breaker")
_meter.create_observable_gauge(
    "mesh.breaker.state",
    [_states],
    unit="1",
    description="Circuit breaker state by target: 1 for the current state, 0 for the others.",
)
_meter.create_observable_counter(
    "mesh.breaker.opened",
    [_openings],
    unit="{opening}",
    description="Times each circuit breaker has opened since the process started.",
)
