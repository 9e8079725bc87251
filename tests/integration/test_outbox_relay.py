"""The outbox relay, in-process, on SQLite and PostgreSQL: committed outbox rows reach the bus.

Each test builds a fresh database with core's migrations, an EventBus on the SQL event
store of that database, and one or more OutboxRelay components, started and stopped by
hand. What "arrived" is what a subscriber of the bus (from the beginning) received and
what the event store holds; a publish callable wrapped around `bus.publish` fails or
"crashes" on purpose. Waits are bounded polling loops.
"""

from __future__ import annotations

import asyncio
import contextlib
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pytest
import sqlalchemy as sa
from google.protobuf.wrappers_pb2 import StringValue
from structlog.testing import capture_logs

from core.data.database import Database
from core.data.revisions import CORE_MIGRATIONS
from core.errors import UnavailableError
from core.events.bus import EventBus
from core.events.model import Appended, Event, HistoryQuery, Selector
from core.events.outbox import emit, outbox
from core.events.relay import OutboxRelay
from core.events.sql import SqlEventStore
from core.runtime.health import HealthState
from core.runtime.lifecycle import Component

T = TypeVar("T")

TYPE = "mesh.tests.v1.thing.changed"
SOURCE = "mesh.tests.v1"
WITHIN = 15.0  # seconds any awaited condition may take
Publish = Callable[[Sequence[Event]], Awaitable[list[Appended]]]


class RelayCrashError(Exception):
    """Stands in for a process dying between publishing a batch and marking it sent."""


# -- building blocks -------------------------------------------------------------------------


@asynccontextmanager
async def started(*components: Component) -> AsyncIterator[None]:
    """Starts `components` in order; stops them in reverse order however the block ends."""
    async with contextlib.AsyncExitStack() as stack:
        for component in components:
            await component.start()
            stack.push_async_callback(component.stop)
        yield


def relay_of(db: Database, publish: Publish, *, batch: int = 200) -> OutboxRelay:
    return OutboxRelay(db, publish, depends_on=("database", "event-bus"), batch=batch)


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    database = Database(database_url, migrations=[CORE_MIGRATIONS], migrate=True)
    async with started(database):
        yield database


@pytest.fixture
async def bus(db: Database) -> AsyncIterator[EventBus]:
    event_bus = EventBus(SqlEventStore(db), depends_on=("database",))
    async with started(event_bus):
        yield event_bus


@dataclass
class Arrivals:
    """Every event a subscriber of the bus receives, from the first stored one."""

    bus: EventBus
    events: list[Event] = field(default_factory=list)
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def follow(self) -> None:
        async for item in self.bus.subscribe(Selector(), ""):
            if isinstance(item, Event):
                async with self.changed:
                    self.events.append(item)
                    self.changed.notify_all()

    @property
    def ids(self) -> list[str]:
        return [e.id for e in self.events]

    async def wait_for(self, count: int) -> list[str]:
        """The ids received once at least `count` arrived (fails after WITHIN seconds)."""
        try:
            async with asyncio.timeout(WITHIN), self.changed:
                await self.changed.wait_for(lambda: len(self.events) >= count)
        except TimeoutError:
            raise AssertionError(f"{len(self.events)} of {count} events arrived") from None
        return self.ids


@pytest.fixture
async def arrivals(bus: EventBus) -> AsyncIterator[Arrivals]:
    found = Arrivals(bus)
    task = asyncio.create_task(found.follow())
    try:
        yield found
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def commit(db: Database, count: int = 1, *, per_transaction: int = 1) -> list[str]:
    """`count` transactions, each emitting `per_transaction` events; returns their ids."""
    ids: list[str] = []
    for _ in range(count):
        async with db.transaction() as tx:
            for _ in range(per_transaction):
                data = StringValue(value=f"change {len(ids)}")
                ids.append(await emit(tx, type=TYPE, source=SOURCE, subject="things/1", data=data))
    return ids


async def stored_ids(bus: EventBus) -> list[str]:
    """Every event the store holds, in position order."""
    return [e.id for e in await bus.history(HistoryQuery(Selector()), "", 10_000)]


async def outbox_rows(db: Database) -> list[tuple[str, bool]]:
    """(event id, marked sent) of every outbox row, in position order."""
    query = sa.select(outbox.c.event_id, outbox.c.sent_time).order_by(outbox.c.position)
    async with db.connect(autocommit=True) as conn:
        return [(row.event_id, row.sent_time is not None) for row in await conn.execute(query)]


