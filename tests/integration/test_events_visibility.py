"""Events follow their owner: a caller without events.admin sees only its own events.

The principal is set in-process with `act_as` around the requests the events service
makes of its bus (`EventRequests`), on the SQL backend and on Redis Streams.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import aclosing, contextmanager
from pathlib import Path

import pytest

from core.errors import NotFoundError, PermissionDeniedError
from core.events.bus import EventBus
from core.events.model import CaughtUp, Delivery, Event, HistoryQuery, Selector
from core.events.requests import EventRequests
from core.security.principal import Principal, _current, act_as
from mesh.events.v1 import events_pb2 as pb
from tests.integration._events import drop_namespace, event, events_server, events_settings

ALICE = Principal("alice", frozenset({"events.publish", "events.subscribe", "events.read"}))
BOB = Principal("bob", frozenset({"events.publish", "events.subscribe", "events.read"}))
RELAY = Principal("projects-service", frozenset({"events.publish", "events.admin"}))
EVERYTHING = Selector.parse([])


@contextmanager
def acting_as(principal: Principal) -> Iterator[None]:
    token = act_as(principal)
    try:
        yield
    finally:
        _current.reset(token)


@pytest.fixture(params=["sql", "redis"])
async def requests(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[EventRequests]:
    settings = events_settings(request.param, tmp_path)
    try:
        async with events_server(settings) as running:
            yield EventRequests(running.container.get(EventBus))
    finally:
        await drop_namespace(settings.cache_namespace)


async def publish(requests: EventRequests, *events: pb.Event) -> list[str]:
    return [a.id for a in await requests.publish(list(events))]


async def history(requests: EventRequests) -> list[Event]:
    found, _ = await requests.list_events(HistoryQuery(EVERYTHING, None, None), 100, "")
    return found


async def subscribed(requests: EventRequests) -> list[Event]:
    """The stored events a plain subscription from the beginning hands over."""
    stream = await requests.subscribe(
        EVERYTHING, after="", beginning=True, group="", consumer="", max_unacked=0
    )
    found = []
    async with asyncio.timeout(10), aclosing(stream):
        async for item in stream:
            if isinstance(item, CaughtUp):
                return found
            if isinstance(item, Event):
                found.append(item)
    return found


async def test_published_events_carry_their_publishers_owner_and_principal(
    requests: EventRequests,
) -> None:
    with acting_as(ALICE):
        await publish(requests, event(id="a1"), event(id="a2", attributes={"principal": "root"}))
    with acting_as(RELAY):  # passes on the owner and principal of its service's writes
        await publish(requests, event(id="r1", attributes={"owner": "bob", "principal": "bob"}))

    with acting_as(RELAY):
        stamped = {
            e.id: (e.attributes["owner"], e.attributes["principal"])
            for e in await history(requests)
        }
    assert stamped == {"a1": ("alice", "alice"), "a2": ("alice", "alice"), "r1": ("bob", "bob")}


async def test_a_caller_without_events_admin_publishes_only_its_own_events(
    requests: EventRequests,
) -> None:
    with acting_as(BOB), pytest.raises(PermissionDeniedError) as caught:
        await publish(requests, event(id="forged", attributes={"owner": "alice"}))

    assert caught.value.reason == "OWNER_NOT_CALLER"


async def test_a_caller_sees_only_its_own_events_in_lists_subscriptions_and_status(
    requests: EventRequests,
) -> None:
    with acting_as(ALICE):
        [alices] = await publish(requests, event(id="alices"))
    with acting_as(BOB):
        [bobs] = await publish(requests, event(id="bobs"))

    with acting_as(BOB):
        assert [e.id for e in await history(requests)] == [bobs]
        assert [e.id for e in await subscribed(requests)] == [bobs]
        with pytest.raises(NotFoundError) as hidden:
            await requests.status(alices)
        with pytest.raises(NotFoundError) as missing:
            await requests.status("no-such-event")
        assert (await requests.status(bobs))[0].id == bobs
    with acting_as(RELAY):
        assert sorted(e.id for e in await subscribed(requests)) == sorted([alices, bobs])

    assert hidden.value.reason == missing.value.reason == "EVENT_NOT_FOUND"


async def test_a_page_of_someone_elses_events_is_short_but_paging_goes_on(
    requests: EventRequests,
) -> None:
    with acting_as(ALICE):
        await publish(requests, event(id="a1"), event(id="a2"))
    with acting_as(BOB):
        await publish(requests, event(id="b1"))

    with acting_as(BOB):
        query = HistoryQuery(EVERYTHING, None, None)
        first, token = await requests.list_events(query, 2, "")
        second, last = await requests.list_events(query, 2, token)

    assert ([e.id for e in first], [e.id for e in second], last) == ([], ["b1"], "")


async def test_consumer_groups_need_events_admin(requests: EventRequests) -> None:
    with acting_as(BOB):
        errors = []
        for call in (
            requests.subscribe(
                EVERYTHING, after="", beginning=True, group="g", consumer="c", max_unacked=0
            ),
            requests.ack("g", ["x"]),
            requests.nack("g", "x", delay=0, park=False, error=""),
        ):
            with pytest.raises(PermissionDeniedError) as caught:
                await call
            errors.append(caught.value.reason)

    assert errors == ["EVENTS_ADMIN_REQUIRED"] * 3


async def test_a_caller_sees_only_its_own_dead_letters(requests: EventRequests) -> None:
    with acting_as(ALICE):
        await publish(requests, event(id="alices"))
    with acting_as(BOB):
        await publish(requests, event(id="bobs"))
    with acting_as(RELAY):  # a worker of the group parks both
        stream = await requests.subscribe(
            EVERYTHING, after="", beginning=True, group="workers", consumer="w", max_unacked=0
        )
        parked: list[str] = []
        async with asyncio.timeout(10), aclosing(stream):
            async for item in stream:
                if isinstance(item, Delivery):
                    await requests.nack("workers", item.event.id, delay=0, park=True, error="x")
                    parked.append(item.event.id)
                if len(parked) == 2:
                    break

    with acting_as(BOB):
        letters, _ = await requests.list_dead_letters("workers", 100, "")
    with acting_as(RELAY):
        every, _ = await requests.list_dead_letters("workers", 100, "")

    assert [e.id for e, _ in letters] == ["bobs"]
    assert sorted(e.id for e, _ in every) == ["alices", "bobs"]
