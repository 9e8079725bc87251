"""Trace context across events, in-process: publish, outbox, relay and handler spans.

Each test turns telemetry on with `configure_telemetry(span_exporter=...)`, an in-memory
exporter of its own, and off at the end. The bus runs on a SQLite file; the outbox tests
run on SQLite and PostgreSQL, since their create paths differ.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path

import pytest
from google.protobuf.wrappers_pb2 import StringValue
from opentelemetry import trace
from opentelemetry.sdk.metrics.export import NumberDataPoint
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from core.config import TelemetrySettings
from core.data.database import Database
from core.data.revisions import CORE_MIGRATIONS
from core.events.bus import EventBus
from core.events.handlers import EventHandler
from core.events.model import CaughtUp, Event, HistoryQuery, Selector
from core.events.outbox import emit, outbox
from core.events.relay import OutboxRelay
from core.events.sql import SqlEventStore
from core.events.tracing import consumer_span, producer_of
from core.resources.crud import Crud
from core.telemetry import Telemetry, configure_telemetry
from mesh.projects.v1 import projects_pb2
from servers.projects import MIGRATIONS
from servers.projects.resource import PROJECTS
from tests.integration._events import event, eventually
from tests.integration._projects import a_project

TYPE = "mesh.tests.v1.thing.changed"


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def telemetry(exporter: InMemorySpanExporter) -> Iterator[Telemetry]:
    """Tracing and metrics on for the test, every span in `exporter` (see core.telemetry)."""
    configured = configure_telemetry(
        TelemetrySettings(), service="tests", version="0", span_exporter=exporter
    )
    yield configured
    configured.shutdown()


@pytest.fixture
def spans(exporter: InMemorySpanExporter, telemetry: Telemetry) -> InMemorySpanExporter:
    return exporter


@pytest.fixture
def tracer(spans: InMemorySpanExporter) -> trace.Tracer:
    return trace.get_tracer("tests.event_tracing")


def finished(spans: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    return [s for s in spans.get_finished_spans() if s.name == name]


def traceparent_of(span: trace.Span) -> tuple[int, int]:
    context = span.get_span_context()
    return context.trace_id, context.span_id


@pytest.fixture
async def bus(tmp_path: Path) -> AsyncIterator[EventBus]:
    url = f"sqlite+aiosqlite:///{tmp_path / 'e.db'}"
    db = Database(url, migrations=[CORE_MIGRATIONS], migrate=True)
    event_bus = EventBus(SqlEventStore(db), depends_on=("database",))
    await db.start()
    await event_bus.start()
    try:
        yield event_bus
    finally:
        await event_bus.stop()
        await db.stop()


# -- publishing ------------------------------------------------------------------------------


async def test_an_event_published_inside_a_span_carries_its_traceparent(
    bus: EventBus, tracer: trace.Tracer
) -> None:
    with tracer.start_as_current_span("producer") as span:
        await bus.publish([event(id="traced")])
    await bus.publish([event(id="untraced")])

    traced, untraced = [await bus.store.get(i) for i in ("traced", "untraced")]
    assert traced is not None
    assert untraced is not None
    producer = producer_of(traced)
    assert producer is not None
    assert (producer.trace_id, producer.span_id) == traceparent_of(span)
    assert "traceparent" not in untraced.attributes


async def test_a_traceparent_set_by_the_caller_is_kept(bus: EventBus, tracer: trace.Tracer) -> None:
    own = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    with tracer.start_as_current_span("producer"):
        await bus.publish([event(id="own", attributes={"traceparent": own})])

    stored = await bus.store.get("own")
    assert stored is not None
    assert stored.attributes["traceparent"] == own


# -- consuming -------------------------------------------------------------------------------


class Recorder(EventHandler):
    group = "tracing-recorder"
    types = ("mesh.test.v1.*",)

    def __init__(self, bus: EventBus) -> None:
        super().__init__(bus)
        self.spans: dict[str, trace.SpanContext] = {}

    async def process(self, event: Event) -> None:
        self.spans[event.id] = trace.get_current_span().get_span_context()


async def test_a_handler_processes_each_event_in_a_consumer_span_linked_to_its_producer(
    bus: EventBus, tracer: trace.Tracer, spans: InMemorySpanExporter
) -> None:
    with tracer.start_as_current_span("producer") as producer:
        await bus.publish([event(id="one", subject="things/1")])
    handler = Recorder(bus)
    await handler.start()
    try:

        async def handled() -> None:
            assert finished(spans, "process mesh.test.v1.thing.done")

        await eventually(handled)
    finally:
        await handler.stop()

    [consumer] = finished(spans, "process mesh.test.v1.thing.done")
    assert consumer.kind is trace.SpanKind.CONSUMER
    assert consumer.parent is None  # a trace of its own ...
    [link] = consumer.links  # ... linked to the producer's
    assert (link.context.trace_id, link.context.span_id) == traceparent_of(producer)
    assert consumer.attributes is not None
    assert consumer.attributes["messaging.message.id"] == "one"
    assert consumer.attributes["messaging.operation.type"] == "process"
    assert consumer.attributes["messaging.consumer.group.name"] == "tracing-recorder"
    assert handler.spans["one"].span_id == consumer.context.span_id  # process ran inside it


async def test_consumer_span_records_a_failure_and_has_no_link_without_a_producer(
    spans: InMemorySpanExporter,
) -> None:
    with pytest.raises(RuntimeError), consumer_span(event(id="bare"), group="g"):
        raise RuntimeError("handler failed")

    [span] = finished(spans, "process mesh.test.v1.thing.done")
    assert not span.links
    assert span.status.status_code is trace.StatusCode.ERROR


# -- the outbox and its relay ----------------------------------------------------------------


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    database = Database(database_url, migrations=[CORE_MIGRATIONS, MIGRATIONS], migrate=True)
    await database.start()
    try:
        yield database
    finally:
        await database.stop()


async def outbox_traceparents(db: Database) -> list[str]:
    query = outbox.select().order_by(outbox.c.position)
    async with db.connect(autocommit=True) as conn:
        return [row.attributes.get("traceparent", "") for row in await conn.execute(query)]


async def test_the_outbox_event_of_a_write_carries_the_writing_calls_trace(
    db: Database, tracer: trace.Tracer
) -> None:
    projects = Crud(PROJECTS, db)
    with tracer.start_as_current_span("CreateProject") as call:
        await projects.create(
            a_project(),
            resource_id="demo",
            request_id="",
            validate_only=False,
            request=projects_pb2.CreateProjectRequest(),
            id_field="project_id",
        )

    [traceparent] = await outbox_traceparents(db)
    trace_id, span_id = traceparent_of(call)
    assert traceparent.startswith(f"00-{trace_id:032x}-{span_id:016x}-")


async def test_the_relay_publish_span_continues_a_batch_from_one_trace(
    db: Database, tracer: trace.Tracer, spans: InMemorySpanExporter
) -> None:
    event_bus = EventBus(SqlEventStore(db), depends_on=("database",))
    await event_bus.start()
    try:
        with tracer.start_as_current_span("write") as writer:
            for _ in range(2):
                async with db.transaction() as tx:
                    await emit(tx, type=TYPE, source="tests", subject="t", data=StringValue())
        relay = OutboxRelay(db, event_bus.publish)
        assert await relay.relay_once() == 2
        relayed = await event_bus.history(HistoryQuery(Selector()), "", 10)
    finally:
        await event_bus.stop()

    [publish] = finished(spans, "publish")
    assert publish.kind is trace.SpanKind.PRODUCER
    assert publish.parent is not None
    assert (publish.context.trace_id, publish.parent.span_id) == traceparent_of(writer)
    assert not publish.links  # both events came from the writer's one span
    for stored in relayed:  # the events keep the writer as their producer
        producer = producer_of(stored)
        assert producer is not None
        assert producer.span_id == writer.get_span_context().span_id


async def test_a_batch_from_several_traces_is_published_in_a_new_trace_linked_to_each(
    db: Database, tracer: trace.Tracer, spans: InMemorySpanExporter
) -> None:
    writers = []
    for _ in range(2):
        with tracer.start_as_current_span("write") as writer:
            writers.append(traceparent_of(writer))
            async with db.transaction() as tx:
                await emit(tx, type=TYPE, source="tests", subject="t", data=StringValue())
    published: list[Event] = []

    async def publish(batch: Sequence[Event]) -> None:
        published.extend(batch)

    relay = OutboxRelay(db, publish)
    assert await relay.relay_once() == 2

    [span] = finished(spans, "publish")
    assert span.parent is None
    assert {(link.context.trace_id, link.context.span_id) for link in span.links} == set(writers)
    assert span.context.trace_id not in {t for t, _ in writers}


# -- the numbers behind the gauges -----------------------------------------------------------


async def test_lag_counts_the_events_a_subscription_has_not_read(
    bus: EventBus, telemetry: Telemetry
) -> None:
    await bus.publish([event(id=f"e{n}") for n in range(5)])
    stream = bus.subscribe(Selector(), await bus.resolve())  # from now on
    try:
        assert isinstance(await anext(stream), CaughtUp)  # then it reads no further
        assert bus.lag() == 0
        await bus.publish([event(id=f"f{n}") for n in range(3)])
        await eventually(lambda: _check(bus.lag() == 3))
        assert total(telemetry, "mesh.events.subscriber.lag") == 3
    finally:
        await stream.aclose()
    assert bus.lag() == 0  # a closed subscription lags no more


async def _check(condition: bool) -> None:
    assert condition


async def test_the_relay_knows_its_backlog_after_a_round(
    db: Database, telemetry: Telemetry
) -> None:
    for _ in range(3):
        async with db.transaction() as tx:
            await emit(tx, type=TYPE, source="tests", subject="t", data=StringValue())

    async def refuse(batch: Sequence[Event]) -> None:
        raise ConnectionError("the events service is down")

    relay = OutboxRelay(db, refuse, interval=0.01)
    await relay.start()
    try:

        async def counted() -> None:
            assert relay.last_backlog == 3

        await eventually(counted)
        assert total(telemetry, "mesh.outbox.backlog") == 3
    finally:
        await relay.stop()


def total(telemetry: Telemetry, name: str, **attributes: str) -> float:
    """The sum of metric `name`'s points whose attributes include `attributes` (0 if none)."""
    data = telemetry.collect()
    assert data is not None
    return sum(
        point.value
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
        if metric.name == name
        for point in metric.data.data_points
        if isinstance(point, NumberDataPoint)
        and attributes.items() <= dict(point.attributes or {}).items()
    )


