"""Traces and metrics of real calls over loopback: spans, propagation, logs, metrics, summary."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import pytest
import structlog
from google.protobuf.duration_pb2 import Duration
from opentelemetry import trace
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.sdk.metrics.export import MetricsData
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from sqlalchemy import text
from structlog.contextvars import merge_contextvars

from core.calls.breaker import breaker_for, forget_breakers
from core.config import TelemetrySettings
from core.data.database import Database
from core.logging import add_trace_ids
from core.resources.cache import Cache
from core.telemetry import Telemetry, client_call, configure_telemetry
from mesh.admin.v1 import admin_pb2, admin_pb2_grpc
from tests.conftest import Running

SELECT_1 = text("select 1")
SERVICE = "mesh.admin.v1.AdminService"
PING = f"/{SERVICE}/Ping"


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    telemetry = configure_telemetry(
        TelemetrySettings(), service="test", version="0", span_exporter=exporter
    )
    yield exporter
    telemetry.shutdown()


@pytest.fixture
def metrics_only() -> Iterator[Telemetry]:
    telemetry = configure_telemetry(TelemetrySettings(), service="test", version="0")
    yield telemetry
    telemetry.shutdown()


@pytest.fixture
async def admin(mesh: Running) -> AsyncIterator[admin_pb2_grpc.AdminServiceStub]:
    async with grpc.aio.insecure_channel(mesh.address) as channel:
        yield admin_pb2_grpc.AdminServiceStub(channel)


async def ping(
    stub: admin_pb2_grpc.AdminServiceStub, target: str, delay: float = 0.0
) -> grpc.StatusCode:
    """One Ping the way clients make calls: through `client_call`."""
    call = client_call(PING, target)
    try:
        request = admin_pb2.PingRequest(message="hi", delay=Duration(seconds=int(delay)))
        await stub.Ping(request, metadata=call.metadata, timeout=10)
    except grpc.aio.AioRpcError as exc:
        call.end(exc.code())
        return exc.code()
    call.end(grpc.StatusCode.OK)
    return grpc.StatusCode.OK


def only(spans: InMemorySpanExporter, kind: SpanKind) -> ReadableSpan:
    found = [s for s in spans.get_finished_spans() if s.kind is kind]
    assert len(found) == 1, [(s.name, s.kind) for s in spans.get_finished_spans()]
    return found[0]


def points(data: MetricsData | None, name: str) -> list[Any]:
    assert data is not None
    return [
        point
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
        if metric.name == name
        for point in metric.data.data_points
    ]


# -- traces -----------------------------------------------------------------------------------


async def test_server_span_continues_the_client_span(
    spans: InMemorySpanExporter, mesh: Running, admin: admin_pb2_grpc.AdminServiceStub
) -> None:
    assert await ping(admin, mesh.address) == grpc.StatusCode.OK
    client, server = only(spans, SpanKind.CLIENT), only(spans, SpanKind.SERVER)
    assert client.name == server.name == f"{SERVICE}/Ping"
    assert server.context.trace_id == client.context.trace_id
    assert server.parent is not None
    assert server.parent.span_id == client.context.span_id
    assert server.parent.is_remote
    assert dict(server.attributes or {}) == {
        "rpc.system": "grpc",
        "rpc.service": SERVICE,
        "rpc.method": "Ping",
        "rpc.grpc.status_code": 0,
    }
    assert server.status.status_code is StatusCode.UNSET


async def test_client_call_sends_the_traceparent_of_its_span(spans: InMemorySpanExporter) -> None:
    call = client_call(PING, "127.0.0.1:1")
    call.end(grpc.StatusCode.UNAVAILABLE)
    client = only(spans, SpanKind.CLIENT)
    metadata = dict(call.metadata)
    version, trace_id, span_id, flags = metadata["traceparent"].split("-")
    assert (version, trace_id, span_id) == (
        "00",
        f"{client.context.trace_id:032x}",
        f"{client.context.span_id:016x}",
    )
    assert int(flags, 16) & 1  # sampled
    assert client.status.status_code is StatusCode.ERROR
    assert client.attributes is not None
    assert client.attributes["rpc.grpc.status_code"] == 14


async def test_a_caller_mistake_is_not_a_server_error(
    spans: InMemorySpanExporter, mesh: Running, admin: admin_pb2_grpc.AdminServiceStub
) -> None:
    assert await ping(admin, mesh.address, delay=61) == grpc.StatusCode.INVALID_ARGUMENT
    server = only(spans, SpanKind.SERVER)
    assert server.attributes is not None
    assert server.attributes["rpc.grpc.status_code"] == 3
    assert server.status.status_code is StatusCode.UNSET
    assert only(spans, SpanKind.CLIENT).status.status_code is StatusCode.ERROR


async def test_log_lines_inside_a_traced_call_carry_its_ids(
    spans: InMemorySpanExporter, mesh: Running, admin: admin_pb2_grpc.AdminServiceStub
) -> None:
    with structlog.testing.capture_logs(processors=[merge_contextvars, add_trace_ids]) as logs:
        await ping(admin, mesh.address)
    server = only(spans, SpanKind.SERVER)
    finished = [e for e in logs if e["event"] == "rpc.finished" and e.get("rpc") == PING]
    assert len(finished) == 1
    assert finished[0]["trace_id"] == f"{server.context.trace_id:032x}"
    assert finished[0]["span_id"] == f"{server.context.span_id:016x}"


async def test_sampling_ratio_zero_records_no_span_but_propagates(
    mesh: Running, admin: admin_pb2_grpc.AdminServiceStub
) -> None:
    exporter = InMemorySpanExporter()
    telemetry = configure_telemetry(
        TelemetrySettings(sample_ratio=0.0), service="test", version="0", span_exporter=exporter
    )
    try:
        call = client_call(PING, mesh.address)
        await admin.Ping(admin_pb2.PingRequest(), metadata=call.metadata, timeout=10)
        call.end(grpc.StatusCode.OK)
    finally:
        telemetry.shutdown()
    assert exporter.get_finished_spans() == ()
    flags = dict(call.metadata)["traceparent"].rpartition("-")[2]
    assert not int(flags, 16) & 1  # not sampled, so not sampled downstream either


async def test_console_exporter_prints_spans(
    mesh: Running, admin: admin_pb2_grpc.AdminServiceStub, capsys: pytest.CaptureFixture[str]
) -> None:
    telemetry = configure_telemetry(
        TelemetrySettings(traces_exporter="console"), service="test", version="0"
    )
    try:
        await ping(admin, mesh.address)
        telemetry.force_flush()
    finally:
        telemetry.shutdown()
    out = capsys.readouterr().out
    assert f'"name": "{SERVICE}/Ping"' in out
    assert '"kind": "SpanKind.SERVER"' in out


class Collector(trace_service_pb2_grpc.TraceServiceServicer):
    """A tiny OTLP trace collector: keeps every span it is sent."""

    def __init__(self) -> None:
        self.spans: list[Any] = []

    async def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: Any
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        for resource in request.resource_spans:
            for scope in resource.scope_spans:
                self.spans.extend(scope.spans)
        return trace_service_pb2.ExportTraceServiceResponse()


async def test_otlp_exporter_sends_spans_to_the_collector(
    mesh: Running, admin: admin_pb2_grpc.AdminServiceStub, monkeypatch: pytest.MonkeyPatch
) -> None:
    collector = Collector()
    server = grpc.aio.server()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_INSECURE", "true")
    telemetry = configure_telemetry(
        TelemetrySettings(traces_exporter="otlp"), service="test", version="0"
    )
    try:
        await ping(admin, mesh.address)
        await asyncio.to_thread(telemetry.force_flush)  # the exporter calls our loop's server
    finally:
        await asyncio.to_thread(telemetry.shutdown)
        await server.stop(None)
    names = sorted((s.name, s.kind) for s in collector.spans)
    assert (f"{SERVICE}/Ping", 2) in names  # SPAN_KIND_SERVER
    assert (f"{SERVICE}/Ping", 3) in names  # SPAN_KIND_CLIENT
    assert len({s.trace_id for s in collector.spans if s.name.endswith("/Ping")}) == 1


async def test_no_exporter_means_no_spans(
    mesh: Running, admin: admin_pb2_grpc.AdminServiceStub, metrics_only: Telemetry
) -> None:
    assert not metrics_only.tracing
    call = client_call(PING, mesh.address)
    assert call.metadata == ()
    call.end(grpc.StatusCode.OK)


# -- metrics ----------------------------------------------------------------------------------


async def test_rpc_durations_are_recorded_by_method_and_code(
    metrics_only: Telemetry, mesh: Running, admin: admin_pb2_grpc.AdminServiceStub
) -> None:
    for _ in range(3):
        await ping(admin, mesh.address)
    await ping(admin, mesh.address, delay=61)
    data = metrics_only.collect()
    base = {"rpc.system": "grpc", "rpc.service": SERVICE, "rpc.method": "Ping"}
    for name in ("rpc.server.duration", "rpc.client.duration"):
        counts = {
            p.attributes["rpc.grpc.status_code"]: p.count
            for p in points(data, name)
            if {k: p.attributes[k] for k in base} == base
        }
        assert counts == {0: 3, 3: 1}, name
    assert all(p.sum > 0 for p in points(data, "rpc.server.duration"))


async def test_summary_shows_per_method_stats_and_breakers(
    metrics_only: Telemetry, mesh: Running, admin: admin_pb2_grpc.AdminServiceStub
) -> None:
    breaker_for("dns:///events.test:50051")
    try:
        for _ in range(3):
            await ping(admin, mesh.address)
        await ping(admin, mesh.address, delay=61)
        summary = (await admin.GetServiceSummary(admin_pb2.GetServiceSummaryRequest())).summary
    finally:
        forget_breakers()
    assert summary.metrics_enabled
    stats = {(m.service, m.method): m for m in summary.methods}
    ping_stats = stats[(SERVICE, "Ping")]
    assert ping_stats.calls == 4
    assert (ping_stats.success_rate, ping_stats.error_rate) == (0.75, 0.0)
    assert ping_stats.average_ms > 0
    assert ping_stats.p99_ms >= ping_stats.average_ms / 10  # an estimate, but of this data
    assert (SERVICE, "GetServiceSummary") not in stats  # still running when collected
    breakers = {b.target: b for b in summary.circuit_breakers}
    events = breakers["dns:///events.test:50051"]
    assert events.state == admin_pb2.CIRCUIT_BREAKER_STATE_CLOSED
    assert (events.consecutive_failures, events.times_opened) == (0, 0)


async def test_summary_without_metrics_says_so(
    mesh: Running, admin: admin_pb2_grpc.AdminServiceStub
) -> None:
    telemetry = configure_telemetry(TelemetrySettings(metrics=False), service="t", version="0")
    try:
        await ping(admin, mesh.address)
        summary = (await admin.GetServiceSummary(admin_pb2.GetServiceSummaryRequest())).summary
    finally:
        telemetry.shutdown()
    assert not summary.metrics_enabled
    assert list(summary.methods) == []


async def test_breaker_state_is_a_metric(metrics_only: Telemetry) -> None:
    breaker_for("dns:///metrics.test:1")
    try:
        data = metrics_only.collect()
    finally:
        forget_breakers()
    states = {
        p.attributes["state"]: p.value
        for p in points(data, "mesh.breaker.state")
        if p.attributes["target"] == "dns:///metrics.test:1"
    }
    assert states == {"closed": 1, "open": 0, "half_open": 0}


def total(data: MetricsData | None, name: str, **attributes: str) -> float:
    return sum(
        p.value
        for p in points(data, name)
        if all(p.attributes.get(k) == v for k, v in attributes.items())
    )


async def test_cache_hits_and_misses_are_counted(metrics_only: Telemetry) -> None:
    cache = Cache()
    await cache.start()
    before = metrics_only.collect()

    async def load() -> bytes:
        return b"value"

    try:
        await cache.get("k", load)
        await cache.get("k", load)
        await cache.get("k", load)
    finally:
        await cache.stop()
    after = metrics_only.collect()
    assert total(after, "mesh.cache.misses") - total(before, "mesh.cache.misses") == 1
    hits = total(after, "mesh.cache.hits", tier="local")
    assert hits - total(before, "mesh.cache.hits", tier="local") == 2


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_pool_in_use_and_waiting_are_gauges(
    metrics_only: Telemetry, database_url: str
) -> None:
    db = Database(database_url, pool_size=1, pool_timeout=10)
    await db.start()
    try:
        async with db.connect():
            waiter = asyncio.create_task(db.fetch_one(SELECT_1, {}))
            async with asyncio.timeout(10):
                while db.pool_counts()[1] == 0:  # noqa: ASYNC110 (a counter, no event to wait on)
                    await asyncio.sleep(0.01)
            data = metrics_only.collect()
        await waiter
    finally:
        await db.stop()
    assert total(data, "mesh.db.pool.in_use", **{"db.system": "postgresql"}) >= 1
    assert total(data, "mesh.db.pool.waiting", **{"db.system": "postgresql"}) >= 1


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_sql_statements_get_spans_on_both_paths(
    spans: InMemorySpanExporter, database_url: str
) -> None:
    db = Database(database_url)
    await db.start()
    spans.clear()
    try:
        with trace.get_tracer("test").start_as_current_span("a call"):
            await db.fetch_one(SELECT_1, {})  # asyncpg directly (core.data.statements)
            async with db.connect(autocommit=True) as conn:  # through SQLAlchemy
                await conn.execute(text("select 2"))
    finally:
        await db.stop()
    statements = [
        (s.attributes or {}).get("db.statement") or (s.attributes or {}).get("db.query.text")
        for s in spans.get_finished_spans()
        if s.kind is SpanKind.CLIENT
    ]
    assert "select 1" in statements
    assert statements.count("select 2") == 1  # one span, not one per instrumentation


async def test_redis_commands_get_spans(spans: InMemorySpanExporter) -> None:
    cache = Cache("redis://127.0.0.1:6379/0", prefix=f"test-telemetry-{id(spans)}:")
    await cache.start()

    async def load() -> bytes:
        return b"value"

    try:
        spans.clear()
        with trace.get_tracer("test").start_as_current_span("a call"):
            await cache.get("k", load)
    finally:
        await cache.stop()
    commands = {s.name for s in spans.get_finished_spans() if s.kind is SpanKind.CLIENT}
    assert "EVALSHA" in commands  # the read and the fill are scripts (under generations)


async def test_statements_outside_a_trace_make_no_spans(
    spans: InMemorySpanExporter, database_url: str
) -> None:
    db = Database(database_url)  # as a background loop (the relay polling) uses it
    await db.start()
    spans.clear()
    try:
        await db.fetch_one(SELECT_1, {})
        async with db.connect(autocommit=True) as conn:
            await conn.execute(text("select 2"))
    finally:
        await db.stop()
    assert spans.get_finished_spans() == ()


async def test_a_cancelled_stream_ends_its_span_as_cancelled(
    spans: InMemorySpanExporter, mesh: Running, admin: admin_pb2_grpc.AdminServiceStub
) -> None:
    watch = admin.WatchServiceStatus(admin_pb2.WatchServiceStatusRequest())
    await watch.read()
    watch.cancel()
    async with asyncio.timeout(10):
        while not spans.get_finished_spans():  # noqa: ASYNC110 (the server ends it later)
            await asyncio.sleep(0.01)
    server = only(spans, SpanKind.SERVER)
    assert server.name == f"{SERVICE}/WatchServiceStatus"
    assert server.attributes is not None
    assert server.attributes["rpc.grpc.status_code"] == grpc.StatusCode.CANCELLED.value[0]


async def test_summary_with_metrics_on_but_nothing_measured_yet_says_on(
    metrics_only: Telemetry, mesh: Running, admin: admin_pb2_grpc.AdminServiceStub
) -> None:
    summary = (await admin.GetServiceSummary(admin_pb2.GetServiceSummaryRequest())).summary
    assert summary.metrics_enabled
    assert list(summary.methods) == []
