"""The event store contract, on every backend: SQL on SQLite and PostgreSQL, Redis Streams.

Each test gets a fresh store: a new SQLite file, a new PostgreSQL database, or a Redis
namespace of its own on the local Redis whose keys are deleted afterwards. Waits are
bounded polling loops, never sleeps standing in for a condition.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import pytest
from structlog.testing import capture_logs

from core.data.database import Database
from core.data.revisions import CORE_MIGRATIONS
from core.errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    OutOfRangeError,
    UnavailableError,
)
from core.events.failures import EndReason
from core.events.model import (
    Delivery,
    Event,
    EventStore,
    GapCause,
    HistoryQuery,
    Lost,
    Policy,
    Selector,
    State,
)
from core.events.redis import RedisEventStore
from core.events.sql import SqlEventStore
from core.testing.databases import fresh_database
from tests.conftest import PG_ADMIN_DSN
from tests.integration._events import REDIS_URL, drop_namespace
from tests.mesh._processes import private_redis

T = TypeVar("T")

EVERYTHING = Selector()
SLOW = Policy(visibility=30.0, max_attempts=5)


@dataclass
class Opened:
    """A started store and what its `on_append` and `on_lost` listeners received."""

    store: EventStore
    backend: str
    namespace: str = ""
    seen: list[Event] = field(default_factory=list)
    lost: list[Lost] = field(default_factory=list)

    def listen(self, batch: Sequence[Event]) -> None:
        self.seen.extend(batch)

    async def wait_seen(self, count: int) -> list[Event]:
        async def enough() -> bool:
            return len(self.seen) >= count

        await until(enough)
        return self.seen


async def until(condition: Callable[[], Awaitable[T]], timeout: float = 10.0) -> T:
    """Polls `condition` until it is truthy, at most `timeout` seconds; returns its value."""
    async with asyncio.timeout(timeout):
        while True:
            value = await condition()
            if value:
                return value
            await asyncio.sleep(0.02)


def an_event(
    type_: str = "a.b.one", subject: str = "things/1", *, id: str = "", at: float | None = None
) -> Event:
    event = Event(id=id or uuid.uuid4().hex, type=type_, source="test", subject=subject)
    event.version = "1"
    if at is None:
        event.time.GetCurrentTime()
    else:
        event.time.FromNanoseconds(int(at * 1e9))
    return event


async def _redis_store(namespace: str, **options: int) -> Opened:
    opened = Opened(RedisEventStore(REDIS_URL, namespace=namespace, **options), "redis", namespace)
    await opened.store.open(opened.listen, opened.lost.append)
    return opened


@asynccontextmanager
async def _fresh_redis() -> AsyncIterator[Opened]:
    """A Redis store on a namespace of its own, whose keys are deleted afterwards."""
    namespace = f"test-{uuid.uuid4().hex[:12]}"
    opened = await _redis_store(namespace)
    try:
        yield opened
    finally:
        await opened.store.close()
        await drop_namespace(namespace)


@pytest.fixture(params=["sqlite", "postgresql", "redis"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Opened]:
    if request.param == "redis":
        async with _fresh_redis() as opened:
            yield opened
        return
    async with fresh_database(request.param, tmp_path, server=PG_ADMIN_DSN) as url:
        db = Database(url, migrations=[CORE_MIGRATIONS], migrate=True)
        try:
            await db.start()
            opened = Opened(SqlEventStore(db), request.param)
            await opened.store.open(opened.listen, opened.lost.append)
            yield opened
            await opened.store.close()
        finally:
            await db.stop()


@pytest.fixture
async def store(backend: Opened) -> EventStore:
    return backend.store


def _key(store: EventStore, position: str) -> tuple[int, ...]:
    return store.order_key(position)


# -- the stream ------------------------------------------------------------------------


async def test_batch_positions_are_ordered_and_set_on_the_events(store: EventStore) -> None:
    batch = [an_event() for _ in range(5)]
    results = await store.append(batch)
    positions = [r.position for r in results]
    assert [e.position for e in batch] == positions
    assert [_key(store, p) for p in positions] == sorted(_key(store, p) for p in positions)
    assert len(set(positions)) == 5
    assert not any(r.duplicate for r in results)
    assert await store.head() == positions[-1]


async def test_a_stored_id_is_a_duplicate_with_its_stored_position(store: EventStore) -> None:
    [first] = await store.append([an_event(id="order-1")])
    [again] = await store.append([an_event(id="order-1", subject="other")])
    assert again.duplicate
    assert again.position == first.position
    stored = await store.get("order-1")
    assert stored is not None
    assert stored.subject == "things/1"


async def test_a_repeated_id_in_a_batch_is_a_duplicate_of_its_first(store: EventStore) -> None:
    batch = [an_event(id="x"), an_event(id="y"), an_event(id="x", subject="later")]
    results = await store.append(batch)
    assert [r.duplicate for r in results] == [False, False, True]
    assert results[2].position == results[0].position
    page = await store.read("", EVERYTHING, 10)
    assert [e.id for e in page.events] == ["x", "y"]


async def test_read_filters_by_exact_type_prefix_and_subject(store: EventStore) -> None:
    await store.append(
        [
            an_event("a.b.one", "s/1"),
            an_event("a.b.two", "s/2"),
            an_event("a.c.one", "s/1"),
            an_event("a.bc", "s/1"),  # not under the prefix a.b.*
        ]
    )

    async def types(selector: Selector) -> list[str]:
        return [e.type for e in (await store.read("", selector, 10)).events]

    assert await types(Selector(("a.b.two",))) == ["a.b.two"]
    assert await types(Selector.parse(["a.b.*"])) == ["a.b.one", "a.b.two"]
    assert await types(Selector(subject="s/1")) == ["a.b.one", "a.c.one", "a.bc"]
    assert await types(Selector.parse(["a.b.*", "a.c.one"], "s/1")) == ["a.b.one", "a.c.one"]
    assert await types(Selector.parse(["*"])) == ["a.b.one", "a.b.two", "a.c.one", "a.bc"]


async def test_read_covers_events_that_did_not_match(store: EventStore) -> None:
    results = await store.append([an_event("a.b.one"), an_event("x.y"), an_event("x.y")])
    page = await store.read("", Selector(("a.b.one",)), 10)
    assert [e.position for e in page.events] == [results[0].position]
    assert page.covered == results[-1].position
    assert page.at_head

    limited = await store.read("", EVERYTHING, 2)
    assert limited.covered == results[1].position
    assert not limited.at_head
    rest = await store.read(limited.covered, EVERYTHING, 2)
    assert [e.position for e in rest.events] == [results[2].position]
    assert rest.at_head

    empty = await store.read(results[-1].position, EVERYTHING, 10)
    assert empty.events == []
    assert empty.at_head
    assert empty.covered == results[-1].position


async def test_a_malformed_position_is_invalid(store: EventStore) -> None:
    for bad in ("not-a-position", "12x", "-1"):
        with pytest.raises(InvalidArgumentError) as caught:
            await store.read(bad, EVERYTHING, 10)
        assert caught.value.reason == "INVALID_POSITION"
    assert store.order_key("") == ()


async def test_on_append_gets_new_events_in_order(backend: Opened) -> None:
    for _ in range(3):
        await backend.store.append([an_event(), an_event()])
    seen = await backend.wait_seen(6)
    keys = [backend.store.order_key(e.position) for e in seen]
    assert keys == sorted(keys)
    assert len(set(keys)) == 6


async def test_get_returns_the_event_or_none(store: EventStore) -> None:
    [stored] = await store.append([an_event(id="one")])
    found = await store.get("one")
    assert found is not None
    assert found.position == stored.position
    assert found.type == "a.b.one"
    assert await store.get("missing") is None


async def test_history_filters_by_selector_and_time_range(store: EventStore) -> None:
    base = 1_700_000_000.0
    await store.append(
        [an_event("a.b.one", at=base + i, id=f"h{i}") for i in range(5)]
        + [an_event("x.y", at=base + 2, id="other")]
    )
    query = HistoryQuery(Selector.parse(["a.b.*"]), start_time=base + 1, end_time=base + 4)
    found = await store.history(query, "", 10)
    assert [e.id for e in found] == ["h1", "h2", "h3"]
    first = await store.history(query, "", 2)
    assert [e.id for e in first] == ["h1", "h2"]
    after = await store.history(query, first[-1].position, 2)
    assert [e.id for e in after] == ["h3"]
    everything = await store.history(HistoryQuery(EVERYTHING), "", 100)
    assert len(everything) == 6


# -- consumer groups --------------------------------------------------------------------


async def test_joining_with_another_selector_is_a_mismatch(store: EventStore) -> None:
    await store.join("workers", Selector(("a.b.one",)), "")
    await store.join("workers", Selector(("a.b.one",)), "")  # the same selector: fine
    with pytest.raises(FailedPreconditionError) as caught:
        await store.join("workers", Selector(("a.b.two",)), "")
    assert caught.value.reason == "GROUP_SELECTOR_MISMATCH"


async def test_an_unknown_group_is_not_found(store: EventStore) -> None:
    with pytest.raises(NotFoundError) as caught:
        await store.claim("nobody", "m", 10, SLOW)
    assert caught.value.reason == "GROUP_NOT_FOUND"
    with pytest.raises(NotFoundError):
        await store.dead_letters("nobody", "", 10)
    with pytest.raises(NotFoundError):
        await store.replay("nobody", [])


async def test_members_share_the_events_the_group_wants(store: EventStore) -> None:
    await store.join("workers", Selector.parse(["a.b.*"]), "")
    wanted = [an_event("a.b.one") for _ in range(5)]
    await store.append([*wanted[:2], an_event("x.y"), *wanted[2:]])
    first = await store.claim("workers", "m1", 3, SLOW)
    second = await store.claim("workers", "m2", 10, SLOW)
    assert len(first) == 3
    assert len(second) == 2
    ids = [d.event.id for d in first + second]
    assert ids == [e.id for e in wanted]  # each once, in order, the unwanted one skipped
    assert all(d.attempt == 1 for d in first + second)
    assert await store.claim("workers", "m3", 10, SLOW) == []
    assert await store.unacked("workers", "m1") == 3
    assert await store.unacked("workers", "m2") == 2


async def test_a_group_starts_after_its_start_position(store: EventStore) -> None:
    [old] = await store.append([an_event(id="old")])
    await store.join("late", EVERYTHING, old.position)
    await store.append([an_event(id="new")])
    assert [d.event.id for d in await store.claim("late", "m", 10, SLOW)] == ["new"]


async def test_ack_is_idempotent_and_unknown_ids_are_not_found(store: EventStore) -> None:
    await store.join("workers", EVERYTHING, "")
    await store.append([an_event(id="e1"), an_event(id="e2"), an_event(id="e3")])
    await store.claim("workers", "m", 2, SLOW)
    assert await store.ack("workers", ["e1", "e2", "e1"]) == 2
    assert await store.ack("workers", ["e1"]) == 0
    assert await store.unacked("workers", "m") == 0
    with pytest.raises(NotFoundError) as caught:
        await store.ack("workers", ["e1", "e3"])  # e3 was never handed out
    assert caught.value.reason == "DELIVERY_NOT_FOUND"
    with pytest.raises(FailedPreconditionError) as acked:
        await store.nack("workers", "e1", delay=0, park=False, error="", policy=SLOW)
    assert acked.value.reason == "ALREADY_ACKED"
    with pytest.raises(NotFoundError):
        await store.nack("workers", "e3", delay=0, park=False, error="", policy=SLOW)
    assert await store.next_due("workers") is None


async def test_an_unacked_event_goes_to_another_member_after_the_timeout(
    store: EventStore,
) -> None:
    quick = Policy(visibility=0.2, max_attempts=5)
    await store.join("workers", EVERYTHING, "")
    await store.append([an_event(id="slow")])
    [first] = await store.claim("workers", "m1", 10, quick)
    due = await store.next_due("workers")
    assert due is not None
    again = await until(lambda: store.claim("workers", "m2", 10, quick))
    assert [(d.event.id, d.attempt) for d in again] == [("slow", 2)]
    [status] = await store.status("slow")
    assert (status.state, status.attempts, status.consumer) == (State.DELIVERED, 2, "m2")
    assert [(e.message, e.attempt, e.reason) for e in status.errors] == [
        ("consumer 'm1' did not ack within the visibility timeout", 1, EndReason.TIMED_OUT)
    ]
    assert first.attempt == 1


async def test_release_makes_a_members_events_due_at_once(store: EventStore) -> None:
    await store.join("workers", EVERYTHING, "")
    await store.append([an_event(id="r1"), an_event(id="r2")])
    assert len(await store.claim("workers", "leaver", 10, SLOW)) == 2
    assert await store.claim("workers", "stayer", 10, SLOW) == []
    await store.release("workers", "leaver")
    due = await store.next_due("workers")
    assert due is not None
    assert due <= time.time() + 1
    taken = await store.claim("workers", "stayer", 10, SLOW)
    assert sorted((d.event.id, d.attempt) for d in taken) == [("r1", 2), ("r2", 2)]
    assert await store.unacked("workers", "stayer") == 2


async def test_a_released_event_says_its_member_disconnected(store: EventStore) -> None:
    await store.join("workers", EVERYTHING, "")
    await store.append([an_event(id="held"), an_event(id="acked")])
    await store.claim("workers", "leaver", 10, SLOW)
    await store.ack("workers", ["acked"])
    await store.release("workers", "leaver")
    gone = [("consumer 'leaver' disconnected before acking", 1, EndReason.DISCONNECTED)]
    [released] = await store.status("held")
    assert (released.state, released.attempts) == (State.RETRYING, 1)
    assert [(e.message, e.attempt, e.reason) for e in released.errors] == gone
    [acked] = await store.status("acked")
    assert (acked.state, acked.errors) == (State.ACKED, [])
    await store.claim("workers", "stayer", 10, SLOW)  # no timeout recorded on top
    [again] = await store.status("held")
    assert (again.state, again.attempts, again.consumer) == (State.DELIVERED, 2, "stayer")
    assert [(e.message, e.attempt, e.reason) for e in again.errors] == gone


async def test_a_nacked_event_waits_for_its_delay(store: EventStore) -> None:
    quick = Policy(visibility=0.05, max_attempts=5)
    await store.join("workers", EVERYTHING, "")
    await store.append([an_event(id="n1")])
    await store.claim("workers", "m1", 10, quick)
    delay = 1.0
    state = await store.nack("workers", "n1", delay=delay, park=False, error="boom", policy=quick)
    assert state == State.RETRYING
    due = await store.next_due("workers")
    assert due is not None
    assert await store.unacked("workers", "m1") == 0
    # Claims keep coming well past the visibility timeout; none may return it before due.

    async def handed() -> list[Delivery]:
        claimed = await store.claim("workers", "m2", 10, quick)
        if claimed:
            assert time.time() >= due - 0.05, "handed out before its retry was due"
        return claimed

    again = await until(handed)
    assert [(d.event.id, d.attempt) for d in again] == [("n1", 2)]


async def test_a_parked_event_is_a_dead_letter_until_replayed(store: EventStore) -> None:
    await store.join("workers", EVERYTHING, "")
    await store.append([an_event(id="p1"), an_event(id="p2")])
    await store.claim("workers", "m", 10, SLOW)
    state = await store.nack("workers", "p1", delay=0, park=True, error="bad data", policy=SLOW)
    assert state == State.DEAD_LETTERED
    again = await store.nack("workers", "p1", delay=0, park=False, error="", policy=SLOW)
    assert again == State.DEAD_LETTERED
    [(event, status)] = await store.dead_letters("workers", "", 10)
    assert event.id == "p1"
    assert status.state == State.DEAD_LETTERED
    assert [(e.message, e.attempt) for e in status.errors] == [("bad data", 1)]
    assert await store.claim("workers", "m", 10, SLOW) == []
    assert await store.dead_letters("workers", event.position, 10) == []

    assert await store.replay("workers", ["p1", "p2"]) == 1  # p2 is not a dead letter
    [status] = await store.status("p1")
    assert (status.state, status.attempts) == (State.RETRYING, 0)
    assert await store.dead_letters("workers", "", 10) == []
    [delivery] = await store.claim("workers", "m", 10, SLOW)
    assert (delivery.event.id, delivery.attempt) == ("p1", 1)


async def test_replay_without_ids_brings_back_every_dead_letter(store: EventStore) -> None:
    await store.join("workers", EVERYTHING, "")
    await store.append([an_event(id=f"d{i}") for i in range(3)])
    for delivery in await store.claim("workers", "m", 10, SLOW):
        await store.nack("workers", delivery.event.id, delay=0, park=True, error="no", policy=SLOW)
    assert [e.id for e, _ in await store.dead_letters("workers", "", 10)] == ["d0", "d1", "d2"]
    assert await store.replay("workers", []) == 3
    assert len(await store.claim("workers", "m", 10, SLOW)) == 3


async def test_max_attempts_dead_letters_a_nacked_event(store: EventStore) -> None:
    twice = Policy(visibility=30.0, max_attempts=2)
    await store.join("workers", EVERYTHING, "")
    await store.append([an_event(id="m1")])
    await store.claim("workers", "m", 10, twice)
    assert await store.nack("workers", "m1", delay=0, park=False, error="1", policy=twice) == (
        State.RETRYING
    )
    [delivery] = await until(lambda: store.claim("workers", "m", 10, twice))
    assert delivery.attempt == 2
    assert await store.nack("workers", "m1", delay=0, park=False, error="2", policy=twice) == (
        State.DEAD_LETTERED
    )
    [(_, status)] = await store.dead_letters("workers", "", 10)
    assert [(e.message, e.attempt) for e in status.errors] == [("1", 1), ("2", 2)]


async def test_max_attempts_dead_letters_an_event_nobody_acks(store: EventStore) -> None:
    once = Policy(visibility=0.1, max_attempts=1)
    await store.join("workers", EVERYTHING, "")
    await store.append([an_event(id="lost")])
    await store.claim("workers", "m", 10, once)

    async def dead() -> bool:
        assert await store.claim("workers", "m", 10, once) == []
        return bool(await store.dead_letters("workers", "", 10))

    await until(dead)
    [status] = await store.status("lost")
    assert (status.state, status.attempts) == (State.DEAD_LETTERED, 1)
    assert "within the visibility timeout" in status.errors[-1].message
    assert status.errors[-1].reason == EndReason.TIMED_OUT


async def test_status_follows_every_stage(store: EventStore) -> None:
    quick = Policy(visibility=30.0, max_attempts=5)
    await store.join("workers", Selector.parse(["a.b.*"]), "")
    await store.join("others", Selector(("x.y",)), "")
    await store.append([an_event("a.b.one", id="s1")])
    assert await store.status("missing") == []

    [pending] = await store.status("s1")  # "others" does not want it: not listed
    assert (pending.group, pending.state, pending.attempts) == ("workers", State.PENDING, 0)

    await store.claim("workers", "m1", 10, quick)
    [delivered] = await store.status("s1")
    assert (delivered.state, delivered.attempts, delivered.consumer) == (
        State.DELIVERED,
        1,
        "m1",
    )
    assert delivered.update_time > 0
    assert delivered.errors == []

    await store.nack("workers", "s1", delay=30, park=False, error="x" * 2000, policy=quick)
    [retrying] = await store.status("s1")
    assert (retrying.state, retrying.attempts) == (State.RETRYING, 1)
    assert [(len(e.message), e.attempt, e.reason) for e in retrying.errors] == [
        (1000, 1, EndReason.NACKED)
    ]

    await store.replay("workers", ["s1"])  # not a dead letter: nothing happens
    await store.nack("workers", "s1", delay=0, park=False, error="again", policy=quick)
    await until(lambda: store.claim("workers", "m2", 10, quick))
    [second] = await store.status("s1")
    assert (second.state, second.attempts, second.consumer) == (State.DELIVERED, 2, "m2")
    assert [e.message[:5] for e in second.errors] == ["xxxxx", "again"]

    await store.ack("workers", ["s1"])
    [acked] = await store.status("s1")
    assert (acked.state, acked.attempts) == (State.ACKED, 2)

    await store.append([an_event("a.b.two", id="s2")])
    await store.claim("workers", "m1", 10, quick)
    await store.nack("workers", "s2", delay=0, park=True, error="dead", policy=quick)
    [dead] = await store.status("s2")
    assert (dead.state, dead.attempts) == (State.DEAD_LETTERED, 1)


async def test_errors_kept_are_the_last_ten(store: EventStore) -> None:
    many = Policy(visibility=30.0, max_attempts=100)
    await store.join("workers", EVERYTHING, "")
    await store.append([an_event(id="e")])
    for i in range(12):
        await until(lambda: store.claim("workers", "m", 10, many))
        await store.nack("workers", "e", delay=0, park=False, error=f"try {i}", policy=many)
    [status] = await store.status("e")
    assert [e.message for e in status.errors] == [f"try {i}" for i in range(2, 12)]
    assert status.attempts == 12


# -- Redis only: several instances, retention, lost data ----------------------------------


@pytest.fixture
async def redis_backend() -> AsyncIterator[Opened]:
    async with _fresh_redis() as opened:
        yield opened


async def test_events_from_another_instance_reach_the_live_feed(redis_backend: Opened) -> None:
    other = await _redis_store(redis_backend.namespace)
    try:
        await other.store.append([an_event(id="there-1")])
        await redis_backend.store.append([an_event(id="here-1")])
        await other.store.append([an_event(id="there-2"), an_event(id="there-3")])
        for opened in (redis_backend, other):
            seen = await opened.wait_seen(4)
            assert [e.id for e in seen] == ["there-1", "here-1", "there-2", "there-3"]
        # Groups are shared too: what one instance hands out, the other does not.
        await redis_backend.store.join("g", EVERYTHING, "")
        await other.store.join("g", EVERYTHING, "")
        here = await redis_backend.store.claim("g", "a", 2, SLOW)
        there = await other.store.claim("g", "b", 10, SLOW)
        assert [d.event.id for d in here + there] == [e.id for e in redis_backend.seen]
    finally:
        await other.store.close()


async def test_a_trimmed_position_is_expired(redis_backend: Opened) -> None:
    small = await _redis_store(redis_backend.namespace, retention=5)
    try:
        results = await small.store.append([an_event(id=f"t{i}") for i in range(12)])
        with pytest.raises(OutOfRangeError) as caught:
            await small.store.read(results[0].position, EVERYTHING, 10)
        assert caught.value.reason == "POSITION_EXPIRED"
        assert await small.store.get("t0") is None
        page = await small.store.read("", EVERYTHING, 100)
        assert [e.id for e in page.events] == [f"t{i}" for i in range(7, 12)]
        kept = await small.store.read(results[6].position, EVERYTHING, 100)
        assert len(kept.events) == 5
    finally:
        await small.store.close()


async def test_lost_redis_data_is_reported_and_recovered(redis_backend: Opened) -> None:
    store = redis_backend.store
    await store.join("workers", Selector.parse(["a.b.*"]), "")
    [before] = await store.append([an_event(id="before")])
    assert len(await store.claim("workers", "m", 10, SLOW)) == 1
    await redis_backend.wait_seen(1)
    assert await store.check() == ""

    with capture_logs() as logs:
        await drop_namespace(redis_backend.namespace)  # a restart without persistence
        problem = await until(store.check)
    assert "lost" in problem
    gaps = [e for e in logs if e["event"] == "event.gap"]
    assert gaps
    assert gaps[0]["last_position"] == before.position
    assert gaps[0]["groups"] == ["workers"]
    # the listener forgets up to there
    assert redis_backend.lost == [Lost(before.position, GapCause.STORE_LOST)]

    with pytest.raises(OutOfRangeError) as caught:  # older than the loss: the reader must know
        await store.read("1-0", EVERYTHING, 10)
    assert caught.value.reason == "POSITION_LOST"
    assert caught.value.metadata["resume_after"] == before.position
    after, _ = await store.append([an_event(id="after"), an_event("x.y")])
    assert store.order_key(after.position) > store.order_key(before.position)
    seen = await redis_backend.wait_seen(3)
    assert [e.id for e in seen[:2]] == ["before", "after"]
    [delivery] = await store.claim("workers", "m", 10, SLOW)  # the group was recreated
    assert delivery.event.id == "after"
    [status] = await store.status("after")
    assert status.state == State.DELIVERED
    assert await store.check() != ""  # still reported for a while


async def test_an_unreachable_redis_is_unavailable() -> None:
    store = RedisEventStore("redis://127.0.0.1:1/0", namespace="test-unreachable")
    with pytest.raises(UnavailableError) as caught:
        await store.open(lambda batch: None, lambda position: None)
    assert caught.value.reason == "EVENTS_UNAVAILABLE"
    await store.close()


async def test_a_redis_restart_without_persistence_is_detected(tmp_path: Path) -> None:
    async with private_redis(tmp_path / "redis") as server:
        opened = Opened(RedisEventStore(server.url, namespace="restart"), "redis")
        store = opened.store
        await store.open(opened.listen, opened.lost.append)
        try:
            with capture_logs() as logs:
                await store.join("workers", EVERYTHING, "")
                await store.append([an_event(id="before")])
                await opened.wait_seen(1)

                await server.kill()
                with pytest.raises(UnavailableError) as caught:
                    await store.head()
                assert caught.value.reason == "EVENTS_UNAVAILABLE"
                with pytest.raises(UnavailableError):
                    await store.check()

                await server.start()  # empty: it had no persistence

                async def problem() -> str:
                    with contextlib.suppress(UnavailableError):
                        return await store.check()
                    return ""

                assert "lost" in await until(problem)
                await store.append([an_event(id="after")])
                seen = await opened.wait_seen(2)
                assert [e.id for e in seen] == ["before", "after"]
                [delivery] = await until(lambda: store.claim("workers", "m", 10, SLOW))
                assert delivery.event.id == "after"
            retries = [e for e in logs if e["event"] == "retry.scheduled"]
            assert {e["operation"] for e in retries} >= {"event.read"}  # the reader's, logged
        finally:
            await store.close()
