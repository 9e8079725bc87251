"""The event bus over a real store (SQLite, Redis): what it adds to the store's own behaviour."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import pytest

from core.data.database import Database
from core.data.revisions import CORE_MIGRATIONS
from core.errors import UnavailableError
from core.events.bus import EventBus
from core.events.model import Appended, CaughtUp, Event, EventStore, Page, Selector
from core.events.redis import RedisEventStore
from core.events.sql import SqlEventStore
from tests.integration._events import REDIS_URL, drop_namespace


def an_event() -> Event:
    return Event(id=uuid.uuid4().hex, type="mesh.test.v1.thing.done", source="test")


def count_reads(store: EventStore) -> list[int]:
    """Counts the store's reads (the real store answers them); [n] grows as they start."""
    reads = [0]
    read = store.read

    async def counted(after: str, selector: Selector, limit: int) -> Page:
        reads[0] += 1
        return await read(after, selector, limit)

    store.read = counted  # type: ignore[method-assign]
    return reads


async def test_subscriptions_catching_up_from_one_position_share_the_store_reads(
    tmp_path: Path,
) -> None:
    db = Database(
        f"sqlite+aiosqlite:///{tmp_path / 'events.db'}", migrations=[CORE_MIGRATIONS], migrate=True
    )
    await db.start()
    store = SqlEventStore(db)
    bus = EventBus(store, ring_size=1)  # so catching up reads the store, not recent events
    await bus.start()
    try:
        for _ in range(3):
            await bus.publish([an_event() for _ in range(400)])
        reads = count_reads(store)

        async def catch_up() -> list[str]:
            seen: list[str] = []
            async for item in bus.subscribe(Selector(), ""):
                if isinstance(item, CaughtUp):
                    return seen
                if isinstance(item, Event):
                    seen.append(item.position)
            raise AssertionError("the subscription ended before it caught up")

        async with asyncio.timeout(10):
            caught_up = await asyncio.gather(*(catch_up() for _ in range(5)))
        assert [len(seen) for seen in caught_up] == [1200] * 5
        assert all(seen == caught_up[0] for seen in caught_up)
        # Pages of 500, 500 and 200: the two full ones read once for all five; the last
        # reached the head and is read again by whoever comes after its read. Alone: 15.
        assert reads[0] <= 7
    finally:
        await bus.stop()
        await db.stop()


async def test_on_redis_the_next_page_is_read_while_one_is_delivered() -> None:
    namespace = f"test-{uuid.uuid4().hex[:12]}"
    store = RedisEventStore(REDIS_URL, namespace=namespace)
    bus = EventBus(store, ring_size=1)
    await bus.start()
    try:
        for _ in range(3):
            await bus.publish([an_event() for _ in range(400)])
        reads = count_reads(store)
        stream = bus.subscribe(Selector(), "")
        first = await anext(stream)  # the first page is read: 500 of 1 200 events
        await asyncio.sleep(0)  # the read ahead starts
        assert isinstance(first, Event)
        assert reads[0] == 2
        await stream.aclose()
    finally:
        await bus.stop()
        await drop_namespace(namespace)


async def test_on_redis_a_subscription_is_not_caught_up_before_events_its_reader_lags_on() -> None:
    namespace = f"test-{uuid.uuid4().hex[:12]}"
    store = RedisEventStore(REDIS_URL, namespace=namespace)
    bus = EventBus(store)
    open_store = store.open

    async def open_with_a_lagging_reader(on_append: Any, on_lost: Any) -> None:
        await open_store(lambda batch: None, on_lost)  # the reader never hands events over

    store.open = open_with_a_lagging_reader  # type: ignore[method-assign]
    await bus.start()
    try:
        published = await bus.publish([an_event() for _ in range(3)])
        stream = bus.subscribe(Selector(), "")
        async with asyncio.timeout(5):
            items = [await anext(stream) for _ in range(4)]
        await stream.aclose()
        assert [getattr(i, "position", None) for i in items[:3]] == [p.position for p in published]
        assert items[3] == CaughtUp(published[-1].position)
    finally:
        await bus.stop()
        await drop_namespace(namespace)


async def test_a_publish_whose_append_is_cut_short_by_stop_is_unavailable_not_left_waiting(
    tmp_path: Path,
) -> None:
    db = Database(
        f"sqlite+aiosqlite:///{tmp_path / 'events.db'}", migrations=[CORE_MIGRATIONS], migrate=True
    )
    await db.start()
    store = SqlEventStore(db)
    appending = asyncio.Event()
    append = store.append

    async def held(events: list[Event]) -> list[Appended]:
        appending.set()
        await asyncio.Event().wait()  # the store never answers: cut short by the stop
        return await append(events)  # pragma: no cover

    store.append = held  # type: ignore[method-assign]
    bus = EventBus(store)
    await bus.start()
    try:
        publish = asyncio.create_task(bus.publish([an_event()]))
        async with asyncio.timeout(5):
            await appending.wait()
            await bus.stop()
            with pytest.raises(UnavailableError):
                await publish
    finally:
        await db.stop()
