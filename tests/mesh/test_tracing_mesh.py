"""One trace across processes: the test → `mesh serve projects` → relay → `mesh serve events`.

Both processes export spans over OTLP to a collector running in the test process (a
grpc.aio TraceService that keeps what it receives). The test makes its call inside a span
of its own, sends the W3C trace context in metadata, and finds the projects server span,
the relay's publish span and the events server's span in its trace. An event consumed in
the test process (a third one) has a consumer span linked to the projects call that made it.
The `mesh` command traces its own calls: its CLIENT span starts the trace the servers continue.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from opentelemetry import propagate, trace
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.trace.v1 import trace_pb2
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from clients.events import EventsClient
from core.config import TelemetrySettings
from core.events.tracing import consumer_span, producer_of
from core.telemetry import configure_telemetry
from mesh.projects.v1 import projects_pb2, projects_pb2_grpc
from tests.mesh._processes import SplitMesh, mesh_env, run_mesh, split_mesh

WITHIN = 20.0  # seconds any awaited span or event may take
Span = trace_pb2.Span


@dataclass
class Collector(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP trace receiver that keeps every span, with its resource's service.name."""

    spans: list[tuple[str, Span]] = field(default_factory=list)
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: Any
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        async with self.changed:
            for resource in request.resource_spans:
                names = [
                    a.value.string_value
                    for a in resource.resource.attributes
                    if a.key == "service.name"
                ]
                for scope in resource.scope_spans:
                    self.spans.extend((names[0] if names else "", s) for s in scope.spans)
            self.changed.notify_all()
        return trace_service_pb2.ExportTraceServiceResponse()

    def in_trace(self, trace_id: int) -> list[Span]:
        wanted = trace_id.to_bytes(16, "big")
        return [s for _, s in self.spans if s.trace_id == wanted]

    async def wait_for(self, what: str, found: Callable[[], Span | None]) -> Span:
        """The span `found` returns once it returns one, within WITHIN seconds."""
        try:
            async with asyncio.timeout(WITHIN), self.changed:
                while (span := found()) is None:
                    await self.changed.wait()
                return span
        except TimeoutError:
            seen = sorted({f"{service}:{s.name}" for service, s in self.spans})
            raise AssertionError(f"no {what} span arrived; spans seen: {seen}") from None


