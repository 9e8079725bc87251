"""The circuit breaker's states, driven by a clock the test moves."""

from __future__ import annotations

import grpc
import pytest
from structlog.testing import capture_logs

from core.calls.breaker import (
    BreakerState,
    CircuitBreaker,
    all_breakers,
    breaker_for,
    forget_breakers,
)
from core.errors import UnavailableError

FAIL = grpc.StatusCode.UNAVAILABLE
OK = grpc.StatusCode.OK


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def breaker(clock: Clock) -> CircuitBreaker:
    return CircuitBreaker("127.0.0.1:1", failures_to_open=3, reset=5.0, clock=clock)


def fail(breaker: CircuitBreaker, times: int, code: grpc.StatusCode = FAIL) -> None:
    for _ in range(times):
        breaker.check()
        breaker.record(code)


def test_consecutive_failures_open_the_breaker(breaker: CircuitBreaker) -> None:
    fail(breaker, 2)
    assert (breaker.state, breaker.failures) == (BreakerState.CLOSED, 2)

    with capture_logs() as logs:
        fail(breaker, 1, grpc.StatusCode.DEADLINE_EXCEEDED)

    assert (breaker.state, breaker.opened) == (BreakerState.OPEN, 1)
    assert [e["event"] for e in logs] == ["breaker.opened"]
    assert logs[0]["target"] == "127.0.0.1:1"


def test_a_success_resets_the_count(breaker: CircuitBreaker) -> None:
    fail(breaker, 2)
    fail(breaker, 1, OK)
    fail(breaker, 2)
    assert (breaker.state, breaker.failures) == (BreakerState.CLOSED, 2)


def test_answers_of_a_working_server_are_not_failures(breaker: CircuitBreaker) -> None:
    for code in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INTERNAL, grpc.StatusCode.CANCELLED):
        fail(breaker, 5, code)
    assert breaker.state is BreakerState.CLOSED


def test_an_open_breaker_fails_fast_naming_the_target(breaker: CircuitBreaker) -> None:
    fail(breaker, 3)

    with pytest.raises(UnavailableError) as caught:
        breaker.check()

    assert caught.value.reason == "CIRCUIT_OPEN"
    assert caught.value.metadata["target"] == "127.0.0.1:1"


def test_after_the_reset_time_one_trial_call_goes_through(
    breaker: CircuitBreaker, clock: Clock
) -> None:
    fail(breaker, 3)
    clock.now = 5.0

    assert breaker.state is BreakerState.HALF_OPEN
    breaker.check()  # the trial
    with pytest.raises(UnavailableError):
        breaker.check()  # a second caller while the trial runs


def test_a_successful_trial_closes_the_breaker(breaker: CircuitBreaker, clock: Clock) -> None:
    fail(breaker, 3)
    clock.now = 5.0

    with capture_logs() as logs:
        fail(breaker, 1, OK)

    assert (breaker.state, breaker.failures) == (BreakerState.CLOSED, 0)
    assert [e["event"] for e in logs] == ["breaker.closed"]


def test_a_failed_trial_opens_it_again(breaker: CircuitBreaker, clock: Clock) -> None:
    fail(breaker, 3)
    clock.now = 5.0
    fail(breaker, 1)

    assert (breaker.state, breaker.opened) == (BreakerState.OPEN, 2)
    clock.now = 9.9
    with pytest.raises(UnavailableError):
        breaker.check()  # the reset time counts from the reopening
    clock.now = 10.0
    assert breaker.state is BreakerState.HALF_OPEN


def test_a_cancelled_trial_frees_its_place(breaker: CircuitBreaker, clock: Clock) -> None:
    fail(breaker, 3)
    clock.now = 5.0
    fail(breaker, 1, grpc.StatusCode.CANCELLED)

    assert breaker.state is BreakerState.HALF_OPEN
    breaker.check()


def test_one_breaker_per_target_process_wide() -> None:
    forget_breakers()
    first = breaker_for("dns:///a:1", failures_to_open=2)
    assert breaker_for("dns:///a:1") is first
    assert breaker_for("dns:///b:1") is not first
    assert [b.target for b in all_breakers()] == ["dns:///a:1", "dns:///b:1"]
    assert [s.value for s in BreakerState] == ["closed", "open", "half_open"]


def test_opened_while_no_server_was_ready_it_half_opens_once_one_is(
    breaker: CircuitBreaker,
) -> None:
    for _ in range(3):
        breaker.check()
        breaker.record(FAIL, unreachable=True)
    assert breaker.awaits_server

    with capture_logs() as logs:
        breaker.recover()  # long before the reset time

    assert breaker.state is BreakerState.HALF_OPEN
    assert [e["event"] for e in logs] == ["breaker.half_open"]
    fail(breaker, 1, OK)  # the trial
    assert breaker.state is BreakerState.CLOSED


def test_opened_by_a_slow_server_it_waits_out_the_reset(breaker: CircuitBreaker) -> None:
    fail(breaker, 3, grpc.StatusCode.DEADLINE_EXCEEDED)  # a ready server, too slow

    breaker.recover()

    assert not breaker.awaits_server
    assert breaker.state is BreakerState.OPEN
