"""The container: registration, dependency-ordered start and stop, retries, summary, ready()."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

import pytest
from structlog.testing import capture_logs

from core.config import StartPolicy
from core.runtime.container import Container, RegistrationError, StartError, StopError
from core.runtime.health import Health, HealthState
from core.runtime.lifecycle import Component, FatalStartError, IllegalTransitionError, Status

FAST = StartPolicy(attempts=3, base_delay=0.01, max_delay=0.02, start_timeout=5, stop_timeout=5)

Log = list[tuple[str, str]]


class Recorder(Component):
    """Appends ("start", name) and ("stop", name) to a shared log; health is settable."""

    def __init__(
        self,
        name: str,
        log: Log,
        *,
        depends_on: Iterable[str] = (),
        groups: Iterable[str] = (),
        version: str = "0.1.0",
    ) -> None:
        self.name = name
        self.log = log
        self.depends_on = tuple(depends_on)
        self.groups = tuple(groups)
        self.version = version
        self.health = Health.healthy()
        self.start_calls = 0

    async def start(self) -> None:
        self.start_calls += 1
        self.log.append(("start", self.name))

    async def stop(self) -> None:
        self.log.append(("stop", self.name))

    async def check_health(self) -> Health:
        return self.health


class Database(Recorder):
    pass


class Cache(Recorder):
    pass


class Flaky(Recorder):
    """Fails its first `failures` starts, then starts normally."""

    def __init__(self, name: str, log: Log, *, failures: int, **kwargs: Iterable[str]) -> None:
        super().__init__(name, log, **kwargs)
        self.failures = failures

    async def start(self) -> None:
        if self.start_calls < self.failures:
            self.start_calls += 1
            raise RuntimeError(f"not yet ({self.start_calls})")
        await super().start()


class Broken(Recorder):
    """Every start fails with `error`."""

    def __init__(self, name: str, log: Log, *, error: Exception, **kwargs: Iterable[str]) -> None:
        super().__init__(name, log, **kwargs)
        self.error = error

    async def start(self) -> None:
        self.start_calls += 1
        raise self.error


class FailsToStop(Recorder):
    def __init__(self, name: str, log: Log, *, error: Exception, **kwargs: Iterable[str]) -> None:
        super().__init__(name, log, **kwargs)
        self.error = error

    async def stop(self) -> None:
        raise self.error


class Gated(Recorder):
    """Its start and stop announce themselves, then wait for the test to release them."""

    def __init__(self, name: str, log: Log, **kwargs: Iterable[str]) -> None:
        super().__init__(name, log, **kwargs)
        self.entered = asyncio.Event()
        self.release = asyncio.Event()

    async def start(self) -> None:
        self.entered.set()
        await self.release.wait()
        await super().start()

    async def stop(self) -> None:
        self.entered.set()
        await self.release.wait()
        await super().stop()


def make(*components: Component, policy: StartPolicy = FAST) -> Container:
    container = Container(policy)
    container.register(*components)
    return container


def names(components: Iterable[Component]) -> list[str]:
    return [c.name for c in components]


def edges(component: Component) -> list[tuple[Status, Status]]:
    return [(t.old, t.new) for t in component.lifecycle.history]


# -- registration --------------------------------------------------------------------------


def test_levels_follow_dependencies_whatever_the_registration_order() -> None:
    log: Log = []
    container = make(
        Recorder("api", log, depends_on=["relay", "cache"]),
        Recorder("relay", log, depends_on=["db"]),
        Recorder("cache", log),
        Recorder("db", log),
    )

    assert [set(names(level)) for level in container.levels] == [
        {"cache", "db"},
        {"relay"},
        {"api"},
    ]
    assert names(container.components)[2:] == ["relay", "api"]


def test_a_dependency_may_be_registered_in_an_earlier_call() -> None:
    log: Log = []
    container = make(Recorder("db", log))

    container.register(Recorder("relay", log, depends_on=["db"]))

    assert [names(level) for level in container.levels] == [["db"], ["relay"]]


def test_an_unknown_dependency_is_rejected_naming_it() -> None:
    container = Container(FAST)

    with pytest.raises(RegistrationError, match="'relay' depends on unknown ghost"):
        container.register(Recorder("relay", [], depends_on=["ghost"]))

    assert container.components == []


def test_a_cycle_is_rejected_naming_it() -> None:
    container = Container(FAST)

    with pytest.raises(RegistrationError, match="dependency cycle: a -> b -> a"):
        container.register(Recorder("a", [], depends_on=["b"]), Recorder("b", [], depends_on=["a"]))

    assert container.components == []


def test_a_longer_cycle_is_named_in_full() -> None:
    container = Container(FAST)

    with pytest.raises(RegistrationError, match="dependency cycle: a -> b -> c -> a"):
        container.register(
            Recorder("a", [], depends_on=["b"]),
            Recorder("b", [], depends_on=["c"]),
            Recorder("c", [], depends_on=["a"]),
        )


def test_a_component_depending_on_itself_is_a_cycle() -> None:
    with pytest.raises(RegistrationError, match="dependency cycle: a -> a"):
        make(Recorder("a", [], depends_on=["a"]))


def test_a_duplicate_name_is_rejected() -> None:
    container = make(Recorder("db", []))

    with pytest.raises(RegistrationError, match="'db' is registered twice"):
        container.register(Recorder("db", []))
    with pytest.raises(RegistrationError, match="'cache' is registered twice"):
        container.register(Recorder("cache", []), Recorder("cache", []))

    assert names(container.components) == ["db"]


def test_a_component_without_a_name_is_rejected() -> None:
    with pytest.raises(RegistrationError, match="Recorder has no name"):
        make(Recorder("", []))


async def test_registering_while_running_is_rejected() -> None:
    container = make(Recorder("db", []))

    async with container.running():
        with pytest.raises(RegistrationError, match="only be registered while stopped"):
            container.register(Recorder("cache", []))


# -- lookup --------------------------------------------------------------------------------


def test_get_finds_a_component_by_name_and_by_type() -> None:
    db, cache = Database("db", []), Cache("cache", [])
    container = make(db, cache)

    assert container.get("db") is db
    assert container.get(Database) is db
    assert container.get(Cache) is cache


def test_get_raises_lookup_error_when_missing_or_ambiguous() -> None:
    container = make(Database("db", []), Cache("cache", []))

    with pytest.raises(LookupError, match="no component named 'nope'"):
        container.get("nope")
    with pytest.raises(LookupError, match="expected one Recorder, found db, cache"):
        container.get(Recorder)
    with pytest.raises(LookupError, match="expected one Flaky, found none"):
        container.get(Flaky)


def test_group_lists_its_members_in_start_order() -> None:
    log: Log = []
    container = make(
        Recorder("relay", log, depends_on=["db"], groups=["storage", "workers"]),
        Recorder("db", log, groups=["storage"]),
        Recorder("api", log),
    )

    assert names(container.group("storage")) == ["db", "relay"]
    assert names(container.group("workers")) == ["relay"]
    assert container.group("nothing") == []


# -- starting ------------------------------------------------------------------------------


async def test_components_start_in_dependency_order() -> None:
    log: Log = []
    container = make(
        Recorder("api", log, depends_on=["relay", "cache"]),
        Recorder("relay", log, depends_on=["db"]),
        Recorder("cache", log),
        Recorder("db", log),
    )

    await container.start()

    assert set(log[:2]) == {("start", "db"), ("start", "cache")}
    assert log[2:] == [("start", "relay"), ("start", "api")]
    assert container.lifecycle.status is Status.RUNNING
    assert {c.status for c in container.components} == {Status.RUNNING}
    await container.stop()


async def test_independent_components_of_one_level_start_in_parallel() -> None:
    entered = {"left": asyncio.Event(), "right": asyncio.Event()}

    class Rendezvous(Component):
        """Starts only once the other one has entered its own start()."""

        def __init__(self, name: str, other: str) -> None:
            self.name, self.other = name, other

        async def start(self) -> None:
            entered[self.name].set()
            await entered[self.other].wait()

    # Started one after the other, the first would wait forever and hit the start timeout.
    policy = StartPolicy(attempts=1, start_timeout=5)
    container = make(Rendezvous("left", "right"), Rendezvous("right", "left"), policy=policy)

    await container.start()

    assert container.lifecycle.status is Status.RUNNING
    await container.stop()


async def test_a_dependent_waits_until_its_dependency_is_running() -> None:
    log: Log = []
    db = Gated("db", log)
    relay = Recorder("relay", log, depends_on=["db"])
    container = make(db, relay)

    starting = asyncio.create_task(container.start())
    await db.entered.wait()
    assert (db.status, relay.status) == (Status.STARTING, Status.STOPPED)

    db.release.set()
    await starting

    assert log == [("start", "db"), ("start", "relay")]
    await container.stop()


async def test_a_failing_start_is_retried_until_it_succeeds() -> None:
    flaky = Flaky("db", [], failures=2)
    container = make(flaky, policy=StartPolicy(attempts=3, base_delay=0.01, max_delay=0.02))

    with capture_logs() as logs:
        await container.start()

    assert flaky.status is Status.RUNNING
    assert [(t.new, t.cause) for t in flaky.lifecycle.history] == [
        (Status.STARTING, "start requested"),
        (Status.ERROR, "RuntimeError: not yet (1)"),
        (Status.STARTING, "retry 2/3"),
        (Status.ERROR, "RuntimeError: not yet (2)"),
        (Status.STARTING, "retry 3/3"),
        (Status.RUNNING, "started"),
    ]
    retries = [e for e in logs if e["event"] == "retry.scheduled"]
    assert [(e["operation"], e["component"], e["attempt"], e["log_level"]) for e in retries] == [
        ("component.start", "db", 1, "warning"),
        ("component.start", "db", 2, "warning"),
    ]
    assert all(0 < e["delay_s"] <= 0.02 for e in retries)
    await container.stop()


async def test_a_final_start_failure_stops_what_started_in_reverse_order() -> None:
    log: Log = []
    broken = Broken("broken", log, error=RuntimeError("disk on fire"), depends_on=["relay"])
    container = make(
        Recorder("db", log),
        Recorder("cache", log),
        Recorder("relay", log, depends_on=["db"]),
        broken,
    )

    with pytest.raises(StartError, match=r"^broken: RuntimeError: disk on fire$") as caught:
        await container.start()

    assert caught.value.__cause__ is broken.error
    assert broken.start_calls == FAST.attempts
    stops = log[3:]
    assert stops[0] == ("stop", "relay")
    assert set(stops[1:]) == {("stop", "db"), ("stop", "cache")}
    assert broken.status is Status.ERROR
    assert {c.status for c in container.components if c is not broken} == {Status.STOPPED}
    assert container.lifecycle.status is Status.ERROR
    assert (
        container.lifecycle.history[-1].cause == "start failed: broken: RuntimeError: disk on fire"
    )


async def test_a_fatal_start_error_is_not_retried() -> None:
    port = Broken("port", [], error=FatalStartError("address in use"))
    container = make(port)

    with pytest.raises(StartError, match="port: FatalStartError: address in use"):
        await container.start()

    assert port.start_calls == 1
    assert edges(port) == [(Status.STOPPED, Status.STARTING), (Status.STARTING, Status.ERROR)]
    assert container.lifecycle.status is Status.ERROR


async def test_a_start_that_hangs_times_out() -> None:
    class Hangs(Component):
        name = "hang"

        async def start(self) -> None:
            await asyncio.Event().wait()

    hangs = Hangs()
    container = make(hangs, policy=StartPolicy(attempts=1, start_timeout=0.05))

    with pytest.raises(StartError, match=r"hang: start timed out after 0\.05s"):
        await container.start()

    assert hangs.status is Status.ERROR
    assert container.lifecycle.status is Status.ERROR


async def test_a_components_own_timeout_error_is_not_mistaken_for_the_start_timeout() -> None:
    # A driver's own connect timeout fails at once; the 5 s start timeout never expired.
    db = Broken("db", [], error=TimeoutError("connect to db:5432 timed out"))
    container = make(db, policy=StartPolicy(attempts=1, start_timeout=5))

    with pytest.raises(StartError) as caught:
        await container.start()

    assert str(caught.value) == "db: TimeoutError: connect to db:5432 timed out", (
        "BUG core/runtime/container.py _start_one: any TimeoutError raised by start() is "
        "reported as "
        "'start timed out after <start_timeout>s' and its own message is lost; only "
        "asyncio.timeout(...).expired() means the container's deadline fired"
    )


async def test_cancelling_a_start_stops_what_started() -> None:
    log: Log = []
    db, relay = Recorder("db", log), Gated("relay", log, depends_on=["db"])
    container = make(db, relay)

    starting = asyncio.create_task(container.start())
    await relay.entered.wait()
    starting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await starting

    assert log == [("start", "db"), ("stop", "db")]
    assert (db.status, relay.status) == (Status.STOPPED, Status.ERROR)
    assert relay.lifecycle.history[-1].cause == "start cancelled"
    assert container.lifecycle.status is Status.ERROR
    assert container.lifecycle.history[-1].cause == "start failed: cancelled"


async def test_starting_a_running_container_is_illegal() -> None:
    container = make(Recorder("db", []))

    async with container.running():
        with pytest.raises(IllegalTransitionError):
            await container.start()


async def test_the_container_can_be_restarted_after_a_failed_start() -> None:
    log: Log = []
    flaky = Flaky("relay", log, failures=1, depends_on=["db"])
    container = make(Recorder("db", log), flaky, policy=StartPolicy(attempts=1))

    with pytest.raises(StartError):
        await container.start()
    assert container.lifecycle.status is Status.ERROR

    await container.start()

    assert container.lifecycle.status is Status.RUNNING
    assert {c.status for c in container.components} == {Status.RUNNING}
    assert log == [("start", "db"), ("stop", "db"), ("start", "db"), ("start", "relay")]
    await container.stop()
    assert container.lifecycle.status is Status.STOPPED


# -- stopping ------------------------------------------------------------------------------


async def test_stop_runs_in_reverse_dependency_order() -> None:
    log: Log = []
    container = make(
        Recorder("db", log),
        Recorder("relay", log, depends_on=["db"]),
        Recorder("api", log, depends_on=["relay"]),
    )
    await container.start()
    log.clear()

    await container.stop()

    assert log == [("stop", "api"), ("stop", "relay"), ("stop", "db")]
    assert container.lifecycle.status is Status.STOPPED
    assert {c.status for c in container.components} == {Status.STOPPED}


async def test_a_dependency_stops_only_after_its_dependents_have_stopped() -> None:
    log: Log = []
    db = Recorder("db", log)
    api = Gated("api", log, depends_on=["db"])
    container = make(db, api)
    api.release.set()
    await container.start()
    api.entered.clear()
    api.release.clear()

    stopping = asyncio.create_task(container.stop())
    await api.entered.wait()
    assert (api.status, db.status) == (Status.STOPPING, Status.RUNNING)

    api.release.set()
    await stopping

    assert log[-2:] == [("stop", "api"), ("stop", "db")]


async def test_a_failing_stop_does_not_prevent_the_others_and_every_failure_is_listed() -> None:
    log: Log = []
    container = make(
        Recorder("db", log),
        FailsToStop("cache", log, error=OSError("socket gone")),
        FailsToStop("relay", log, error=RuntimeError("flush failed"), depends_on=["db"]),
        Recorder("api", log, depends_on=["relay"]),
    )
    await container.start()

    with pytest.raises(StopError) as caught:
        await container.stop()

    message = str(caught.value)
    assert "relay: RuntimeError: flush failed" in message
    assert "cache: OSError: socket gone" in message
    assert ("stop", "api") in log
    assert ("stop", "db") in log
    statuses = {c.name: c.status for c in container.components}
    assert statuses == {
        "db": Status.STOPPED,
        "cache": Status.ERROR,
        "relay": Status.ERROR,
        "api": Status.STOPPED,
    }
    assert container.lifecycle.status is Status.ERROR


async def test_a_stop_that_hangs_times_out() -> None:
    class HangsOnStop(Recorder):
        async def stop(self) -> None:
            await asyncio.Event().wait()

    log: Log = []
    container = make(
        Recorder("db", log),
        HangsOnStop("relay", log, depends_on=["db"]),
        policy=StartPolicy(attempts=1, stop_timeout=0.05),
    )
    await container.start()

    with pytest.raises(StopError, match=r"relay: stop timed out after 0\.05s"):
        await container.stop()

    assert container.get("relay").status is Status.ERROR
    assert container.get("db").status is Status.STOPPED
    assert container.lifecycle.status is Status.ERROR


async def test_a_components_own_timeout_error_is_not_mistaken_for_the_stop_timeout() -> None:
    container = make(FailsToStop("db", [], error=TimeoutError("flush timed out")))
    await container.start()

    with pytest.raises(StopError) as caught:
        await container.stop()

    assert str(caught.value) == "db: TimeoutError: flush timed out", (
        "BUG core/runtime/container.py _stop_one: any TimeoutError raised by stop() is reported as "
        "'stop timed out after <stop_timeout>s'; only asyncio.timeout(...).expired() means "
        "the container's deadline fired"
    )


async def test_the_container_can_be_restarted_after_a_failed_stop() -> None:
    log: Log = []
    container = make(Recorder("db", log), FailsToStop("cache", log, error=OSError("socket gone")))
    await container.start()
    with pytest.raises(StopError):
        await container.stop()

    await container.start()

    assert container.lifecycle.status is Status.RUNNING
    assert {c.status for c in container.components} == {Status.RUNNING}
    with pytest.raises(StopError, match="cache: OSError: socket gone"):
        await container.stop()


async def test_stopping_a_container_that_is_not_running_does_nothing() -> None:
    log: Log = []
    container = make(Recorder("db", log))

    await container.stop()

    assert log == []
    assert container.lifecycle.status is Status.STOPPED
    assert list(container.lifecycle.history) == []


async def test_running_stops_the_container_even_when_the_block_raises() -> None:
    log: Log = []
    container = make(Recorder("db", log))

    seen: list[Status] = []

    async def use_and_fail() -> None:
        async with container.running():
            seen.append(container.lifecycle.status)
            raise ValueError("in the block")

    with pytest.raises(ValueError, match="in the block"):
        await use_and_fail()

    assert seen == [Status.RUNNING]
    assert log == [("start", "db"), ("stop", "db")]
    assert container.lifecycle.status is Status.STOPPED


# -- summary and readiness -----------------------------------------------------------------


async def test_summary_describes_every_component_while_running() -> None:
    log: Log = []
    container = make(
        Recorder("db", log, version="2.1.0", groups=["storage"]),
        Recorder("relay", log, depends_on=["db"]),
    )

    async with container.running():
        summary = container.summary()

    assert summary.status is Status.RUNNING
    assert (summary.health.state, summary.health.reason) == (HealthState.HEALTHY, "")
    assert summary.score == 100
    assert summary.uptime > 0
    assert summary.healthy_components == 2
    db, relay = summary.components
    assert (db.name, db.version, db.status, db.groups) == (
        "db",
        "2.1.0",
        Status.RUNNING,
        ("storage",),
    )
    assert (relay.name, relay.depends_on, relay.version) == ("relay", ("db",), "0.1.0")
    assert db.health.state is HealthState.HEALTHY
    assert db.uptime > 0
    assert [(t.old, t.new) for t in db.transitions] == [
        (Status.STOPPED, Status.STARTING),
        (Status.STARTING, Status.RUNNING),
    ]
    assert db.health_history[-1].state is HealthState.HEALTHY
    assert [t.cause for t in summary.transitions] == ["start requested", "all components running"]
    assert summary.health_history[-1].state is HealthState.HEALTHY


async def test_summary_scores_the_average_and_reports_the_worst_health() -> None:
    log: Log = []
    db, cache = Recorder("db", log), Recorder("cache", log)
    container = make(db, cache)

    async with container.running():
        cache.health = Health.degraded("replica lagging")
        await container.monitor.check(container.components)
        summary = container.summary()

    assert summary.health.state is HealthState.DEGRADED
    assert summary.health.reason == "cache: replica lagging"
    assert [h.state for h in summary.health_history][-1] is HealthState.DEGRADED
    assert summary.score == 75
    assert summary.healthy_components == 1
    assert summary.components[1].health.reason == "replica lagging"


async def test_summary_of_a_stopped_container() -> None:
    container = make(Recorder("db", []))
    async with container.running():
        pass

    summary = container.summary()

    assert summary.status is Status.STOPPED
    assert summary.uptime == 0.0
    assert summary.health.state is HealthState.UNHEALTHY
    assert summary.health.reason == "db: component is STOPPED"
    assert summary.score == 0
    (db,) = summary.components
    assert (db.status, db.uptime, db.health.reason) == (Status.STOPPED, 0.0, "component is STOPPED")


async def test_ready_only_while_running_and_no_chosen_component_is_unhealthy() -> None:
    log: Log = []
    db, cache = Recorder("db", log), Recorder("cache", log)
    container = make(db, cache)
    assert not container.ready()

    await container.start()
    assert container.ready()

    cache.health = Health.degraded("slow")
    await container.monitor.check(container.components)
    assert container.ready()

    cache.health = Health.unhealthy("connection refused")
    await container.monitor.check(container.components)
    assert container.ready()  # one failed check is not yet an outage (the hysteresis)
    await container.monitor.check(container.components)
    assert not container.ready()
    assert not container.ready(["db", "cache"])
    assert container.ready(["db"])
    with pytest.raises(LookupError):
        container.ready(["ghost"])

    await container.stop()
    assert not container.ready(["db"])


async def test_the_background_monitor_feeds_ready_and_the_change_feed() -> None:
    db = Recorder("db", [])
    container = Container(FAST, health_interval=0.01, health_timeout=1)
    container.register(db)
    await container.start()

    db.health = Health.unhealthy("connection refused")
    async with asyncio.timeout(5):
        while True:
            changed = container.changes.waiter()  # taken before reading: no change is missed
            if not container.ready():
                break
            await changed.wait()

    assert container.monitor.latest(db).reason == "connection refused"
    await container.stop()