async def until(check: Callable[[], Awaitable[T]], what: str) -> T:
    """Polls `check` until it returns a truthy value, within WITHIN seconds."""
    try:
        async with asyncio.timeout(WITHIN):
            while True:
                if result := await check():
                    return result
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"never: {what}") from None


def holds(predicate: Callable[[], bool]) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return predicate()

    return check


async def relayed_all(relay: OutboxRelay) -> None:
    async def empty() -> bool:
        return await relay.backlog() == 0

    await until(empty, "the outbox is empty")


# -- in order, committed only ----------------------------------------------------------------


async def test_committed_changes_arrive_once_in_commit_order_and_rows_are_marked_sent(
    db: Database, bus: EventBus, arrivals: Arrivals
) -> None:
    before = await commit(db, 5)  # waiting before the relay starts
    relay = relay_of(db, bus.publish, batch=7)  # several rounds, batches across transactions
    async with started(relay):
        during = await commit(db, 4, per_transaction=3)
        during += await commit(db, 6)
        expected = before + during
        assert await arrivals.wait_for(len(expected)) == expected
        await relayed_all(relay)
        assert relay.relayed == len(expected)
        assert relay.leader

    assert await stored_ids(bus) == expected
    assert await outbox_rows(db) == [(event_id, True) for event_id in expected]
    [first] = [e for e in arrivals.events if e.id == expected[0]]
    assert (first.type, first.source, first.subject) == (TYPE, SOURCE, "things/1")
    value = StringValue()
    assert first.data.Unpack(value)
    assert value.value == "change 0"


async def test_a_rolled_back_transaction_never_arrives(
    db: Database, bus: EventBus, arrivals: Arrivals
) -> None:
    rolled_back: list[str] = []

    async def emit_then_fail() -> None:
        async with db.transaction() as tx:
            data = StringValue(value="never")
            rolled_back.append(await emit(tx, type=TYPE, source=SOURCE, subject="x", data=data))
            raise RelayCrashError("the unit of work failed after emitting")

    relay = relay_of(db, bus.publish)
    async with started(relay):
        first = await commit(db)
        with pytest.raises(RelayCrashError):
            await emit_then_fail()
        last = await commit(db)
        assert await arrivals.wait_for(2) == first + last
        await relayed_all(relay)

    assert await stored_ids(bus) == first + last
    assert await bus.event_status(rolled_back[0]) == (None, [])
    assert [event_id for event_id, _ in await outbox_rows(db)] == first + last


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)  # SQLite: one writer
async def test_an_event_that_commits_after_a_later_position_still_arrives(
    db: Database, bus: EventBus, arrivals: Arrivals
) -> None:
    """Positions are handed out at insert, so a transaction may commit after a later one."""
    relay = relay_of(db, bus.publish)
    async with started(relay):
        async with db.transaction() as slow:
            early = await emit(slow, type=TYPE, source=SOURCE, subject="a", data=StringValue())
            quick = await commit(db)  # a later position, committed first
            assert await arrivals.wait_for(1) == quick
        assert await arrivals.wait_for(2) == [*quick, early]  # in commit order
        await relayed_all(relay)

    assert await stored_ids(bus) == [*quick, early]


# -- a crash between publishing and marking sent ---------------------------------------------


@dataclass
class CrashingPublish:
    """Publishes, then raises once, as if the process died before marking the rows sent.

    With `dies`, every later call fails before publishing: the crashed relay is gone.
    """

    publish: Publish
    dies: bool = False
    crashed: list[str] = field(default_factory=list)  # the ids of the crashed batch
    results: list[list[Appended]] = field(default_factory=list)

    async def __call__(self, batch: Sequence[Event]) -> list[Appended]:
        if self.crashed and self.dies:
            raise RelayCrashError("this relay is dead")
        results = await self.publish(batch)
        self.results.append(results)
        if not self.crashed:
            self.crashed = [r.id for r in results]
            raise RelayCrashError("crashed between publishing and marking sent")
        return results


