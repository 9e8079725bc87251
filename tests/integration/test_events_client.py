"""EventsClient against a real events server on SQLite: publish, subscribe, groups, status.

The server runs in-process the way `mesh serve events` runs it; a restart is a new
container on the same database file and the same port, as a redeployed server would be.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from google.protobuf.struct_pb2 import Struct
from structlog.testing import capture_logs

from clients.events import EventsClient, Subscription, make_event
from core.config import Settings
from core.errors import InvalidArgumentError, NotFoundError, UnavailableError
from core.events import event_bus
from core.runtime.container import Container
from core.runtime.server import GrpcServer
from core.testing.services import assemble
from mesh.events.v1 import events_pb2 as pb
from servers.events import server as events_server
from tests._services import EVENTS
from tests.conftest import FAST, Running, running, settings_for

WITHIN = 10.0  # seconds any one wait of these tests may take
ACKED = pb.DELIVERY_STATE_ACKED
DEAD_LETTERED = pb.DELIVERY_STATE_DEAD_LETTERED
RETRYING = pb.DELIVERY_STATE_RETRYING


def events_container(settings: Settings) -> tuple[Container, GrpcServer]:
    """A container running the events service the way `mesh serve events` does."""
    return assemble([EVENTS], settings)


@asynccontextmanager
async def events_running(settings: Settings) -> AsyncIterator[Running]:
    container, server = events_container(settings)
    async with running(container, server) as r:
        yield r


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return settings_for(f"sqlite+aiosqlite:///{tmp_path / 'events.db'}")


@pytest.fixture
async def server(settings: Settings) -> AsyncIterator[Running]:
    async with events_running(settings) as r:
        yield r


@pytest.fixture
async def events(server: Running) -> AsyncIterator[EventsClient]:
    async with EventsClient(server.address) as client:
        yield client


def an_event(type: str = "mesh.test.v1.thing.done", **fields: Any) -> pb.Event:
    return make_event(type, "mesh.test.v1", **fields)


async def take(stream: Subscription, count: int) -> list[pb.SubscribeResponse]:
    """The next `count` messages of `stream`; fails the test if they take too long."""
    found: list[pb.SubscribeResponse] = []
    async with asyncio.timeout(WITHIN):
        while len(found) < count:
            found.append(await anext(stream))
    return found


# -- publishing --------------------------------------------------------------------------


async def test_publish_gives_an_event_an_id_and_stores_an_id_once(events: EventsClient) -> None:
    event = an_event(data=Struct())
    first = await events.publish(event)
    assert event.id == ""  # the caller's message is left as it was
    assert uuid.UUID(first.id)
    assert not first.duplicate

    again = await events.publish(an_event(id=first.id))

    assert again.duplicate
    assert (again.id, again.position) == (first.id, first.position)
    assert [e.id for e in (await events.history()).events] == [first.id]


class LosesFirstAnswer:
    """Wraps the events servicer: the first `rpc` is stored, then its answer is lost.

    The server ends that call with UNAVAILABLE after storing, as when a connection drops
    between the store and the reply: the client's retry policy must try again, and the
    store must recognise the event ids it already has.
    """

    def __init__(self, servicer: Any, rpc: str, lost: list[str]) -> None:
        self._servicer, self._rpc, self._lost = servicer, rpc, lost

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._servicer, name)
        if name != self._rpc:
            return method

        async def flaky(request: Any, context: Any) -> Any:
            response = await method(request, context)
            if not self._lost:
                self._lost.append(name)
                raise UnavailableError("the answer was lost", reason="TEST_ANSWER_LOST")
            return response

        return flaky


@pytest.mark.parametrize("rpc", ["Publish", "PublishBatch"])
async def test_a_publish_whose_response_was_lost_is_retried_and_deduped(
    settings: Settings, rpc: str
) -> None:
    lost: list[str] = []
    container = Container(FAST, health_interval=0.2, health_timeout=1.0)
    services = [
        replace(s, servicer=LosesFirstAnswer(s.servicer, rpc, lost))
        for s in events_server.register(container, settings)
    ]
    server = GrpcServer.for_container(container, services, settings)
    async with running(container, server) as r, EventsClient(r.address) as events:
        if rpc == "Publish":
            results = [await events.publish(an_event())]
        else:
            results = await events.publish_batch([an_event(), an_event(id="given")])

        assert lost == [rpc]  # the first try was stored, then its answer was lost
        assert all(r.duplicate for r in results)  # the retry carried the same ids
        stored = (await events.history()).events
        assert [e.id for e in stored] == [r.id for r in results]


async def test_an_invalid_event_is_invalid_argument_naming_each_field(
    events: EventsClient,
) -> None:
    with pytest.raises(InvalidArgumentError) as single:
        await events.publish(pb.Event(id="not/valid"))
    with pytest.raises(InvalidArgumentError) as batch:
        await events.publish_batch([an_event(), pb.Event(type="mesh.test.v1.x")])

    assert single.value.reason == "INVALID_EVENT"
    assert {v.field for v in single.value.violations} == {"event.type", "event.source", "event.id"}
    assert [v.field for v in batch.value.violations] == ["events[1].source"]
    assert (await events.history()).events == []  # all or none


# -- plain subscriptions -----------------------------------------------------------------


async def test_subscription_from_the_beginning_sees_stored_then_live_events(
    events: EventsClient,
) -> None:
    stored = await events.publish(an_event())
    async with events.subscribe(beginning=True, markers=True) as stream:
        backlog = await take(stream, 2)
        live = await events.publish(an_event())
        async with asyncio.timeout(WITHIN):
            message = await anext(stream)
            while message.HasField("checkpoint"):
                message = await anext(stream)

    assert backlog[0].event.id == stored.id
    assert backlog[1].caught_up.position == stored.position
    assert message.event.id == live.id
    assert stream.position == live.position


async def test_closing_a_subscription_ends_a_read_waiting_in_another_task(
    events: EventsClient,
) -> None:
    stream = events.subscribe(markers=True)
    seen: list[str] = []
    caught_up = asyncio.Event()

    async def read() -> None:
        async for message in stream:
            seen.append(str(message.WhichOneof("kind")))
            if message.HasField("caught_up"):
                caught_up.set()

    async with asyncio.timeout(WITHIN), asyncio.TaskGroup() as tg:
        reader = tg.create_task(read())
        await caught_up.wait()
        await stream.aclose()

    assert not reader.cancelled()  # its loop simply ended
    assert seen[0] == "caught_up"
    assert await anext(stream, None) is None


async def test_a_malformed_selector_fails_the_subscription_without_retrying(
    events: EventsClient,
) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        async with asyncio.timeout(WITHIN):
            await anext(events.subscribe(types=["not a pattern"]))
    assert caught.value.reason == "INVALID_SELECTOR"


async def test_subscription_resumes_after_a_restart_with_no_gap_and_no_repeat(
    settings: Settings,
) -> None:
    with capture_logs() as logs:
        async with AsyncExitStack() as first:
            server = await first.enter_async_context(events_running(settings))
            async with (
                EventsClient(server.address, max_backoff=0.2) as events,
                events.subscribe(beginning=True) as stream,
            ):
                before = [await events.publish(an_event(subject=f"n/{i}")) for i in range(3)]
                seen = [m.event.id for m in await take(stream, 3)]
                await first.aclose()  # the stream ends with UNAVAILABLE (SERVER_STOPPING)

                # Stored while no server listens: only a resume from the last position finds
                # these; a subscription that started again at "now" would miss them.
                await publish_offline(settings, [an_event(subject=f"n/{i}") for i in (3, 4)])
                again = settings_for(
                    settings.database_url, address=f"127.0.0.1:{server.server.port}"
                )
                async with events_running(again):
                    after = await events.publish(an_event(subject="n/5"))
                    seen += [m.event.id for m in await take(stream, 3)]

    assert len(seen) == len(set(seen)) == 6
    assert seen[:3] == [p.id for p in before]
    assert seen[-1] == after.id
    retries = [e for e in logs if e["event"] == "retry.scheduled"]
    assert retries[0]["operation"] == "events.subscribe"  # the end of the stopped server's
    assert retries[0]["error"] == "UnavailableError"  # stream, then each refused reconnect


async def test_a_subscription_gives_up_after_an_outage_longer_than_give_up_after() -> None:
    async with EventsClient("127.0.0.1:1", give_up_after=0.2, max_backoff=0.05) as events:
        with capture_logs() as logs, pytest.raises(UnavailableError):
            async with asyncio.timeout(WITHIN):
                await anext(events.subscribe())

    retries = [e for e in logs if e["event"] == "retry.scheduled"]
    assert retries
    assert {e["operation"] for e in retries} == {"events.subscribe"}


async def publish_offline(settings: Settings, batch: list[pb.Event]) -> None:
    """Stores events through a bus of its own on the server's database, with no server."""
    container = Container(FAST)
    bus = event_bus(container, settings, serving=True)
    async with container.running():
        await bus.publish(batch)


