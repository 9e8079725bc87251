"""The error record of each failed delivery attempt (type, message, stack, member, time),
on SQL and Redis: from an in-process handler, and from a remote consumer's nack; stacks
are kept and logged on the server and returned only with MESH_EVENTS_RETURN_STACKS."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from google.protobuf.duration_pb2 import Duration
from structlog.testing import capture_logs

from clients.events import EventsClient
from core.events import event_bus
from core.events.bus import EventBus
from core.events.failures import MAX_ERROR_CHARS, MAX_STACK_CHARS, EndReason
from core.events.handlers import EventHandler
from core.events.model import Event
from core.runtime.host import container_for
from core.testing.services import Running
from mesh.events.v1 import events_pb2 as pb
from tests.integration._events import (
    drop_namespace,
    event,
    events_server,
    events_settings,
    eventually,
)

BACKENDS = ["sql", "redis"]


class Broken(EventHandler):
    group = "broken"
    types = ("mesh.test.v1.*",)
    attempts, backoff = 2, 0.01

    async def process(self, event: Event) -> None:
        raise KeyError(f"no customer for {event.id}")


@pytest.fixture(params=BACKENDS)
async def bus(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[EventBus]:
    settings = events_settings(request.param, tmp_path)
    container = container_for(settings)
    bus = event_bus(container, settings, serving=True)
    try:
        async with container.running():
            yield bus
    finally:
        await drop_namespace(settings.cache_namespace)


async def test_a_handler_failure_keeps_its_type_message_stack_and_member(bus: EventBus) -> None:
    handler = Broken(bus)
    with capture_logs() as logs:
        await handler.start()
        try:
            await bus.publish([event(id="order-7")])

            async def dead() -> None:
                assert handler.dead_lettered == 1

            await eventually(dead)
        finally:
            await handler.stop()
        _, [status] = await bus.event_status("order-7")

    [error] = status.errors
    assert error.error_type == "KeyError"
    assert error.message == "KeyError: 'no customer for order-7'"
    assert error.reason == EndReason.HANDLER_FAILED
    assert error.attempt == 1
    assert error.time > 0
    assert error.consumer.startswith("handler:broken.")
    assert error.stack.startswith("Traceback (most recent call last):")
    assert "in process" in error.stack
    assert error.stack.rstrip().endswith(error.message)
    [logged] = [e for e in logs if e["event"] == "event.handler_failed"]
    assert (logged["id"], logged["error_type"]) == ("order-7", "KeyError")
    assert isinstance(logged["exc_info"], KeyError)  # the stack goes into the log line


async def nack_twice(server: Running) -> pb.GetEventStatusResponse:
    """Two failed attempts of one event, the second with a huge message and stack."""
    async with EventsClient(server.address) as events:
        sent = await events.publish(event(id="e1"))
        async with events.subscribe(group="g", types=["mesh.test.v1.*"], beginning=True) as s:
            assert (await anext(s)).attempt == 1
            try:
                {}["missing"]
            except KeyError as exc:
                await events.nack("g", sent.id, error=exc)
            assert (await anext(s)).attempt == 2
            await events.nack("g", sent.id, error="x" * 5000, retry_delay=60)
        return await events.status(sent.id)


@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_nack_keeps_the_consumers_error_and_hides_its_stack_in_production(
    backend: str, tmp_path: Path
) -> None:
    settings = events_settings(backend, tmp_path, return_stacks=False)
    try:
        async with events_server(settings) as server:
            status = await nack_twice(server)
    finally:
        await drop_namespace(settings.cache_namespace)

    [group] = status.groups
    first, second = group.errors
    assert (first.error_type, first.message) == ("KeyError", "KeyError: 'missing'")
    assert first.reason == pb.DELIVERY_END_REASON_NACKED
    assert first.consumer == group.consumer
    assert first.consumer.startswith("member.")
    assert first.stack == ""  # kept on the server, not returned
    assert (second.error_type, len(second.message)) == ("", MAX_ERROR_CHARS)


@pytest.mark.parametrize("backend", BACKENDS)
async def test_stacks_are_returned_when_the_server_is_told_to(backend: str, tmp_path: Path) -> None:
    settings = events_settings(backend, tmp_path, return_stacks=True)
    try:
        async with events_server(settings) as server:
            status = await nack_twice(server)
            async with EventsClient(server.address) as events:
                huge = "Traceback (most recent call last):\n" + "  line\n" * 2000 + "E: boom"
                await events.publish(event(id="e3", subject="things/3"))
                h = events.subscribe(group="h", subject="things/3", beginning=True)
                async with h as s:
                    assert (await anext(s)).event.id == "e3"
                    await events._stub.Nack(  # a consumer in another language sends its own
                        pb.NackRequest(
                            group="h",
                            event_id="e3",
                            error="E: boom",
                            error_type="E",
                            stack=huge,
                            retry_delay=Duration(seconds=60),
                        )
                    )
                found = (await events.status("e3")).groups
                [kept] = next(g for g in found if g.group == "h").errors
    finally:
        await drop_namespace(settings.cache_namespace)

    first = status.groups[0].errors[0]
    assert first.stack.startswith("Traceback")
    assert "KeyError: 'missing'" in first.stack
    assert kept.error_type == "E"
    assert len(kept.stack) == MAX_STACK_CHARS
    assert kept.stack.endswith("E: boom")