async def test_publishes_deliveries_handled_events_and_relayed_rows_are_counted(
    db: Database, telemetry: Telemetry
) -> None:
    event_bus = EventBus(SqlEventStore(db), depends_on=("database",))
    await event_bus.start()
    handler = Recorder(event_bus)
    backend = event_bus.store.name
    before = {
        name: total(telemetry, name) for name in ("mesh.events.delivered", "mesh.outbox.relayed")
    }
    published_before = total(telemetry, "mesh.events.published", backend=backend)
    handled = total(telemetry, "mesh.events.handled", outcome="processed")
    try:
        await event_bus.publish([event(id=f"c{n}", subject=f"s/{n}") for n in range(3)])
        await event_bus.publish([event(id="c0")])  # a duplicate: not counted
        async with db.transaction() as tx:
            await emit(tx, type=TYPE, source="tests", subject="t", data=StringValue())
        assert await OutboxRelay(db, event_bus.publish).relay_once() == 1
        await handler.start()

        async def all_handled() -> None:
            assert total(telemetry, "mesh.events.handled", outcome="processed") - handled == 3

        await eventually(all_handled)
    finally:
        await handler.stop()
        await event_bus.stop()

    published = total(telemetry, "mesh.events.published", backend=backend)
    assert published - published_before == 4
    assert total(telemetry, "mesh.events.delivered") - before["mesh.events.delivered"] >= 3
    assert total(telemetry, "mesh.outbox.relayed") - before["mesh.outbox.relayed"] == 1
