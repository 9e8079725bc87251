"""System events (core.events.notices) on a real bus, SQL and Redis: dead letters,
components turning UNHEALTHY and recovering, breakers opening and closing; one event per
transition, however often the state is seen again."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import grpc
import pytest
from google.protobuf.message import Message

from core.calls.breaker import BreakerState, breaker_for, forget_breakers
from core.events import event_bus
from core.events.bus import EventBus
from core.events.model import CaughtUp, Delivery, Event, Selector, State
from core.events.notices import SystemNotices
from core.runtime.container import Container
from core.runtime.health import Health
from core.runtime.host import container_for
from core.runtime.lifecycle import Component
from mesh.events.v1 import events_pb2 as pb
from tests.integration._events import drop_namespace, event, events_settings, eventually

SYSTEM = Selector(("mesh.system.v1.*",))
M = TypeVar("M", bound=Message)


class Flaky(Component):
    """A component whose health the test sets."""

    name = "flaky"

    def __init__(self) -> None:
        self.health = Health.healthy()

    async def check_health(self) -> Health:
        return self.health


@dataclass
class Process:
    container: Container
    bus: EventBus
    flaky: Flaky

    async def check(self, times: int = 3) -> None:
        """Runs the health checks `times` times (besides the monitor's own runs)."""
        for _ in range(times):
            await self.container.monitor.check(self.container.components)

    async def announced(self, subject_prefix: str) -> list[Event]:
        """The system events stored about `subject_prefix...`, once every queued one is."""
        notices = self.container.get(SystemNotices)

        async def drained() -> None:
            assert notices.waiting == 0

        await eventually(drained)
        found: list[Event] = []  # what a subscriber of mesh.system.v1.* receives
        async with asyncio.timeout(10), aclosing(self.bus.subscribe(SYSTEM, "")) as stream:
            async for item in stream:
                if isinstance(item, CaughtUp):
                    break
                if isinstance(item, Event) and item.subject.startswith(subject_prefix):
                    found.append(item)
        return found


@pytest.fixture(params=["sql", "redis"])
async def process(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Process]:
    settings = events_settings(request.param, tmp_path, visibility=0.3, max_attempts=1)
    container = container_for(settings)
    bus = event_bus(container, settings, serving=True)
    flaky = Flaky()
    container.register(flaky)
    try:
        async with container.running():
            yield Process(container, bus, flaky)
    finally:
        await drop_namespace(settings.cache_namespace)


def data(found: Event, kind: type[M]) -> M:
    """The event's data, unpacked as `kind`."""
    message = kind()
    assert found.data.Unpack(message)
    return message


async def test_each_dead_letter_is_announced_once(process: Process) -> None:
    bus = process.bus
    await bus.publish([event(id="parked"), event(id="spent"), event(id="held")])
    stream = bus.consume("workers", "w", Selector(("mesh.test.v1.*",)), "", max_unacked=10)
    async with aclosing(stream):
        got: list[str] = []
        async with asyncio.timeout(10):
            async for item in stream:
                if isinstance(item, Delivery):
                    got.append(item.event.id)
                if len(got) == 3:
                    break
        await bus.nack("workers", "parked", delay=0, park=True, error="no such customer")
        await bus.nack("workers", "spent", delay=0, park=False, error="flaky")  # last attempt
        again = await bus.nack("workers", "parked", delay=0, park=True, error="still no")

        async def held_timed_out() -> None:  # dead-lettered by a claim of this member
            await asyncio.sleep(0)
            _, [status] = await bus.event_status("held")
            assert status.state == State.DEAD_LETTERED

        async def claim_on() -> None:  # the member goes on claiming, as a consumer does
            async for _ in stream:
                pass

        member = asyncio.create_task(claim_on())
        try:
            await eventually(held_timed_out)
        finally:
            member.cancel()
            await asyncio.gather(member, return_exceptions=True)

    found = await process.announced("groups/workers/")
    assert again == State.DEAD_LETTERED
    assert sorted(e.subject for e in found) == [
        f"groups/workers/events/{i}" for i in ("held", "parked", "spent")
    ]
    assert {e.type for e in found} == {"mesh.system.v1.event_dead_lettered"}
    parked = data(next(e for e in found if e.subject.endswith("parked")), pb.DeadLetterNotice)
    assert (parked.event_id, parked.event_type) == ("parked", "mesh.test.v1.thing.done")
    assert (parked.attempts, parked.reason) == (1, pb.DELIVERY_END_REASON_NACKED)
    assert parked.message == "no such customer"
    held = data(next(e for e in found if e.subject.endswith("held")), pb.DeadLetterNotice)
    assert held.reason == pb.DELIVERY_END_REASON_TIMED_OUT


async def test_a_component_is_announced_unhealthy_and_recovered_once_per_turn(
    process: Process,
) -> None:
    process.flaky.health = Health.unhealthy("disk full")
    await process.check()
    process.flaky.health = Health.degraded("disk nearly full")
    await process.check()
    process.flaky.health = Health.healthy()
    await process.check()
    process.flaky.health = Health.unhealthy("disk full again")
    await process.check()

    found = await process.announced("components/flaky")
    assert [e.type.rpartition(".")[2] for e in found] == [
        "component_unhealthy",
        "component_recovered",
        "component_unhealthy",
    ]
    first, recovered, _ = (data(e, pb.ComponentHealthNotice) for e in found)
    assert (first.component, first.state, first.previous_state) == (
        "flaky",
        "UNHEALTHY",
        "HEALTHY",
    )
    assert first.reason == "disk full"
    assert (recovered.state, recovered.previous_state) == ("DEGRADED", "UNHEALTHY")


async def test_a_breaker_is_announced_open_and_closed_once_per_turn(process: Process) -> None:
    target = f"dns:///test-{uuid.uuid4().hex[:8]}:50051"
    breaker = breaker_for(target, failures_to_open=2, reset=0.05)

    async def half_open() -> None:
        await asyncio.sleep(0)
        assert breaker.state is BreakerState.HALF_OPEN

    try:
        for _ in range(2):
            breaker.record(grpc.StatusCode.UNAVAILABLE)
        for code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.OK):  # a failed trial first
            await eventually(half_open)
            breaker.check()
            breaker.record(code)
        assert breaker.state is BreakerState.CLOSED
        assert breaker.opened == 2
        found = await process.announced(f"breakers/{target}")
    finally:
        forget_breakers()

    assert [e.type for e in found] == [
        "mesh.system.v1.breaker_opened",
        "mesh.system.v1.breaker_closed",
    ]
    opened, closed = (data(e, pb.BreakerNotice) for e in found)
    assert (opened.target, opened.state, opened.failures) == (target, "open", 2)
    assert (closed.state, closed.failures) == ("closed", 0)
    assert {e.source for e in found} == {"mesh"}
