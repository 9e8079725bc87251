"""The lifecycle state machine: its edges, its observers, its history and uptime."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest
from structlog.testing import capture_logs

import core.runtime.lifecycle
from core.runtime.health import HealthState
from core.runtime.lifecycle import (
    HISTORY_SIZE,
    Component,
    IllegalTransitionError,
    Lifecycle,
    Status,
    Transition,
    is_legal,
)

STOPPED, STARTING, RUNNING, STOPPING, ERROR = (
    Status.STOPPED,
    Status.STARTING,
    Status.RUNNING,
    Status.STOPPING,
    Status.ERROR,
)

# The whole state machine, written out independently of `core.runtime.lifecycle._LEGAL`.
LEGAL_EDGES = {
    (STOPPED, STARTING),
    (STARTING, RUNNING),
    (RUNNING, STOPPING),
    (STOPPING, STOPPED),
    (ERROR, STARTING),
} | {(old, ERROR) for old in Status}


async def walk(lifecycle: Lifecycle, *path: Status) -> None:
    for status in path:
        await lifecycle.move(status, f"to {status.value}")


def edges(lifecycle: Lifecycle) -> list[tuple[Status, Status]]:
    return [(t.old, t.new) for t in lifecycle.history]


def test_is_legal_matches_the_state_machine() -> None:
    for old in Status:
        for new in Status:
            assert is_legal(old, new) == ((old, new) in LEGAL_EDGES), (old, new)


async def test_a_full_start_stop_cycle_is_legal() -> None:
    lifecycle = Lifecycle("db")

    await walk(lifecycle, STARTING, RUNNING, STOPPING, STOPPED)

    assert lifecycle.status is STOPPED
    assert edges(lifecycle) == [
        (STOPPED, STARTING),
        (STARTING, RUNNING),
        (RUNNING, STOPPING),
        (STOPPING, STOPPED),
    ]


async def test_a_failed_start_goes_to_error_and_may_start_again() -> None:
    lifecycle = Lifecycle("db")

    await walk(lifecycle, STARTING, ERROR, STARTING, RUNNING)

    assert lifecycle.status is RUNNING
    assert edges(lifecycle)[1:3] == [(STARTING, ERROR), (ERROR, STARTING)]


async def test_every_status_may_go_to_error() -> None:
    paths = [(), (STARTING,), (STARTING, RUNNING), (STARTING, RUNNING, STOPPING), (STARTING, ERROR)]
    for path in paths:
        lifecycle = Lifecycle("db")
        await walk(lifecycle, *path)

        await lifecycle.move(ERROR, "disk on fire")

        assert lifecycle.status is ERROR
        assert (lifecycle.history[-1].old, lifecycle.history[-1].cause) == (
            path[-1] if path else STOPPED,
            "disk on fire",
        )


@pytest.mark.parametrize(
    ("path", "target"),
    [
        ((), RUNNING),
        ((), STOPPING),
        ((), STOPPED),
        ((STARTING,), STOPPING),
        ((STARTING, RUNNING), STARTING),
        ((STARTING, RUNNING), STOPPED),
        ((STARTING, RUNNING, STOPPING), RUNNING),
        ((STARTING, ERROR), RUNNING),
    ],
    ids=lambda value: value.value if isinstance(value, Status) else None,
)
async def test_an_illegal_transition_raises_and_changes_nothing(
    path: tuple[Status, ...], target: Status
) -> None:
    lifecycle = Lifecycle("db")
    await walk(lifecycle, *path)
    before = (lifecycle.status, list(lifecycle.history))
    seen: list[Transition] = []
    lifecycle.observe(seen.append)

    with pytest.raises(IllegalTransitionError, match=f"db: {before[0].value} -> {target.value}"):
        await lifecycle.move(target, "not allowed")

    assert (lifecycle.status, list(lifecycle.history)) == before
    assert seen == []


async def test_sync_and_async_observers_receive_every_transition() -> None:
    lifecycle = Lifecycle("db")
    seen_sync: list[Transition] = []
    seen_async: list[Transition] = []

    async def async_observer(transition: Transition) -> None:
        await asyncio.sleep(0)
        seen_async.append(transition)

    lifecycle.observe(seen_sync.append)
    lifecycle.observe(async_observer)

    await lifecycle.move(STARTING, "start requested")
    await lifecycle.move(RUNNING, "started")

    assert [(t.name, t.old, t.new, t.cause) for t in seen_sync] == [
        ("db", STOPPED, STARTING, "start requested"),
        ("db", STARTING, RUNNING, "started"),
    ]
    assert seen_async == seen_sync
    assert seen_sync == list(lifecycle.history)
    assert all(t.at.tzinfo is not None for t in seen_sync)


async def test_a_failing_observer_does_not_break_the_transition() -> None:
    lifecycle = Lifecycle("db")
    seen: list[Transition] = []

    def broken(_: Transition) -> None:
        raise RuntimeError("observer bug")

    async def broken_async(_: Transition) -> None:
        raise RuntimeError("async observer bug")

    lifecycle.observe(broken)
    lifecycle.observe(broken_async)
    lifecycle.observe(seen.append)

    with capture_logs() as logs:
        await lifecycle.move(STARTING, "start requested")

    assert lifecycle.status is STARTING
    assert [t.new for t in seen] == [STARTING]
    failures = [e for e in logs if e["event"] == "lifecycle.observer_failed"]
    assert [(e["component"], e["log_level"]) for e in failures] == [("db", "error")] * 2


async def test_a_hanging_async_observer_is_cut_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(core.runtime.lifecycle, "OBSERVER_TIMEOUT", 0.05)
    lifecycle = Lifecycle("db")
    seen: list[Transition] = []

    async def hangs(_: Transition) -> None:
        await asyncio.Event().wait()

    lifecycle.observe(hangs)
    lifecycle.observe(seen.append)

    with capture_logs() as logs:
        await lifecycle.move(STARTING, "start requested")

    assert [t.new for t in seen] == [STARTING]
    assert any(e["event"] == "lifecycle.observer_failed" for e in logs)


async def test_transitions_are_logged_and_errors_at_error_level() -> None:
    lifecycle = Lifecycle("db")

    with capture_logs() as logs:
        await walk(lifecycle, STARTING)
        await lifecycle.move(ERROR, "disk on fire")

    assert [
        (e["log_level"], e["component"], e["old"], e["new"], e["cause"])
        for e in logs
        if e["event"] == "lifecycle.transition"
    ] == [
        ("info", "db", "STOPPED", "STARTING", "to STARTING"),
        ("error", "db", "STARTING", "ERROR", "disk on fire"),
    ]


async def test_history_keeps_only_the_latest_transitions() -> None:
    lifecycle = Lifecycle("db")

    for attempt in range(HISTORY_SIZE):
        await lifecycle.move(STARTING, f"attempt {attempt}")
        await lifecycle.move(ERROR, f"failure {attempt}")

    assert len(lifecycle.history) == HISTORY_SIZE
    assert lifecycle.history[0].cause == f"attempt {HISTORY_SIZE // 2}"
    assert lifecycle.history[-1].cause == f"failure {HISTORY_SIZE - 1}"


async def test_uptime_counts_only_while_running(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [100.0]
    monkeypatch.setattr(core.runtime.lifecycle, "time", SimpleNamespace(monotonic=lambda: now[0]))
    lifecycle = Lifecycle("db")
    assert lifecycle.uptime == 0.0

    await lifecycle.move(STARTING, "start requested")
    now[0] = 101.0
    assert lifecycle.uptime == 0.0

    await lifecycle.move(RUNNING, "started")
    now[0] = 108.5
    assert lifecycle.uptime == 7.5

    await lifecycle.move(STOPPING, "stop requested")
    assert lifecycle.uptime == 0.0


async def test_a_component_gets_its_own_lifecycle_named_after_it() -> None:
    class Cache(Component):
        name = "cache"

    first, second = Cache(), Cache()
    await first.lifecycle.move(STARTING, "start requested")

    assert first.lifecycle.name == "cache"
    assert first.lifecycle is first.lifecycle
    assert (first.status, second.status) == (STARTING, STOPPED)
    assert repr(first) == "<Cache 'cache' STARTING>"
    assert (await first.check_health()).state is HealthState.HEALTHY
