"""EventService through gRPC, on the embedded SQL backend and on Redis Streams."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from core.errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    OutOfRangeError,
    UnavailableError,
)
from mesh.events.v1 import events_pb2 as pb
from mesh.events.v1 import events_pb2_grpc
from tests.conftest import Running
from tests.integration._events import (
    drop_namespace,
    event,
    events_of,
    events_server,
    events_settings,
    eventually,
    failure,
    stub_of,
    take,
)

Stub = events_pb2_grpc.EventServiceStub
BEGINNING = pb.StartPosition(beginning=True)


@pytest.fixture(params=["sql", "redis"])
async def server(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Running]:
    settings = events_settings(request.param, tmp_path, visibility=0.5, max_attempts=3)
    try:
        async with events_server(settings) as running:
            yield running
    finally:
        await drop_namespace(settings.cache_namespace)


@pytest.fixture
async def stub(server: Running) -> AsyncIterator[Stub]:
    async with stub_of(server) as stub:
        yield stub


async def publish(stub: Stub, *events: pb.Event) -> list[pb.PublishResponse]:
    response = await stub.PublishBatch(pb.PublishBatchRequest(events=events))
    return list(response.results)


# -- publishing ------------------------------------------------------------------------


async def test_a_published_event_gets_an_id_a_position_and_a_time(stub: Stub) -> None:
    response = await stub.Publish(pb.PublishRequest(event=event(subject="things/1")))
    assert response.id
    assert response.position
    assert not response.duplicate
    status = await stub.GetEventStatus(pb.GetEventStatusRequest(event_id=response.id))
    assert status.event.position == response.position
    assert status.event.time.seconds > 0
    assert status.event.version == "1"


async def test_a_bad_event_is_invalid_argument_naming_each_field(stub: Stub) -> None:
    error = await failure(stub.Publish(pb.PublishRequest(event=pb.Event(id="no spaces"))))
    assert isinstance(error, InvalidArgumentError)
    assert error.reason == "INVALID_EVENT"
    fields = {v.field for v in error.violations}
    assert fields == {"event.type", "event.source", "event.id"}


async def test_an_oversized_event_is_rejected(stub: Stub) -> None:
    big = event(attributes={"blob": "x" * 300_000})
    error = await failure(stub.Publish(pb.PublishRequest(event=big)))
    assert isinstance(error, InvalidArgumentError)
    assert [v.field for v in error.violations] == ["event.data"]


async def test_a_batch_is_stored_all_or_none(stub: Stub) -> None:
    error = await failure(publish(stub, event(id="ok-1"), event(type="")))
    assert isinstance(error, InvalidArgumentError)
    assert [v.field for v in error.violations] == ["events[1].type"]
    missing = await failure(stub.GetEventStatus(pb.GetEventStatusRequest(event_id="ok-1")))
    assert isinstance(missing, NotFoundError)
    assert missing.reason == "EVENT_NOT_FOUND"

    results = await publish(stub, *(event(id=f"e-{i}") for i in range(5)))
    assert [r.id for r in results] == [f"e-{i}" for i in range(5)]
    history = await stub.ListEvents(pb.ListEventsRequest())
    assert [e.id for e in history.events] == [f"e-{i}" for i in range(5)]


async def test_a_duplicate_event_id_returns_the_stored_position(stub: Stub) -> None:
    [first] = await publish(stub, event(id="once"))
    again = await stub.Publish(pb.PublishRequest(event=event(id="once")))
    assert again.duplicate
    assert again.position == first.position
    [a, b] = await publish(stub, event(id="twice"), event(id="twice"))
    assert not a.duplicate
    assert b.duplicate
    assert a.position == b.position
    history = await stub.ListEvents(pb.ListEventsRequest())
    assert [e.id for e in history.events] == ["once", "twice"]


# -- subscriptions ---------------------------------------------------------------------


async def test_a_subscription_sends_the_backlog_then_caught_up_then_live_events(
    stub: Stub,
) -> None:
    await publish(stub, event(id="old-1"), event(id="old-2"))
    call = stub.Subscribe(pb.SubscribeRequest(start=BEGINNING))
    backlog = await take(call, 0, until=lambda m: m.HasField("caught_up"))
    assert [e.id for e in events_of(backlog)] == ["old-1", "old-2"]
    assert backlog[-1].caught_up.position == events_of(backlog)[-1].position
    await publish(stub, event(id="live-1"))
    live = await take(call, 1)
    assert [e.id for e in events_of(live)] == ["live-1"]
    call.cancel()


async def test_a_subscription_from_now_skips_the_backlog(stub: Stub) -> None:
    await publish(stub, event(id="before"))
    call = stub.Subscribe(pb.SubscribeRequest())
    await take(call, 0, until=lambda m: m.HasField("caught_up"))
    await publish(stub, event(id="after"))
    assert [e.id for e in events_of(await take(call, 1))] == ["after"]
    call.cancel()


async def test_selectors_filter_by_type_prefix_and_subject(stub: Stub) -> None:
    await publish(
        stub,
        event("mesh.a.v1.x", id="ax", subject="s/1"),
        event("mesh.b.v1.y", id="by", subject="s/1"),
        event("mesh.a.v1.z", id="az", subject="s/2"),
        event("mesh.ab.v1.q", id="abq", subject="s/1"),
    )
    selector = pb.Selector(types=["mesh.a.v1.*"])
    call = stub.Subscribe(pb.SubscribeRequest(selector=selector, start=BEGINNING))
    got = await take(call, 0, until=lambda m: m.HasField("caught_up"))
    assert [e.id for e in events_of(got)] == ["ax", "az"]
    call.cancel()
    selector = pb.Selector(types=["mesh.a.v1.*", "mesh.ab.v1.q"], subject="s/1")
    call = stub.Subscribe(pb.SubscribeRequest(selector=selector, start=BEGINNING))
    got = await take(call, 0, until=lambda m: m.HasField("caught_up"))
    assert [e.id for e in events_of(got)] == ["ax", "abq"]
    call.cancel()


async def test_resuming_after_a_checkpoint_has_no_gap_and_no_duplicate(stub: Stub) -> None:
    await publish(stub, *(event(id=f"a-{i}") for i in range(30)))
    call = stub.Subscribe(pb.SubscribeRequest(start=BEGINNING))
    first = await take(call, 0, until=lambda m: m.HasField("caught_up"))
    call.cancel()
    resume_at = first[-1].caught_up.position
    await publish(stub, *(event(id=f"b-{i}") for i in range(30)))
    start = pb.StartPosition(after=resume_at)
    call = stub.Subscribe(pb.SubscribeRequest(start=start))
    second = await take(call, 0, until=lambda m: m.HasField("caught_up"))
    call.cancel()
    assert [e.id for e in events_of(second)] == [f"b-{i}" for i in range(30)]


async def test_checkpoints_advance_past_events_a_selector_skips(stub: Stub) -> None:
    selector = pb.Selector(types=["mesh.wanted.v1.thing"])
    call = stub.Subscribe(pb.SubscribeRequest(selector=selector, start=BEGINNING))
    await take(call, 0, until=lambda m: m.HasField("caught_up"))
    [other] = await publish(stub, event("mesh.other.v1.thing"))
    got = await take(call, 0, until=lambda m: m.HasField("checkpoint"))
    assert not events_of(got)
    assert got[-1].checkpoint.position == other.position
    call.cancel()


async def test_a_slow_subscriber_does_not_slow_a_fast_one(stub: Stub) -> None:
    slow = stub.Subscribe(pb.SubscribeRequest(start=BEGINNING))
    await take(slow, 0, until=lambda m: m.HasField("caught_up"))  # then never reads again
    fast = stub.Subscribe(pb.SubscribeRequest(start=BEGINNING))
    await take(fast, 0, until=lambda m: m.HasField("caught_up"))
    for batch in range(6):
        await publish(stub, *(event(id=f"n-{batch}-{i}", subject="x" * 400) for i in range(500)))
    got = events_of(await take(fast, 3000))
    assert len(got) == 3000
    assert got[-1].id == "n-5-499"
    slow.cancel()
    fast.cancel()


async def test_malformed_positions_and_patterns_are_invalid_argument(stub: Stub) -> None:
    for request in (
        pb.SubscribeRequest(start=pb.StartPosition(after="not-a-position!")),
        pb.SubscribeRequest(selector=pb.Selector(types=["bad pattern"])),
        pb.SubscribeRequest(group="bad group name"),
        pb.SubscribeRequest(group="g", max_unacked=-1),
    ):
        error = await failure(take(stub.Subscribe(request), 1))
        assert isinstance(error, InvalidArgumentError), request


async def test_stopping_the_server_ends_subscriptions_without_waiting_for_the_grace(
    tmp_path: Path,
) -> None:
    settings = events_settings("sql", tmp_path)
    async with events_server(settings) as running, stub_of(running) as stub:
        call = stub.Subscribe(pb.SubscribeRequest(start=BEGINNING))
        await take(call, 0, until=lambda m: m.HasField("caught_up"))
        stopping = asyncio.create_task(running.container.stop())
        error = await failure(take(call, 1))
        assert isinstance(error, UnavailableError)
        assert error.reason == "SERVER_STOPPING"
        await stopping


# -- consumer groups -------------------------------------------------------------------


def join(stub: Stub, group: str = "workers", **fields: object) -> object:
    request = pb.SubscribeRequest(group=group, start=BEGINNING, **fields)  # type: ignore[arg-type]
    return stub.Subscribe(request)


async def test_a_group_shares_events_among_its_members(stub: Stub) -> None:
    await publish(stub, *(event(id=f"g-{i}") for i in range(20)))
    one = join(stub, consumer="one", max_unacked=10)
    two = join(stub, consumer="two", max_unacked=10)
    got_one = events_of(await take(one, 10))
    got_two = events_of(await take(two, 10))
    ids = sorted(e.id for e in got_one + got_two)
    assert ids == sorted(f"g-{i}" for i in range(20))
    one.cancel()
    two.cancel()


async def test_an_unacked_event_goes_to_another_member_when_its_member_dies(
    stub: Stub,
) -> None:
    await publish(stub, event(id="work"))
    dying = join(stub, consumer="dying")
    [_first] = events_of(await take(dying, 1))
    dying.cancel()  # killed before acking

    async def given_back() -> pb.DeliveryError:
        status = await stub.GetEventStatus(pb.GetEventStatusRequest(event_id="work"))
        assert status.groups[0].state == pb.DELIVERY_STATE_RETRYING
        [error] = status.groups[0].errors
        return error

    error = await eventually(given_back)
    assert error.reason == pb.DELIVERY_END_REASON_DISCONNECTED
    assert error.message.startswith("consumer 'dying.")
    assert error.message.endswith("' disconnected before acking")
    assert error.attempt == 1
    survivor = join(stub, consumer="survivor")
    messages = await take(survivor, 1)
    [again] = events_of(messages)
    assert again.id == "work"
    assert messages[-1].attempt == 2
    await stub.Ack(pb.AckRequest(group="workers", event_ids=["work"]))
    status = await stub.GetEventStatus(pb.GetEventStatusRequest(event_id="work"))
    assert status.groups[0].state == pb.DELIVERY_STATE_ACKED
    assert status.groups[0].attempts == 2
    assert list(status.groups[0].errors) == [error]  # handed out again: no timeout added
    survivor.cancel()


async def test_an_unacked_event_is_redelivered_after_the_visibility_timeout(stub: Stub) -> None:
    await publish(stub, event(id="slow-work"))
    member = join(stub)
    first = await take(member, 1)
    again = await take(member, 1)  # never acked: back after 0.5 s
    assert events_of(first)[0].id == events_of(again)[0].id == "slow-work"
    assert again[-1].attempt == 2
    status = await stub.GetEventStatus(pb.GetEventStatusRequest(event_id="slow-work"))
    [error] = status.groups[0].errors
    assert error.reason == pb.DELIVERY_END_REASON_TIMED_OUT
    assert error.message.endswith("' did not ack within the visibility timeout")
    assert error.attempt == 1
    member.cancel()


async def test_nack_retries_after_the_delay_and_park_dead_letters(stub: Stub) -> None:
    await publish(stub, event(id="retry-me"), event(id="park-me"))
    # Not every type: the dead letter's own system event would reach the group too.
    member = join(stub, max_unacked=2, selector=pb.Selector(types=["mesh.test.v1.*"]))
    assert {e.id for e in events_of(await take(member, 2))} == {"retry-me", "park-me"}
    delay = Duration(nanos=200_000_000)
    nacked = await stub.Nack(
        pb.NackRequest(group="workers", event_id="retry-me", retry_delay=delay, error="flaky")
    )
    assert nacked.state == pb.DELIVERY_STATE_RETRYING
    parked = await stub.Nack(
        pb.NackRequest(group="workers", event_id="park-me", park=True, error="poison")
    )
    assert parked.state == pb.DELIVERY_STATE_DEAD_LETTERED
    retried = await take(member, 1)
    assert events_of(retried)[0].id == "retry-me"
    assert retried[-1].attempt == 2
    await stub.Ack(pb.AckRequest(group="workers", event_ids=["retry-me"]))

    letters = await stub.ListDeadLetters(pb.ListDeadLettersRequest(group="workers"))
    [letter] = letters.dead_letters
    assert letter.event.id == "park-me"
    assert letter.status.errors[-1].message == "poison"
    assert letter.status.errors[-1].reason == pb.DELIVERY_END_REASON_NACKED
    replayed = await stub.ReplayDeadLetters(pb.ReplayDeadLettersRequest(group="workers"))
    assert replayed.replayed_count == 1
    back = await take(member, 1)
    assert events_of(back)[0].id == "park-me"
    member.cancel()


async def test_an_event_is_dead_lettered_after_the_maximum_attempts(stub: Stub) -> None:
    await publish(stub, event(id="doomed"))
    member = join(stub)
    for attempt in (1, 2, 3):
        got = await take(member, 1)
        assert got[-1].attempt == attempt
        await stub.Nack(pb.NackRequest(group="workers", event_id="doomed", error=f"no {attempt}"))

    async def dead() -> pb.GetEventStatusResponse:
        status = await stub.GetEventStatus(pb.GetEventStatusRequest(event_id="doomed"))
        assert status.groups[0].state == pb.DELIVERY_STATE_DEAD_LETTERED
        return status

    status = await eventually(dead)
    assert [e.message for e in status.groups[0].errors] == ["no 1", "no 2", "no 3"]
    member.cancel()


async def test_status_follows_an_event_through_each_stage(stub: Stub) -> None:
    await publish(stub, event(id="first"), event(id="second"))
    member = join(stub, max_unacked=1)
    await take(member, 1)

    async def states() -> dict[str, int]:
        out = {}
        for event_id in ("first", "second"):
            status = await stub.GetEventStatus(pb.GetEventStatusRequest(event_id=event_id))
            out[event_id] = status.groups[0].state
        return out

    assert await states() == {
        "first": pb.DELIVERY_STATE_DELIVERED,
        "second": pb.DELIVERY_STATE_PENDING,
    }
    await stub.Nack(
        pb.NackRequest(group="workers", event_id="first", retry_delay=Duration(seconds=60))
    )
    await take(member, 1)  # the credit freed by the nack takes "second"
    assert await states() == {
        "first": pb.DELIVERY_STATE_RETRYING,
        "second": pb.DELIVERY_STATE_DELIVERED,
    }
    await stub.Ack(pb.AckRequest(group="workers", event_ids=["second"]))
    await stub.Nack(pb.NackRequest(group="workers", event_id="first", park=True))
    assert await states() == {
        "first": pb.DELIVERY_STATE_DEAD_LETTERED,
        "second": pb.DELIVERY_STATE_ACKED,
    }
    member.cancel()


async def test_acks_are_idempotent_and_unknown_ones_are_not_found(stub: Stub) -> None:
    await publish(stub, event(id="a"))
    member = join(stub)
    await take(member, 1)
    assert (await stub.Ack(pb.AckRequest(group="workers", event_ids=["a"]))).acked_count == 1
    assert (await stub.Ack(pb.AckRequest(group="workers", event_ids=["a"]))).acked_count == 0
    error = await failure(stub.Ack(pb.AckRequest(group="workers", event_ids=["never"])))
    assert isinstance(error, NotFoundError)
    assert error.reason == "DELIVERY_NOT_FOUND"
    error = await failure(stub.Nack(pb.NackRequest(group="workers", event_id="a")))
    assert isinstance(error, FailedPreconditionError)
    assert error.reason == "ALREADY_ACKED"
    member.cancel()


async def test_a_group_keeps_its_selector(stub: Stub) -> None:
    member = join(stub, selector=pb.Selector(types=["mesh.a.v1.*"]))
    await take(member, 0, until=lambda m: m.HasField("caught_up"))
    other = join(stub, selector=pb.Selector(types=["mesh.b.v1.*"]))
    error = await failure(take(other, 1))
    assert isinstance(error, FailedPreconditionError)
    assert error.reason == "GROUP_SELECTOR_MISMATCH"
    member.cancel()


async def test_dead_letters_of_an_unknown_group_are_not_found(stub: Stub) -> None:
    error = await failure(stub.ListDeadLetters(pb.ListDeadLettersRequest(group="nobody")))
    assert isinstance(error, NotFoundError)
    assert error.reason == "GROUP_NOT_FOUND"


# -- history ---------------------------------------------------------------------------


async def test_history_pages_by_type_subject_and_time(stub: Stub) -> None:
    early, late = Timestamp(seconds=1_700_000_000), Timestamp(seconds=1_800_000_000)
    await publish(
        stub,
        *(event("mesh.h.v1.a", id=f"h-{i}", subject="s/1", time=early) for i in range(5)),
        event("mesh.h.v1.b", id="other-type", time=early),
        event("mesh.h.v1.a", id="late", subject="s/1", time=late),
    )
    selector = pb.Selector(types=["mesh.h.v1.a"], subject="s/1")
    request = pb.ListEventsRequest(selector=selector, end_time=Timestamp(seconds=1_750_000_000))
    request.page_size = 2
    seen = []
    while True:
        page = await stub.ListEvents(request)
        seen += [e.id for e in page.events]
        if not page.next_page_token:
            break
        request.page_token = page.next_page_token
    assert seen == [f"h-{i}" for i in range(5)]

    foreign = pb.ListEventsRequest(page_token=page.next_page_token or "bogus")
    error = await failure(stub.ListEvents(foreign))
    assert isinstance(error, InvalidArgumentError)


async def test_a_position_past_the_newest_event_is_out_of_range(stub: Stub) -> None:
    [stored] = await publish(stub, event())
    ahead = stored.position.replace(stored.position[0], "9", 1) + "9"
    request = pb.SubscribeRequest(start=pb.StartPosition(after=ahead))
    error = await failure(take(stub.Subscribe(request), 1))
    assert isinstance(error, OutOfRangeError)
    assert error.reason == "POSITION_AHEAD"
    request = pb.SubscribeRequest(start=pb.StartPosition(after="x"))
    error = await failure(take(stub.Subscribe(request), 1))
    assert isinstance(error, InvalidArgumentError)
    assert [v.field for v in error.violations] == ["start.after"]
