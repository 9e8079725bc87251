"""The tracing parts that `core.telemetry.providers` installs once and switches after.

OpenTelemetry fixes a tracer provider's sampler and processors for the provider's life, so
the providers get a `SwitchedSampler` and a `SwitchedProcessor` that delegate to those of
the current configuration. Libraries (SQL statements, Redis commands) get spans through
`instrument_libraries`, sampled only inside a trace (`InsideTraces`).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any, TextIO

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, Decision, Sampler, SamplingResult
from opentelemetry.trace import SpanKind
from opentelemetry.util.types import Attributes


class SwitchedSampler(Sampler):
    """Delegates to `inner`, the sampler of the current configuration (the SDK fixes its
    own for the provider's life)."""

    def __init__(self, inner: Sampler = ALWAYS_OFF) -> None:
        self.inner = inner

    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[trace.Link] | None = None,
        trace_state: trace.TraceState | None = None,
    ) -> SamplingResult:
        return self.inner.should_sample(
            parent_context, trace_id, name, kind, attributes, links, trace_state
        )

    def get_description(self) -> str:
        return self.inner.get_description()


class InsideTraces(SwitchedSampler):
    """Samples a library's span (an SQL statement, a Redis command) only inside a trace.

    Background work that no call started (the outbox relay polling, the purger, health
    checks of a database) would otherwise make a trace of one span per statement, every
    second, burying the traces of calls.
    """

    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[trace.Link] | None = None,
        trace_state: trace.TraceState | None = None,
    ) -> SamplingResult:
        if not trace.get_current_span(parent_context).get_span_context().is_valid:
            return SamplingResult(Decision.DROP)
        return super().should_sample(
            parent_context, trace_id, name, kind, attributes, links, trace_state
        )

    def get_description(self) -> str:
        return f"InsideTraces{{{self.inner.get_description()}}}"


class SwitchedProcessor(SpanProcessor):
    """Delegates to the span processor of the current configuration, if any."""

    def __init__(self) -> None:
        self.inner: SpanProcessor | None = None

    def on_start(self, span: Any, parent_context: Context | None = None) -> None:
        inner = self.inner
        if inner is not None:
            inner.on_start(span, parent_context)

    def on_end(self, span: ReadableSpan) -> None:
        inner = self.inner
        if inner is not None:
            inner.on_end(span)

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return True if self.inner is None else self.inner.force_flush(timeout_millis)

    def shutdown(self) -> None:
        if self.inner is not None:
            self.inner.shutdown()


def traces_exporter(name: str, console: TextIO | None = None) -> SpanExporter:
    """The exporter of MESH_TRACES_EXPORTER: "console" (JSON per span on `console`,
    default stdout, which a server's logs leave free) or "otlp"."""
    if name == "console":
        return ConsoleSpanExporter(out=console or sys.stdout)  # the default is bound at import
    if name == "otlp":  # reads OTEL_EXPORTER_OTLP_ENDPOINT, _HEADERS, _INSECURE, ...
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter()
    raise ValueError(f"unknown traces exporter {name!r}")


def instrument_libraries(provider: TracerProvider) -> None:
    """Spans for SQL statements (SQLAlchemy, and asyncpg for core.data.statements's direct ones) and
    Redis commands. Imported only once tracing is on, as they patch their libraries; left
    in place after (tests that turn tracing off): the sampler then drops their spans."""
    from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor
    from opentelemetry.instrumentation.redis import RedisInstrumentor
    from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor

    # AsyncPGInstrumentor's __init__ carries no annotations.
    asyncpg = AsyncPGInstrumentor()  # type: ignore[no-untyped-call]
    for instrumentor in (SQLAlchemyInstrumentor(), asyncpg, RedisInstrumentor()):
        if not instrumentor.is_instrumented_by_opentelemetry:
            # 0.66b1 declares SQLAlchemy < 2.1 but works with 2.1, which we pin: its event
            # hooks are unchanged (tests/integration/test_telemetry.py checks the spans).
            instrumentor.instrument(tracer_provider=provider, skip_dep_check=True)
    # SQLAlchemy's asyncpg dialect runs its statements as prepared statements, which its
    # own instrumentation already traces: only core.data.statements's direct calls (on the
    # Connection) need asyncpg's, or every SQLAlchemy statement would get two spans.
    from asyncpg.prepared_stmt import PreparedStatement
    from opentelemetry.instrumentation.utils import unwrap

    for method in ("fetch", "fetchval", "fetchrow", "executemany", "fetchmany"):
        unwrap(PreparedStatement, method)
