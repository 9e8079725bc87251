"""core.runtime.tasks: loops that a component owns, stopped by cancelling and waiting."""

from __future__ import annotations

import asyncio

import pytest
from structlog.testing import capture_logs

from core.runtime.tasks import BackgroundTask, cancel_and_wait


async def test_stop_cancels_the_loop_and_waits_for_its_cleanup() -> None:
    cleaned = asyncio.Event()

    async def loop() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            cleaned.set()

    task = BackgroundTask("waiter")
    task.start(loop())
    await asyncio.sleep(0)
    assert task.running
    await task.stop()
    assert cleaned.is_set()
    assert not task.running
    await task.stop()  # a second stop is a no-op


async def test_a_task_cannot_be_started_twice() -> None:
    task = BackgroundTask("once")
    task.start(asyncio.Event().wait())
    with pytest.raises(RuntimeError, match="already started"):
        task.start(asyncio.Event().wait())
    await task.stop()


async def test_a_repeated_step_keeps_its_last_error_until_a_step_succeeds() -> None:
    seen: list[str] = []  # last_error as each step begins
    third = asyncio.Event()

    async def step() -> None:
        seen.append(task.last_error)
        if len(seen) == 1:
            raise ValueError("first")
        if len(seen) == 3:
            third.set()

    task = BackgroundTask("stepper")
    with capture_logs() as logs:
        task.repeat(step, every=0.001)
        async with asyncio.timeout(5):
            await third.wait()
    await task.stop()
    assert seen[:3] == ["", "ValueError", ""]
    assert any(e["event"] == "task.step_failed" and e["task"] == "stepper" for e in logs)


async def test_a_loop_that_crashes_is_logged_at_once() -> None:
    async def crash() -> None:
        raise RuntimeError("boom")

    task = BackgroundTask("crasher")
    with capture_logs() as logs:
        task.start(crash())
        for _ in range(3):  # the task runs, then its done callback on the next turn
            await asyncio.sleep(0)
    assert not task.running
    assert task.last_error == "RuntimeError"
    assert any(e["event"] == "task.failed" for e in logs)
    await task.stop()


async def test_cancel_and_wait_still_propagates_the_callers_own_cancellation() -> None:
    async def stubborn() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            await asyncio.sleep(0.05)  # cleanup that takes a while

    inner = asyncio.create_task(stubborn())
    await asyncio.sleep(0)
    outer = asyncio.create_task(cancel_and_wait(inner))
    await asyncio.sleep(0)
    outer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await outer
    await asyncio.gather(inner, return_exceptions=True)