async def test_a_relay_that_crashed_after_publishing_republishes_each_event_once(
    db: Database, bus: EventBus, arrivals: Arrivals
) -> None:
    """The same relay retries the batch: the store dedupes it by event id."""
    expected = await commit(db, 12)
    publish = CrashingPublish(bus.publish)
    relay = relay_of(db, publish, batch=5)
    async with started(relay):
        expected += await commit(db, 3)
        assert await arrivals.wait_for(len(expected)) == expected
        await relayed_all(relay)

    assert publish.crashed == expected[:5]
    retried = publish.results[1]
    assert [(r.id, r.duplicate) for r in retried] == [(i, True) for i in expected[:5]]
    assert await stored_ids(bus) == expected
    assert arrivals.ids == expected  # no second delivery to the subscriber either
    assert await outbox_rows(db) == [(event_id, True) for event_id in expected]


async def test_a_restarted_relay_republishes_a_crashed_batch_once_and_in_order(
    db: Database, bus: EventBus, arrivals: Arrivals
) -> None:
    """A new relay (a restarted process) takes over the rows the dead one published."""
    expected = await commit(db, 8)
    dead = CrashingPublish(bus.publish, dies=True)
    crashed = relay_of(db, dead, batch=5)
    async with started(crashed):
        await until(holds(lambda: bool(dead.crashed)), "the relay crashed")
        assert await arrivals.wait_for(5) == expected[:5]
    assert [sent for _, sent in await outbox_rows(db)] == [False] * 8  # nothing marked

    expected += await commit(db, 2)  # committed while no relay ran
    restarted = relay_of(db, bus.publish, batch=5)
    async with started(restarted):
        assert await arrivals.wait_for(len(expected)) == expected
        await relayed_all(restarted)
        assert restarted.relayed == len(expected)  # it published the crashed five again

    assert await stored_ids(bus) == expected
    assert arrivals.ids == expected
    assert await outbox_rows(db) == [(event_id, True) for event_id in expected]


# -- one leader per database -----------------------------------------------------------------


@dataclass
class CountingPublish:
    """`bus.publish`, counting the events each relay handed it."""

    publish: Publish
    events: int = 0

    async def __call__(self, batch: Sequence[Event]) -> list[Appended]:
        self.events += len(batch)
        return await self.publish(batch)


async def test_two_relays_on_one_database_elect_one_leader(
    database_url: str, db: Database, bus: EventBus, arrivals: Arrivals
) -> None:
    other_db = Database(database_url, migrations=[CORE_MIGRATIONS])  # a second process
    on_a, on_b = CountingPublish(bus.publish), CountingPublish(bus.publish)
    relay_a, relay_b = relay_of(db, on_a, batch=4), relay_of(other_db, on_b, batch=4)
    expected = await commit(db, 6)
    async with started(other_db, relay_a):
        await until(holds(lambda: relay_a.leader), "A leads")
        async with started(relay_b):
            expected += await commit(db, 10)
            assert await arrivals.wait_for(len(expected)) == expected
            await relayed_all(relay_a)
            assert (relay_a.leader, relay_b.leader) == (True, False)
            assert (on_a.events, on_b.events) == (len(expected), 0)

            # A stops and releases the lock; B takes it and relays what follows.
            await relay_a.stop()
            expected += await commit(other_db, 5)
            assert await arrivals.wait_for(len(expected)) == expected
            await relayed_all(relay_b)
            assert relay_b.leader
            assert on_b.events == 5

    assert await stored_ids(bus) == expected
    assert arrivals.ids == expected
    assert await outbox_rows(db) == [(event_id, True) for event_id in expected]


async def test_a_leader_that_loses_its_lock_session_stops_leading_and_one_instance_takes_over(
    database_url: str, db: Database, bus: EventBus, arrivals: Arrivals
) -> None:
    """PostgreSQL ends the lock's session (as when the holder's connection drops): the lock
    is free at once, the old holder notices at its next check, and one instance leads."""
    if db.dialect != "postgresql":
        pytest.skip("the lock of SQLite is a file lock: it has no session to lose")
    other_db = Database(database_url, migrations=[CORE_MIGRATIONS])
    relay_a, relay_b = relay_of(db, bus.publish), relay_of(other_db, bus.publish)
    expected = await commit(db, 3)
    async with started(other_db, relay_a):
        await until(holds(lambda: relay_a.leader), "A leads")
        async with started(relay_b):
            assert await arrivals.wait_for(len(expected)) == expected
            async with db.connect(autocommit=True) as conn:
                ended = await conn.scalar(
                    sa.text(
                        "select count(pg_terminate_backend(pid)) from pg_locks"
                        " where locktype = 'advisory' and granted and objid = :key and database"
                        " = (select oid from pg_database where datname = current_database())"
                    ),
                    {"key": zlib.crc32(b"outbox-relay")},
                )
            assert ended == 1
            await until(holds(lambda: relay_b.leader or not relay_a.leader), "A noticed")
            await until(holds(lambda: relay_a.leader != relay_b.leader), "one leads")
            expected += await commit(other_db, 4)
            assert await arrivals.wait_for(len(expected)) == expected
            await relayed_all(relay_b)

    assert await stored_ids(bus) == expected


