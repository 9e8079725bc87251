"""Events that were lost are said to be lost: Redis trimming by the retention, and Redis
restarting without its data.

A subscription that starts after a position whose events are gone fails with OUT_OF_RANGE
(POSITION_EXPIRED when trimmed, POSITION_LOST when Redis lost them), its ErrorInfo saying
where to resume; a subscription that is running when events it was due go gets a Gap
message in its stream and goes on. The restart tests run a redis-server of their own.
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import AsyncIterator
from contextlib import aclosing
from pathlib import Path

import pytest

from clients.events import EventsClient, EventsLostError
from core.errors import OutOfRangeError
from core.events.bus import EventBus
from core.events.model import Event, Gap, GapCause, Selector
from core.events.redis import RedisEventStore
from mesh.events.v1 import events_pb2 as pb
from tests.conftest import Running
from tests.integration._events import (
    REDIS_URL,
    drop_namespace,
    event,
    events_server,
    events_settings,
    failure,
    stub_of,
    take,
)
from tests.mesh._processes import RedisServer, private_redis

WITHIN = 20.0  # seconds any one awaited message may take (a restarted Redis, 2 shared cores)


def is_gap(message: pb.SubscribeResponse) -> bool:
    return message.HasField("gap")


# -- the retention trims ---------------------------------------------------------------


@pytest.fixture
async def small(tmp_path: Path) -> AsyncIterator[Running]:
    """An events server on the shared Redis (a namespace of its own) keeping 5 events."""
    settings = events_settings("redis", tmp_path, retention=5, system_events=False)
    try:
        async with events_server(settings) as running:
            yield running
    finally:
        await drop_namespace(settings.cache_namespace)


async def test_resuming_from_a_trimmed_position_is_out_of_range_saying_where_to_resume(
    small: Running,
) -> None:
    async with stub_of(small) as stub:
        sent = await stub.PublishBatch(
            pb.PublishBatchRequest(events=[event(subject=f"things/{n}") for n in range(12)])
        )
        positions = [r.position for r in sent.results]
        # The server's ring of recent events still holds them all: the store decides.
        request = pb.SubscribeRequest(start=pb.StartPosition(after=positions[0]))
        error = await failure(take(stub.Subscribe(request), 1))

        assert isinstance(error, OutOfRangeError)
        assert error.reason == "POSITION_EXPIRED"
        assert error.metadata["position"] == positions[0]
        assert error.metadata["resume_after"] == positions[6]  # the newest trimmed
        assert error.metadata["oldest"] == positions[7]  # the oldest kept
        resumed = pb.SubscribeRequest(start=pb.StartPosition(after=error.metadata["resume_after"]))
        got = await take(stub.Subscribe(resumed), 5)
        assert [m.event.position for m in got if m.HasField("event")] == positions[7:]


async def test_a_running_subscription_whose_events_are_trimmed_gets_a_gap_and_goes_on() -> None:
    namespace = f"test-{uuid.uuid4().hex[:12]}"
    bus = EventBus(RedisEventStore(REDIS_URL, namespace=namespace, retention=5), ring_size=1)
    await bus.start()
    try:
        first = await bus.publish([an_event(0), an_event(1)])
        after = first[0].position
        async with aclosing(bus.subscribe(Selector(), await bus.resolve(beginning=True))) as feed:
            assert isinstance(item := await anext(feed), Event)
            assert item.position == after
            # While it holds one event, the retention trims what it has not read yet.
            trimming = await bus.publish([an_event(n) for n in range(2, 14)])
            items: list[object] = []
            async with asyncio.timeout(WITHIN):
                while sum(isinstance(i, Event) for i in items[items_gap(items) :]) < 5:
                    items.append(await anext(feed))
    finally:
        await bus.stop()
        await drop_namespace(namespace)

    [gap] = [i for i in items if isinstance(i, Gap)]
    assert gap.cause == GapCause.RETENTION
    assert gap.after in (after, first[1].position)  # event 1 may have come in one page
    assert gap.resume_after == trimming[-6].position  # the newest trimmed
    delivered = [i.position for i in items[items_gap(items) :] if isinstance(i, Event)]
    assert delivered == [r.position for r in trimming[-5:]]  # then on, none missing


def items_gap(items: list[object]) -> int:
    """The index after the Gap among `items`; the end while there is none."""
    found = [n for n, i in enumerate(items) if isinstance(i, Gap)]
    return found[0] + 1 if found else len(items)


def an_event(n: int) -> Event:
    made = Event(id=f"e{n}", type="mesh.test.v1.thing.done", source="tests")
    made.time.GetCurrentTime()
    return made


# -- Redis restarts without its data ---------------------------------------------------


@dataclasses.dataclass
class OnOwnRedis:
    redis: RedisServer
    server: Running


@pytest.fixture
async def own(tmp_path: Path) -> AsyncIterator[OnOwnRedis]:
    """An events server on a redis-server of its own, without persistence."""
    async with private_redis(tmp_path / "redis") as redis:
        settings = events_settings("redis", tmp_path, system_events=False)
        settings = dataclasses.replace(settings, redis_url=redis.url)
        async with events_server(settings) as running:
            yield OnOwnRedis(redis, running)


async def test_redis_restarted_empty_gives_running_subscribers_a_gap_and_resumes_an_error(
    own: OnOwnRedis,
) -> None:
    async with (
        stub_of(own.server) as stub,
        EventsClient(own.server.address) as client,
        client.subscribe(markers=True) as typed,
        client.subscribe(beginning=True) as plain,  # no markers: a gap raises
    ):
        raw = stub.Subscribe(pb.SubscribeRequest())
        for stream in (raw, typed):  # live before anything is sent
            await caught_up(stream)
        sent = await stub.PublishBatch(pb.PublishBatchRequest(events=[event(), event()]))
        first, last = (r.position for r in sent.results)
        before = await take(raw, 2)
        assert [m.event.position for m in before if m.HasField("event")] == [first, last]
        assert [(await anext(plain)).event.position for _ in range(2)] == [first, last]

        await own.redis.kill()
        await own.redis.start()  # same port, empty: it had no persistence
        [gap] = [m for m in await take(raw, 0, until=is_gap) if is_gap(m)]

        assert gap.gap.cause == pb.GAP_CAUSE_STORE_LOST
        assert gap.gap.after == last
        assert gap.gap.resume_after == last
        assert "lost its data" in gap.gap.message
        typed_gap = await next_of_kind(typed, "gap")
        assert typed_gap.gap.resume_after == last
        with pytest.raises(EventsLostError) as lost:
            await next_of_kind(plain, "gap")  # never yielded: raised
        assert lost.value.reason == "EVENTS_LOST"
        assert lost.value.metadata["cause"] == "GAP_CAUSE_STORE_LOST"

        # The stream goes on: a new event comes after the gap.
        [after] = (await stub.PublishBatch(pb.PublishBatchRequest(events=[event()]))).results
        [came] = [m for m in await take(raw, 1) if m.HasField("event")]
        assert came.event.position == after.position
        assert (await next_of_kind(typed, "event")).event.position == after.position

        # A subscriber resuming from before the loss is told, and where to go on from.
        request = pb.SubscribeRequest(start=pb.StartPosition(after=first))
        error = await failure(take(stub.Subscribe(request), 1))
        assert isinstance(error, OutOfRangeError)
        assert error.reason == "POSITION_LOST"
        assert error.metadata["position"] == first
        assert error.metadata["resume_after"] == last
        async with client.subscribe(after=first) as resumed:
            with pytest.raises(OutOfRangeError) as caught:
                await next_of_kind(resumed, "event")
        assert caught.value.reason == "POSITION_LOST"
        raw.cancel()


async def test_a_resume_right_after_redis_restarted_empty_is_lost_not_ahead(
    own: OnOwnRedis,
) -> None:
    """Before the server's reader noticed the loss, a resume must not read an empty stream
    (POSITION_AHEAD) or skip silently: the store recovers first."""
    async with stub_of(own.server) as stub:
        sent = await stub.PublishBatch(pb.PublishBatchRequest(events=[event(), event()]))
        first = sent.results[0].position
        await own.redis.kill()
        await own.redis.start()
        request = pb.SubscribeRequest(start=pb.StartPosition(after=first))
        error = await failure(take(stub.Subscribe(request), 1))
    assert isinstance(error, OutOfRangeError)
    assert error.reason == "POSITION_LOST"


async def caught_up(stream: AsyncIterator[pb.SubscribeResponse]) -> None:
    """Waits for a subscription's caught_up marker: it is live."""
    await next_of_kind(stream, "caught_up")