@pytest.fixture
async def collector() -> AsyncIterator[tuple[Collector, int]]:
    received = Collector()
    server = grpc.aio.server()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(received, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield received, port
    finally:
        await server.stop(0)


@pytest.fixture
async def mesh(collector: tuple[Collector, int], tmp_path: Path) -> AsyncIterator[SplitMesh]:
    _, port = collector
    async with split_mesh(
        tmp_path,
        MESH_TRACES_EXPORTER="otlp",
        OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{port}",
        OTEL_EXPORTER_OTLP_INSECURE="true",
        OTEL_BSP_SCHEDULE_DELAY="100",
    ) as running:
        yield running


@pytest.fixture
def local_spans() -> Iterator[InMemorySpanExporter]:
    """Tracing on in the test process too: its own spans go to this exporter."""
    exporter = InMemorySpanExporter()
    telemetry = configure_telemetry(
        TelemetrySettings(metrics=False), service="tests", version="0", span_exporter=exporter
    )
    yield exporter
    telemetry.shutdown()


def named(spans: list[Span], kind: int, part: str) -> Span | None:
    return next((s for s in spans if s.kind == kind and part in s.name), None)


async def create_in_a_span(address: str, project_id: str) -> trace.SpanContext:
    """CreateProject inside a test span, its trace context sent in metadata by hand."""
    tracer = trace.get_tracer("tests.tracing_mesh")
    with tracer.start_as_current_span("test.create_project") as span:
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        request = projects_pb2.CreateProjectRequest(
            project=projects_pb2.Project(
                display_name="Traced",
                project_type=projects_pb2.Project.PROJECT_TYPE_MUSIC_CLIP,
                owner="users/a",
            ),
            project_id=project_id,
        )
        async with grpc.aio.insecure_channel(address) as channel:
            stub = projects_pb2_grpc.ProjectServiceStub(channel)
            await stub.CreateProject(request, metadata=tuple(carrier.items()), timeout=10)
    return span.get_span_context()


async def test_a_create_and_the_delivery_of_its_event_share_one_trace(
    collector: tuple[Collector, int], mesh: SplitMesh, local_spans: InMemorySpanExporter
) -> None:
    received, _ = collector
    caller = await create_in_a_span(mesh.projects.address, "traced")
    spans = lambda: received.in_trace(caller.trace_id)  # noqa: E731

    server = await received.wait_for(
        "projects CreateProject server",
        lambda: named(spans(), Span.SPAN_KIND_SERVER, "CreateProject"),
    )
    publish = await received.wait_for(
        "relay publish", lambda: named(spans(), Span.SPAN_KIND_PRODUCER, "publish")
    )
    stored = await received.wait_for(
        "events Publish server", lambda: named(spans(), Span.SPAN_KIND_SERVER, "Publish")
    )

    assert server.parent_span_id == caller.span_id.to_bytes(8, "big")  # our call's child
    assert publish.parent_span_id == server.span_id  # the relay continues the write's trace
    assert {server.trace_id, publish.trace_id, stored.trace_id} == {
        caller.trace_id.to_bytes(16, "big")
    }


async def test_an_event_consumed_in_another_process_links_to_the_call_that_made_it(
    collector: tuple[Collector, int], mesh: SplitMesh, local_spans: InMemorySpanExporter
) -> None:
    received, _ = collector
    caller = await create_in_a_span(mesh.projects.address, "linked")
    async with (
        EventsClient(mesh.events.address) as events,
        events.subscribe(
            group="tracing-test", types=["mesh.projects.v1.*"], beginning=True
        ) as stream,
    ):
        async with asyncio.timeout(WITHIN):
            message = await anext(aiter(stream))
        with consumer_span(message.event, group="tracing-test"):
            await events.ack("tracing-test", [message.event.id])

    producer = producer_of(message.event)
    assert producer is not None
    assert producer.trace_id == caller.trace_id
    server = await received.wait_for(
        "projects CreateProject server",
        lambda: named(received.in_trace(caller.trace_id), Span.SPAN_KIND_SERVER, "CreateProject"),
    )
    assert producer.span_id.to_bytes(8, "big") == server.span_id  # made by the projects call
    [consumer] = [s for s in local_spans.get_finished_spans() if s.name.startswith("process ")]
    [link] = consumer.links
    assert (link.context.trace_id, link.context.span_id) == (producer.trace_id, producer.span_id)
    assert consumer.context.trace_id != caller.trace_id  # a trace of its own, linked


def cli_create(address: str, project_id: str) -> list[str]:
    """The arguments of `mesh projects create` for one project at `address`."""
    return [
        *("projects", "create", "--address", address, "--id", project_id),
        *("--display-name", "Traced", "--type", "MUSIC_CLIP", "--owner", "users/a"),
    ]


def console_spans(stderr: str) -> list[dict[str, Any]]:
    """The spans the console exporter wrote: JSON objects one after another."""
    decoder, spans, at = json.JSONDecoder(), [], 0
    while (at := stderr.find("{", at)) != -1:
        span, at = decoder.raw_decode(stderr, at)
        spans.append(span)
    return spans


async def test_a_create_from_the_command_line_is_one_trace_from_its_call(
    collector: tuple[Collector, int], mesh: SplitMesh
) -> None:
    received, port = collector
    env = mesh_env(
        MESH_TRACES_EXPORTER="otlp",
        OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{port}",
        OTEL_EXPORTER_OTLP_INSECURE="true",
    )
    code, out, err = await run_mesh(*cli_create(mesh.projects.address, "from-cli"), env=env)
    assert code == 0, err
    assert json.loads(out)["name"] == "projects/from-cli"  # stdout is still the result alone

    def cli_call() -> Span | None:
        mine = [s for service, s in received.spans if service == "mesh-cli"]
        return named(mine, Span.SPAN_KIND_CLIENT, "CreateProject")

    call = await received.wait_for("mesh-cli CreateProject client", cli_call)
    spans = lambda: received.in_trace(int.from_bytes(call.trace_id, "big"))  # noqa: E731
    server = await received.wait_for(
        "projects CreateProject server",
        lambda: named(spans(), Span.SPAN_KIND_SERVER, "CreateProject"),
    )
    publish = await received.wait_for(
        "relay publish", lambda: named(spans(), Span.SPAN_KIND_PRODUCER, "publish")
    )
    await received.wait_for(
        "events Publish server", lambda: named(spans(), Span.SPAN_KIND_SERVER, "Publish")
    )

    assert call.parent_span_id == b""  # the command's call starts the trace
    assert server.parent_span_id == call.span_id  # the server continues it
    assert publish.parent_span_id == server.span_id


async def test_console_spans_of_the_command_line_go_to_stderr(
    collector: tuple[Collector, int], mesh: SplitMesh
) -> None:
    received, _ = collector
    env = mesh_env(MESH_TRACES_EXPORTER="console")
    code, out, err = await run_mesh(*cli_create(mesh.projects.address, "on-console"), env=env)
    assert code == 0, err
    assert json.loads(out)["name"] == "projects/on-console"

    [call] = console_spans(err)
    assert call["kind"] == "SpanKind.CLIENT"
    assert call["resource"]["attributes"]["service.name"] == "mesh-cli"
    trace_id = int(call["context"]["trace_id"], 16)
    server = await received.wait_for(
        "projects CreateProject server",
        lambda: named(received.in_trace(trace_id), Span.SPAN_KIND_SERVER, "CreateProject"),
    )
    assert server.parent_span_id == int(call["context"]["span_id"], 16).to_bytes(8, "big")