# -- health ----------------------------------------------------------------------------------


@dataclass
class FlakyPublish:
    """`bus.publish`, or UNAVAILABLE while `failing`."""

    publish: Publish
    failing: bool = True

    async def __call__(self, batch: Sequence[Event]) -> list[Appended]:
        if self.failing:
            raise UnavailableError("the event store is unreachable", reason="EVENTS_UNAVAILABLE")
        return await self.publish(batch)


async def test_health_is_degraded_with_the_backlog_while_publishing_fails_then_recovers(
    db: Database, bus: EventBus, arrivals: Arrivals
) -> None:
    publish = FlakyPublish(bus.publish)
    relay = relay_of(db, publish)
    async with started(relay):
        assert (await relay.check_health()).state is HealthState.HEALTHY
        expected = await commit(db, 3)

        async def degraded() -> bool:
            return (await relay.check_health()).state is HealthState.DEGRADED

        await until(degraded, "the relay reports DEGRADED")
        health = await relay.check_health()
        assert health.details["backlog"] == "3"
        assert health.details["leader"] == "True"
        assert "outbox delivery failing (UnavailableError)" in health.reason
        assert "3 events wait" in health.reason
        assert arrivals.ids == []

        publish.failing = False

        async def healthy() -> bool:
            return (await relay.check_health()).state is HealthState.HEALTHY

        await until(healthy, "the relay reports HEALTHY again")
        assert await arrivals.wait_for(3) == expected
        await relayed_all(relay)
        assert (await relay.check_health()).details["relayed"] == "3"

    assert await outbox_rows(db) == [(event_id, True) for event_id in expected]


async def test_a_failed_round_is_retried_with_backoff_and_logged(
    db: Database, bus: EventBus, arrivals: Arrivals
) -> None:
    publish = FlakyPublish(bus.publish)
    relay = relay_of(db, publish)

    def retries() -> list[dict[str, Any]]:
        return [e for e in logs if e["event"] == "retry.scheduled"]

    async def retried_twice() -> bool:
        return len(retries()) >= 2

    with capture_logs() as logs:
        async with started(relay):
            expected = await commit(db, 1)
            await until(retried_twice, "the relay retries its failed round")
            publish.failing = False
            assert await arrivals.wait_for(1) == expected

    first, second = retries()[:2]
    assert (first["operation"], first["attempt"], first["error"]) == (
        "outbox.relay",
        1,
        "UnavailableError",
    )
    assert second["attempt"] == 2
    assert (first["delay_s"], second["delay_s"]) == (0.2, 0.4)  # doubling, no jitter


async def test_a_backlog_above_the_bus_batch_limit_is_still_relayed(db: Database) -> None:
    small = EventBus(SqlEventStore(db), depends_on=("database",), max_batch=5)
    expected = await commit(db, 8)  # e.g. piled up while the event store was down
    relay = relay_of(db, small.publish)

    async def settled() -> HealthState | None:
        if await relay.backlog() == 0:
            return HealthState.HEALTHY
        state = (await relay.check_health()).state
        return state if state is not HealthState.HEALTHY else None

    async with started(small, relay):
        assert await until(settled, "the relay relays or reports failing") is HealthState.HEALTHY
        assert await stored_ids(small) == expected


async def test_an_event_the_bus_refuses_is_passed_over_not_blocking_the_rest(
    db: Database,
) -> None:
    strict = EventBus(SqlEventStore(db), depends_on=("database",), max_event_bytes=2_000)
    before = await commit(db, 2)
    async with db.transaction() as tx:
        big = StringValue(value="x" * 5_000)
        refused = await emit(tx, type=TYPE, source=SOURCE, subject="things/1", data=big)
    after = await commit(db, 2)
    relay = relay_of(db, strict.publish)
    async with started(strict, relay):

        async def drained() -> bool:
            return await relay.backlog() == 0

        await until(drained, "the backlog drains")
        assert await stored_ids(strict) == before + after
        health = await relay.check_health()
        assert health.state is HealthState.DEGRADED
        assert relay.rejected == 1
    assert refused not in await stored_ids(strict)