# -- consumer groups ---------------------------------------------------------------------


async def test_group_members_share_the_events_and_ack_them(events: EventsClient) -> None:
    sent = [await events.publish(an_event()) for _ in range(4)]
    delivered: list[str] = []
    done = asyncio.Event()

    async def work(consumer: str) -> None:
        async with events.subscribe(group="workers", consumer=consumer, beginning=True) as s:
            async for message in s:
                delivered.append(message.event.id)
                await events.ack("workers", [message.event.id])
                if len(delivered) == len(sent):
                    done.set()

    async with asyncio.timeout(WITHIN), asyncio.TaskGroup() as tg:
        members = [tg.create_task(work("a")), tg.create_task(work("b"))]
        await done.wait()
        for member in members:
            member.cancel()

    assert sorted(delivered) == sorted(r.id for r in sent)
    for result in sent:
        [group] = (await events.status(result.id)).groups
        assert (group.group, group.state, group.attempts) == ("workers", ACKED, 1)


async def test_a_member_that_breaks_out_gives_its_events_back_at_once(
    events: EventsClient,
) -> None:
    sent = await events.publish(an_event())
    async for message in events.subscribe(group="workers", beginning=True):
        assert message.event.id == sent.id
        break  # no ack; the subscription is collected and its call cancelled

    async with events.subscribe(group="workers") as other:
        [again] = await take(other, 1)

    assert (again.event.id, again.attempt) == (sent.id, 2)


