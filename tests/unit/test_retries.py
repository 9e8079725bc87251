"""core.retries: what is retried, how often, what a retry logs and counts, and the bounds."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
import stamina
from opentelemetry.sdk.metrics.export import MetricsData
from structlog.testing import capture_logs

from core.config import TelemetrySettings
from core.errors import NotFoundError, UnavailableError
from core.retries import RETRIES, Retry
from core.telemetry import Telemetry, configure_telemetry

QUICK = {"wait_initial": 0.001, "wait_max": 0.002, "wait_jitter": 0.0}


class Flaky:
    """Fails with `error` the first `failures` calls, then returns the number of calls."""

    def __init__(self, failures: int, error: Exception | None = None) -> None:
        self.failures = failures
        self.error = error or UnavailableError("not yet")
        self.calls = 0

    async def __call__(self) -> int:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return self.calls


@pytest.fixture
def metrics_on() -> Iterator[Telemetry]:
    telemetry = configure_telemetry(TelemetrySettings(), service="test", version="0")
    yield telemetry
    telemetry.shutdown()


def retries_counted(data: MetricsData | None) -> dict[tuple[Any, Any], int]:
    assert data is not None
    return {
        (point.attributes["operation"], point.attributes["error.type"]): point.value
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
        if metric.name == RETRIES
        for point in metric.data.data_points
    }


async def test_a_retried_operation_logs_each_scheduled_retry() -> None:
    flaky = Flaky(failures=2)

    with capture_logs() as logs:
        result = await Retry("thing.fetch", on=UnavailableError, attempts=3, **QUICK).call(
            flaky, thing="t1"
        )

    assert result == 3
    scheduled = [e for e in logs if e["event"] == "retry.scheduled"]
    assert [(e["operation"], e["attempt"], e["error"], e["thing"]) for e in scheduled] == [
        ("thing.fetch", 1, "UnavailableError", "t1"),
        ("thing.fetch", 2, "UnavailableError", "t1"),
    ]
    assert all(e["log_level"] == "warning" and 0 <= e["delay_s"] <= 0.002 for e in scheduled)
    assert scheduled[0]["cause"] == "UnavailableError: not yet"


async def test_retries_are_counted_by_operation_and_error_type(metrics_on: Telemetry) -> None:
    await Retry("thing.count", on=UnavailableError, attempts=4, **QUICK).call(Flaky(failures=3))

    assert retries_counted(metrics_on.collect())[("thing.count", "UnavailableError")] == 3


async def test_giving_up_raises_the_original_error() -> None:
    error = UnavailableError("down for good")
    flaky = Flaky(failures=10, error=error)

    with capture_logs() as logs, pytest.raises(UnavailableError) as raised:
        await Retry("thing.fetch", on=UnavailableError, attempts=3, **QUICK).call(flaky)

    assert raised.value is error
    assert flaky.calls == 3
    assert len([e for e in logs if e["event"] == "retry.scheduled"]) == 2


async def test_after_an_error_elsewhere_the_first_try_is_a_retry() -> None:
    flaky = Flaky(failures=0)
    broke = UnavailableError("the stream broke")

    with capture_logs() as logs:
        result = await Retry("thing.watch", on=UnavailableError, **QUICK).call(flaky, after=broke)

    assert (result, flaky.calls) == (1, 1)
    [scheduled] = [e for e in logs if e["event"] == "retry.scheduled"]
    assert (scheduled["attempt"], scheduled["cause"]) == (1, "UnavailableError: the stream broke")


async def test_after_an_error_it_is_not_for_nothing_is_tried() -> None:
    flaky = Flaky(failures=0)

    with pytest.raises(NotFoundError):
        await Retry("thing.watch", on=UnavailableError).call(flaky, after=NotFoundError("gone"))

    assert flaky.calls == 0


async def test_an_error_it_is_not_for_is_raised_at_once() -> None:
    flaky = Flaky(failures=1, error=NotFoundError("no such thing"))

    with capture_logs() as logs, pytest.raises(NotFoundError):
        await Retry("thing.fetch", on=UnavailableError, **QUICK).call(flaky)

    assert flaky.calls == 1
    assert not [e for e in logs if e["event"] == "retry.scheduled"]


async def test_a_predicate_decides_what_is_retried() -> None:
    def transient(exc: Exception) -> bool:
        return isinstance(exc, UnavailableError) and exc.reason == "BUSY"

    busy = Flaky(failures=1, error=UnavailableError("busy", reason="BUSY"))
    assert await Retry("thing.fetch", on=transient, **QUICK).call(busy) == 2

    gone = Flaky(failures=1, error=UnavailableError("gone", reason="GONE"))
    with pytest.raises(UnavailableError):
        await Retry("thing.fetch", on=transient, **QUICK).call(gone)
    assert gone.calls == 1


async def test_the_timeout_bounds_the_retries() -> None:
    flaky = Flaky(failures=1_000_000)
    patient = Retry("thing.fetch", on=UnavailableError, attempts=None, timeout=0.05, **QUICK)

    with pytest.raises(UnavailableError):
        await patient.call(flaky)

    assert 1 < flaky.calls < 1_000_000


async def test_the_decorator_retries_each_call_with_its_arguments() -> None:
    calls: list[str] = []

    @Retry("thing.fetch", on=UnavailableError, attempts=2, **QUICK)
    async def fetch(name: str, *, suffix: str) -> str:
        calls.append(name)
        if len(calls) == 1:
            raise UnavailableError("not yet")
        return name + suffix

    assert await fetch("a", suffix="!") == "a!"
    assert calls == ["a", "a"]
    assert fetch.__name__ == "fetch"


async def test_cancelling_during_a_backoff_ends_the_retries() -> None:
    calls = 0
    failed = asyncio.Event()

    async def down() -> None:
        nonlocal calls
        calls += 1
        failed.set()
        raise UnavailableError("down")

    slow = Retry("thing.fetch", on=UnavailableError, attempts=None, timeout=None, wait_initial=60)
    task = asyncio.create_task(slow.call(down))
    await failed.wait()  # the task ran on into the backoff before this wakes

    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert calls == 1


async def test_testing_mode_gives_up_after_one_try() -> None:
    flaky = Flaky(failures=1)

    with stamina.set_testing(True, attempts=1), pytest.raises(UnavailableError):
        await Retry("thing.fetch", on=UnavailableError, attempts=5).call(flaky)

    assert flaky.calls == 1


async def test_stamina_decorated_functions_are_logged_under_their_name() -> None:
    calls = 0

    @stamina.retry(on=ValueError, attempts=2, wait_initial=0.001, wait_jitter=0)
    async def parse() -> int:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ValueError("bad")
        return calls

    with capture_logs() as logs:
        assert await parse() == 2

    [scheduled] = [e for e in logs if e["event"] == "retry.scheduled"]
    assert scheduled["operation"].endswith("parse")
    assert scheduled["error"] == "ValueError"


def test_bounds_must_make_sense() -> None:
    with pytest.raises(ValueError, match="attempts"):
        Retry("thing.fetch", on=ValueError, attempts=0)
    with pytest.raises(ValueError, match="timeout"):
        Retry("thing.fetch", on=ValueError, timeout=0)


async def test_a_field_named_like_the_log_event_does_not_break_the_retry() -> None:
    with capture_logs() as logs:
        await Retry("thing.fetch", on=UnavailableError, **QUICK).call(Flaky(1), event="e1")

    [scheduled] = [e for e in logs if e["event"] == "retry.scheduled"]
    assert scheduled["operation"] == "thing.fetch"