async def next_of_kind(
    stream: AsyncIterator[pb.SubscribeResponse], kind: str
) -> pb.SubscribeResponse:
    async with asyncio.timeout(WITHIN):
        async for message in stream:
            if message.WhichOneof("kind") == kind:
                return message
    raise AssertionError("the stream ended")


async def test_a_resume_after_redis_lost_its_data_while_no_server_ran_is_lost(
    tmp_path: Path,
) -> None:
    """Redis restarted empty while the service was down too (a whole restart): the new
    store starts after the old positions, so resuming from one must not skip silently."""
    async with private_redis(tmp_path / "redis") as redis:
        settings = events_settings("redis", tmp_path, system_events=False)
        settings = dataclasses.replace(settings, redis_url=redis.url)
        async with events_server(settings) as running, stub_of(running) as stub:
            [old] = (await stub.PublishBatch(pb.PublishBatchRequest(events=[event()]))).results
        await redis.kill()
        await redis.start()
        async with events_server(settings) as running, stub_of(running) as stub:
            [new] = (await stub.PublishBatch(pb.PublishBatchRequest(events=[event()]))).results
            request = pb.SubscribeRequest(start=pb.StartPosition(after=old.position))
            error = await failure(take(stub.Subscribe(request), 1))
            resumed = pb.SubscribeRequest(
                start=pb.StartPosition(after=error.metadata["resume_after"])
            )
            got = await take(stub.Subscribe(resumed), 1)

    assert isinstance(error, OutOfRangeError)
    assert error.reason == "POSITION_LOST"
    assert error.metadata["oldest"] == new.position
    assert [m.event.position for m in got if m.HasField("event")] == [new.position]
