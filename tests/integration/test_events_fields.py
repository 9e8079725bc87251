"""EventService fields no store can hold are INVALID_ARGUMENT naming the field, not INTERNAL.

Each case was found by the fuzzer (tests/fuzz); PostgreSQL refuses NUL in text and SQLite
a time in microseconds past 2**63, so both run.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from core.errors import InvalidArgumentError
from core.testing.services import settings_for
from mesh.events.v1 import events_pb2 as pb
from mesh.events.v1 import events_pb2_grpc
from tests.integration._events import event, events_server, failure, stub_of, take

Stub = events_pb2_grpc.EventServiceStub
AFTER_9999 = Timestamp(seconds=253402300800)


@pytest.fixture
async def stub(database_url: str) -> AsyncIterator[Stub]:
    async with events_server(settings_for(database_url)) as server, stub_of(server) as stub:
        yield stub


async def invalid_fields(call: Any) -> set[str]:
    error = await failure(call)
    assert isinstance(error, InvalidArgumentError), error
    return {v.field for v in error.violations}


async def test_an_event_time_after_year_9999_is_invalid(stub: Stub) -> None:
    late = event(time=AFTER_9999)
    assert await invalid_fields(stub.Publish(pb.PublishRequest(event=late))) == {"event.time"}
    early = event(time=Timestamp(seconds=0, nanos=-1))
    batch = pb.PublishBatchRequest(events=[event(), early])
    assert await invalid_fields(stub.PublishBatch(batch)) == {"events[1].time"}


async def test_control_characters_in_stored_text_are_invalid(stub: Stub) -> None:
    bad = event(type="mesh.test.v1.\x00", subject="things/\x00")
    fields = await invalid_fields(stub.Publish(pb.PublishRequest(event=bad)))
    assert fields == {"event.type", "event.subject"}
    history = pb.ListEventsRequest(selector=pb.Selector(subject="\x00"))
    assert await invalid_fields(stub.ListEvents(history)) == {"selector.subject"}
    ack = pb.AckRequest(group="workers", event_ids=["\x00"])
    assert await invalid_fields(stub.Ack(ack)) == {"event_ids"}
    status = pb.GetEventStatusRequest(event_id="a\x00")
    assert await invalid_fields(stub.GetEventStatus(status)) == {"event_id"}


async def test_a_consumer_name_with_control_characters_is_invalid(stub: Stub) -> None:
    request = pb.SubscribeRequest(group="workers", consumer="worker\x00")
    assert await invalid_fields(take(stub.Subscribe(request), 1)) == {"consumer"}


async def test_history_times_outside_the_timestamp_range_are_invalid(stub: Stub) -> None:
    far = Timestamp(seconds=2**62)
    assert await invalid_fields(stub.ListEvents(pb.ListEventsRequest(start_time=far))) == {
        "start_time"
    }
    before_year_1 = Timestamp(seconds=-62135596801)
    request = pb.ListEventsRequest(end_time=before_year_1)
    assert await invalid_fields(stub.ListEvents(request)) == {"end_time"}


async def test_a_nack_delay_beyond_any_timedelta_is_invalid(stub: Stub) -> None:
    huge = Duration(seconds=-129963207659323, nanos=-846)
    request = pb.NackRequest(group="workers", event_id="some-event", retry_delay=huge)
    assert await invalid_fields(stub.Nack(request)) == {"retry_delay"}
