"""HealthMonitor (bounded checks, cached results, change history) and ChangeFeed."""

from __future__ import annotations

import asyncio

from structlog.testing import capture_logs

from core.runtime import monitor as monitor_module
from core.runtime.health import Health, HealthState
from core.runtime.lifecycle import Component, Status
from core.runtime.monitor import ChangeFeed, HealthMonitor


class Probe(Component):
    """A component whose health check returns `health`, or hangs, or raises."""

    def __init__(self, name: str = "db", health: Health | None = None) -> None:
        self.name = name
        self.health = health or Health.healthy()
        self.error: Exception | None = None
        self.hang = False
        self.checks = 0
        self.entered = asyncio.Event()
        self.release = asyncio.Event()
        self.release.set()

    async def check_health(self) -> Health:
        self.checks += 1
        self.entered.set()
        if self.hang:
            await asyncio.Event().wait()
        await self.release.wait()
        if self.error is not None:
            raise self.error
        return self.health


class Changes:
    """Counts on_change calls."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self) -> None:
        self.count += 1


async def running(component: Component) -> Component:
    await component.lifecycle.move(Status.STARTING, "start requested")
    await component.lifecycle.move(Status.RUNNING, "started")
    return component


def make_monitor(on_change: Changes | None = None) -> HealthMonitor:
    return HealthMonitor(interval=1.0, timeout=0.05, on_change=on_change or Changes())


async def test_a_check_that_hangs_is_unhealthy_with_a_timeout_reason() -> None:
    monitor = make_monitor()
    hangs, fine = Probe("hangs"), Probe("fine")
    hangs.hang = True
    await running(hangs)
    await running(fine)

    await monitor.check([hangs, fine])

    assert monitor.latest(hangs).state is HealthState.UNHEALTHY
    assert monitor.latest(hangs).reason == "health check timed out after 0.05s"
    assert monitor.latest(fine).state is HealthState.HEALTHY


async def test_a_check_that_raises_is_unhealthy_without_leaking_the_exception_text() -> None:
    monitor = make_monitor()
    probe = await running(Probe())
    probe.error = RuntimeError("password=hunter2 rejected by 10.0.0.7")

    with capture_logs() as logs:
        await monitor.check([probe])

    health = monitor.latest(probe)
    assert health.state is HealthState.UNHEALTHY
    assert health.reason == "health check failed: RuntimeError"
    assert "hunter2" not in repr(health)
    failed = [e for e in logs if e["event"] == "health.check_failed"]
    assert [(e["component"], e["log_level"]) for e in failed] == [("db", "error")]


async def test_a_checks_own_timeout_error_is_not_mistaken_for_the_check_timeout() -> None:
    # The check fails at once with its client's own timeout; the monitor's 5 s never expired.
    monitor = make_monitor()
    monitor.timeout = 5.0
    probe = await running(Probe())
    probe.error = TimeoutError("redis PING timed out")

    await monitor.check([probe])

    assert monitor.latest(probe).reason == "health check failed: TimeoutError", (
        "BUG core/runtime/monitor.py _check_one: a TimeoutError raised by check_health() itself is "
        "reported as 'health check timed out after <timeout>s' (and not logged); only "
        "asyncio.timeout(...).expired() means the monitor's deadline fired"
    )


async def test_results_are_cached_and_latest_does_not_run_the_check() -> None:
    monitor = make_monitor()
    probe = await running(Probe(health=Health.degraded("replica lagging")))

    await monitor.check([probe])
    readings = [monitor.latest(probe) for _ in range(3)]

    assert probe.checks == 1
    assert [h.reason for h in readings] == ["replica lagging"] * 3


async def test_a_started_component_counts_as_healthy_until_checked() -> None:
    monitor = make_monitor()
    probe = await running(Probe(health=Health.unhealthy("down")))

    monitor.record_status(probe)

    assert monitor.latest(probe).state is HealthState.HEALTHY
    assert probe.checks == 0


async def test_a_component_that_is_not_running_is_unhealthy_and_not_checked() -> None:
    monitor = make_monitor()
    probe = Probe()

    await monitor.check([probe])

    assert probe.checks == 0
    assert monitor.latest(probe).state is HealthState.UNHEALTHY
    assert monitor.latest(probe).reason == "component is STOPPED"


async def test_a_result_for_a_component_that_stopped_during_its_check_is_dropped() -> None:
    monitor = make_monitor()
    monitor.timeout = 5.0
    probe = await running(Probe())
    probe.release.clear()

    checking = asyncio.create_task(monitor.check([probe]))
    await probe.entered.wait()
    await probe.lifecycle.move(Status.STOPPING, "stop requested")
    probe.release.set()
    await checking

    assert monitor.history("db") == []
    assert monitor.latest(probe).reason == "component is STOPPING"


async def test_history_records_only_state_changes() -> None:
    changes = Changes()
    monitor = make_monitor(changes)
    states = [
        Health.healthy(),
        Health.healthy(),
        Health.degraded("slow"),
        Health.degraded("slower"),
        Health.healthy(),
    ]

    for health in states:
        monitor.record("db", health)

    assert [h.state for h in monitor.history("db")] == [
        HealthState.HEALTHY,
        HealthState.DEGRADED,
        HealthState.HEALTHY,
    ]
    assert changes.count == 3
    assert monitor.history("unknown") == []


async def test_the_latest_result_is_kept_even_when_the_state_is_unchanged() -> None:
    monitor = make_monitor()
    probe = await running(Probe())

    monitor.record("db", Health.degraded("slow"))
    monitor.record("db", Health.degraded("slower"))

    assert monitor.latest(probe).reason == "slower"
    assert [h.reason for h in monitor.history("db")] == ["slow"]


async def test_a_state_change_is_logged_with_old_and_new_state() -> None:
    monitor = make_monitor()

    with capture_logs() as logs:
        monitor.record("db", Health.healthy())
        monitor.record("db", Health.unhealthy("connection refused"))
        monitor.record("db", Health.healthy())

    assert [
        (e["log_level"], e["old"], e["new"], e["reason"])
        for e in logs
        if e["event"] == "health.changed"
    ] == [
        ("warning", "HEALTHY", "UNHEALTHY", "connection refused"),
        ("info", "UNHEALTHY", "HEALTHY", ""),
    ]


async def test_history_keeps_only_the_latest_changes() -> None:
    monitor = make_monitor()

    size = monitor_module.HISTORY_SIZE

    for i in range(size):
        monitor.record("db", Health.unhealthy(f"down {i}"))
        monitor.record("db", Health.healthy())

    history = monitor.history("db")
    assert len(history) == size
    assert history[0].reason == f"down {size // 2}"
    assert history[-1].state is HealthState.HEALTHY


async def test_overall_health_is_the_worst_with_the_reasons_pulling_it_down() -> None:
    monitor = make_monitor()

    monitor.record("db", Health.healthy())
    monitor.record("cache", Health.degraded("replica lagging"))
    monitor.record("queue", Health.unhealthy("connection refused"))
    monitor.record("queue", Health.healthy())

    overall = monitor.overall()
    assert (overall.state, overall.reason) == (HealthState.DEGRADED, "cache: replica lagging")
    assert [h.state for h in monitor.overall_history()] == [
        HealthState.HEALTHY,
        HealthState.DEGRADED,
        HealthState.UNHEALTHY,
        HealthState.DEGRADED,
    ]


async def test_record_status_follows_the_lifecycle() -> None:
    monitor = make_monitor()
    probe = Probe()

    monitor.record_status(probe)
    assert monitor.latest(probe).reason == "component is STOPPED"

    await running(probe)
    monitor.record_status(probe)
    assert monitor.latest(probe).state is HealthState.HEALTHY


async def test_a_waiter_taken_before_notify_is_set() -> None:
    feed = ChangeFeed()
    before = feed.waiter()

    feed.notify()

    assert before.is_set()
    assert not feed.waiter().is_set()


async def test_notify_wakes_every_waiter() -> None:
    feed = ChangeFeed()
    waiting = [asyncio.create_task(feed.waiter().wait()) for _ in range(2)]

    feed.notify()

    async with asyncio.timeout(5):
        assert await asyncio.gather(*waiting) == [True, True]


# -- hysteresis and checks that are slow to cancel ---------------------------------------------


def hysteresis(failures: int = 2, recoveries: int = 1) -> HealthMonitor:
    return HealthMonitor(
        interval=1.0, timeout=0.05, on_change=Changes(), failures=failures, recoveries=recoveries
    )


async def states_after(monitor: HealthMonitor, probe: Probe, results: list[Health]) -> list[str]:
    seen = []
    for health in results:
        probe.health = health
        await monitor.check([probe])
        seen.append(monitor.latest(probe).state.value)
    return seen


async def test_a_serving_component_turns_unhealthy_only_after_failures_in_a_row() -> None:
    monitor = hysteresis(failures=2)
    probe = await running(Probe())
    monitor.record_status(probe)
    ok, down = Health.healthy(), Health.unhealthy("connection refused")

    with capture_logs() as logs:
        seen = await states_after(monitor, probe, [ok, down, ok, down, down, ok])

    assert seen == ["HEALTHY", "HEALTHY", "HEALTHY", "HEALTHY", "UNHEALTHY", "HEALTHY"]
    pending = [e["checks"] for e in logs if e["event"] == "health.change_pending"]
    assert pending == ["1/2", "1/2"]


async def test_an_unhealthy_component_serves_again_only_after_recoveries_in_a_row() -> None:
    monitor = hysteresis(failures=1, recoveries=2)
    probe = await running(Probe())
    monitor.record_status(probe)
    ok, down = Health.healthy(), Health.unhealthy("connection refused")

    seen = await states_after(monitor, probe, [ok, down, ok, down, ok, ok])

    assert seen == ["HEALTHY", "UNHEALTHY", "UNHEALTHY", "UNHEALTHY", "UNHEALTHY", "HEALTHY"]


async def test_the_first_check_after_a_start_is_taken_at_once() -> None:
    monitor = hysteresis(failures=3)
    probe = await running(Probe(health=Health.unhealthy("no schema")))
    monitor.record_status(probe)

    await monitor.check([probe])

    assert monitor.latest(probe).reason == "no schema"


class SlowToCancel(Probe):
    """A check that hangs, and whose cancellation takes `cleanup` seconds more, like closing
    a connection to a server that does not answer."""

    def __init__(self, cleanup: float) -> None:
        super().__init__()
        self.cleanup = cleanup
        self.hang = True
        self.cleaned = asyncio.Event()

    async def check_health(self) -> Health:
        try:
            return await super().check_health()
        except asyncio.CancelledError:
            await asyncio.shield(asyncio.sleep(self.cleanup))
            self.cleaned.set()
            raise


async def test_a_check_slow_to_cancel_fails_within_the_timeout_and_is_not_doubled() -> None:
    monitor = hysteresis(failures=1)
    monitor.timeout = 0.1
    probe = await running(SlowToCancel(cleanup=1.0))
    monitor.record_status(probe)
    loop = asyncio.get_running_loop()

    started = loop.time()
    await monitor.check([probe])
    first = loop.time() - started
    await monitor.check([probe])  # the first is still ending: waited for, none started
    second = loop.time() - first - started

    assert monitor.latest(probe).reason == "health check timed out after 0.1s"
    assert (first < 1.0, second < 1.0) == (True, True)  # neither held by the cleanup
    assert probe.checks == 1
    await asyncio.wait_for(probe.cleaned.wait(), 5)


class Interrupted(Probe):
    def __init__(self) -> None:
        super().__init__()
        self.interrupts: list[str] = []

    def interrupt(self, health: Health) -> None:
        self.interrupts.append(health.reason)


async def test_a_component_found_unhealthy_is_interrupted_once() -> None:
    monitor = hysteresis(failures=2)
    probe = await running(Interrupted())
    monitor.record_status(probe)
    ok, down = Health.healthy(), Health.unhealthy("hung")

    await states_after(monitor, probe, [ok, down, down, down, ok, down, down])

    assert probe.interrupts == ["hung", "hung"]
