"""In-process event handlers on a real bus (SQLite and Redis Streams)."""

from __future__ import annotations

import asyncio
import random
from collections import defaultdict
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from core.data.database import Database
from core.data.revisions import CORE_MIGRATIONS
from core.errors import InvalidArgumentError
from core.events.bus import EventBus
from core.events.failures import EndReason
from core.events.handlers import EventHandler
from core.events.model import Event, Policy
from core.events.sql import SqlEventStore
from core.runtime.container import Container
from tests.conftest import FAST
from tests.integration._events import REDIS_URL, drop_namespace, event, eventually


class Recorder(EventHandler):
    group = "recorder"
    types = ("mesh.test.v1.*",)
    backoff = 0.01
    timeout = 1.0

    def __init__(self, bus: EventBus, fail: dict[str, int] | None = None) -> None:
        super().__init__(bus)
        self.seen: dict[str, list[str]] = defaultdict(list)
        self.cleaned: list[tuple[str, str]] = []
        self.fail = fail or {}  # event id -> failures before success
        self.running = 0
        self.most_running = 0

    async def validate(self, event: Event) -> None:
        if event.attributes.get("bad"):
            raise InvalidArgumentError("bad event")

    async def process(self, event: Event) -> None:
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        try:
            await asyncio.sleep(random.uniform(0, 0.005))
            if event.attributes.get("hang"):
                await asyncio.sleep(60)
            if self.fail.get(event.id, 0) > 0:
                self.fail[event.id] -= 1
                raise RuntimeError(f"flaky {event.id}")
            self.seen[event.subject].append(event.id)
        finally:
            self.running -= 1

    async def cleanup(self, event: Event, error: BaseException | None) -> None:
        self.cleaned.append((event.id, type(error).__name__ if error else ""))


@pytest.fixture(params=["sql", "redis"])
async def bus(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[EventBus]:
    container = Container(FAST)
    if request.param == "sql":
        db = Database(
            f"sqlite+aiosqlite:///{tmp_path / 'h.db'}", migrations=[CORE_MIGRATIONS], migrate=True
        )
        bus = EventBus(SqlEventStore(db), depends_on=("database",), policy=Policy(visibility=5))
        container.register(db, bus)
        namespace = ""
    else:
        from core.events.redis import RedisEventStore

        namespace = f"test-{random.getrandbits(48):x}"
        store = RedisEventStore(REDIS_URL, namespace=namespace)
        bus = EventBus(store, policy=Policy(visibility=5))
        container.register(bus)
    try:
        async with container.running():
            yield bus
    finally:
        if namespace:
            await drop_namespace(namespace)


async def test_events_of_one_subject_are_processed_in_order(bus: EventBus) -> None:
    handler = Recorder(bus)
    await handler.start()
    try:
        published = [
            event(id=f"s{s}-{i}", subject=f"things/{s}") for i in range(20) for s in range(5)
        ]
        for start in range(0, len(published), 7):
            await bus.publish(published[start : start + 7])

        async def all_seen() -> None:
            assert sum(len(ids) for ids in handler.seen.values()) == 100

        await eventually(all_seen)
        for s in range(5):
            assert handler.seen[f"things/{s}"] == [f"s{s}-{i}" for i in range(20)]
        assert handler.most_running > 1  # subjects ran side by side
    finally:
        await handler.stop()


async def test_a_failing_event_is_retried_then_dead_lettered(bus: EventBus) -> None:
    handler = Recorder(bus, fail={"flaky": 2, "broken": 99})
    await handler.start()
    try:
        with capture_logs() as logs:
            await bus.publish(
                [event(id="flaky"), event(id="broken"), event(id="bad", attributes={"bad": "1"})]
            )

            async def settled() -> None:
                assert {i for i, _ in handler.cleaned} == {"flaky", "broken", "bad"}

            await eventually(settled)
        retries = [
            (e["operation"], e["group"], e["id"], e["attempt"])
            for e in logs
            if e["event"] == "retry.scheduled"
        ]
        assert sorted(retries) == [  # three tries each, the third not followed by a retry
            ("event.process", "recorder", "broken", 1),
            ("event.process", "recorder", "broken", 2),
            ("event.process", "recorder", "flaky", 1),
            ("event.process", "recorder", "flaky", 2),
        ]
        assert dict(handler.cleaned) == {
            "flaky": "",
            "broken": "RuntimeError",
            "bad": "InvalidArgumentError",
        }
        letters = await bus.dead_letters("recorder", "", 10)
        errors = {e.id: (s.errors[-1].message, s.errors[-1].reason) for e, s in letters}
        assert errors == {
            "broken": ("RuntimeError: flaky broken", EndReason.HANDLER_FAILED),
            "bad": ("rejected: InvalidArgumentError: bad event", EndReason.HANDLER_FAILED),
        }
        assert (handler.processed, handler.dead_lettered) == (1, 2)
    finally:
        await handler.stop()


async def test_a_try_past_the_timeout_counts_as_a_failure(bus: EventBus) -> None:
    handler = Recorder(bus)
    handler.timeout, handler.attempts = 0.05, 2
    await handler.start()
    try:
        await bus.publish([event(id="stuck", attributes={"hang": "1"})])

        async def dead() -> None:
            assert handler.cleaned == [("stuck", "TimeoutError")]

        await eventually(dead)
    finally:
        await handler.stop()


async def test_stopping_finishes_running_events_and_gives_back_the_rest(bus: EventBus) -> None:
    handler = Recorder(bus)
    started = asyncio.Event()
    release = asyncio.Event()

    async def slow(event: Event) -> None:
        started.set()
        await release.wait()
        handler.seen[event.subject].append(event.id)

    handler.process = slow  # type: ignore[method-assign]
    await handler.start()
    await bus.publish([event(id="first", subject="one"), event(id="second", subject="one")])
    async with asyncio.timeout(10):
        await started.wait()
    stopping = asyncio.create_task(handler.stop())
    await asyncio.sleep(0.05)
    release.set()
    await stopping
    assert handler.seen["one"] == ["first"]  # finished and acked; "second" was given back
    _, first = await bus.event_status("first")
    _, second = await bus.event_status("second")
    assert first[0].state.name == "ACKED"
    assert second[0].state.name in ("RETRYING", "PENDING")

    again = Recorder(bus)
    await again.start()
    try:

        async def redelivered() -> None:
            assert again.seen["one"] == ["second"]

        await eventually(redelivered)
    finally:
        await again.stop()


async def test_a_registered_handler_starts_after_the_bus_and_stops_before_it(
    tmp_path: Path,
) -> None:
    db = Database(
        f"sqlite+aiosqlite:///{tmp_path / 'h.db'}", migrations=[CORE_MIGRATIONS], migrate=True
    )
    bus = EventBus(SqlEventStore(db), depends_on=("database",))
    handler = Recorder(bus)
    container = Container(FAST)
    container.register(db, bus, handler)
    assert [[c.name for c in level] for level in container.levels] == [
        ["database"],
        ["event-bus"],
        ["handler:recorder"],
    ]
    async with container.running():
        await bus.publish([event(id="one")])

        async def seen() -> None:
            assert handler.processed == 1

        await eventually(seen)