async def test_a_parked_event_is_a_dead_letter_until_replayed(events: EventsClient) -> None:
    sent = await events.publish(an_event())
    # Not every type: the dead letter's own system event (mesh.system.v1.*) would come too.
    async with events.subscribe(
        group="workers", types=["mesh.test.v1.*"], beginning=True
    ) as stream:
        [first] = await take(stream, 1)
        state = await events.nack("workers", sent.id, park=True, error="no such customer")
        letters = await events.dead_letters("workers")
        assert await events.replay("workers") == 1
        [second] = await take(stream, 1)
        retrying = await events.nack("workers", sent.id, retry_delay=60, error="later")
        status = await events.status(sent.id)

    assert first.attempt == 1
    assert state == DEAD_LETTERED
    [letter] = letters.dead_letters
    assert letter.event.id == sent.id
    assert [e.message for e in letter.status.errors] == ["no such customer"]
    assert (second.event.id, second.attempt) == (sent.id, 1)  # attempts reset by the replay
    assert retrying == RETRYING
    assert [(g.group, g.state) for g in status.groups] == [("workers", RETRYING)]
    assert (await events.dead_letters("workers")).dead_letters == []


async def test_acking_an_event_never_delivered_is_not_found(events: EventsClient) -> None:
    sent = await events.publish(an_event())
    with pytest.raises(NotFoundError) as caught:
        await events.ack("workers", [sent.id])
    assert caught.value.reason == "DELIVERY_NOT_FOUND"


# -- reading -----------------------------------------------------------------------------


async def test_status_of_an_unknown_event_is_not_found(events: EventsClient) -> None:
    with pytest.raises(NotFoundError) as caught:
        await events.status("no-such-event")
    assert caught.value.reason == "EVENT_NOT_FOUND"


async def test_history_selects_by_type_and_subject_a_page_at_a_time(
    events: EventsClient,
) -> None:
    wanted = [
        await events.publish(an_event("mesh.test.v1.a.created", subject="things/1")),
        await events.publish(an_event("mesh.test.v1.a.deleted", subject="things/1")),
    ]
    await events.publish(an_event("mesh.test.v1.b.created", subject="things/1"))
    await events.publish(an_event("mesh.test.v1.a.created", subject="things/2"))

    pages, token = [], ""
    while True:
        page = await events.history(
            types=["mesh.test.v1.a.*"], subject="things/1", page_size=1, page_token=token
        )
        pages.append([e.id for e in page.events])
        token = page.next_page_token
        if not token:
            break

    assert [i for page in pages for i in page] == [r.id for r in wanted]
    with pytest.raises(InvalidArgumentError) as caught:
        await events.history(page_token="forged")
    assert caught.value.reason == "INVALID_PAGE_TOKEN"
