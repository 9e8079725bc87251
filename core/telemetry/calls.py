"""The per-call telemetry: server and client spans, and the RPC duration histograms.

core.runtime.boundary and the clients call in here on every call, so the off switches
are plain checks of `active`: no span work when tracing is off, no metric work when
metrics are. `core.telemetry.providers` turns them on.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Histogram,
    HistogramDataPoint,
    Metric,
)
from opentelemetry.trace import Span, SpanKind, StatusCode, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from core.telemetry.served import lookups_of

# Milliseconds. Fine below a millisecond (a cached read takes a few tenths), so the
# admin summary's p99, interpolated within a bucket, is within a factor of 1.5 or so.
DURATION_BUCKETS_MS: Sequence[float] = (
    *(0.05, 0.1, 0.15, 0.25, 0.35, 0.5, 0.75, 1, 1.5, 2.5, 3.5, 5, 7.5, 10, 15, 25),
    *(50, 75, 100, 150, 250, 500, 750, 1000, 2500, 5000, 10000),
)
SERVER_DURATION = "rpc.server.duration"
CLIENT_DURATION = "rpc.client.duration"
# Codes that say the server failed (the OTel gRPC conventions for server spans); the
# others answer the caller's own mistake (NOT_FOUND, INVALID_ARGUMENT, ...).
SERVER_ERRORS = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)
_PROPAGATOR = TraceContextTextMapPropagator()
_TRACE_KEYS = frozenset(_PROPAGATOR.fields)  # traceparent, tracestate


class Active:
    """What the hot paths read on every call."""

    tracer: Tracer | None = None  # None: tracing is off
    metrics = False


active = Active()


# -- duration histograms ----------------------------------------------------------------------

# Why rpc.*.duration are not SDK Histograms: the SDK's `record` cleans, copies and hashes
# the attributes and takes a lock on every call, 13-20 µs on the bench machine, which is
# 5-7 % of a cached GetProject's CPU. Here each method and status code has its series,
# found at registration, and a call adds to it in place (about 1 µs). The metric reader
# in core.telemetry.providers hands them out beside the SDK's own metrics, as the same
# `Metric` data, so Prometheus and the admin summary cannot tell the difference.


class _Series:
    """The durations of one method and status code, cumulative since `Durations.reset`."""

    __slots__ = ("attributes", "buckets", "count", "max", "min", "total")

    def __init__(self, attributes: dict[str, Any]) -> None:
        self.attributes = attributes
        self.reset()

    def reset(self) -> None:
        self.buckets = [0] * (len(DURATION_BUCKETS_MS) + 1)
        self.count, self.total, self.min, self.max = 0, 0.0, float("inf"), 0.0

    def record(self, ms: float) -> None:
        # As OpenTelemetry's explicit buckets: bucket i holds (bounds[i-1], bounds[i]].
        self.buckets[bisect_left(DURATION_BUCKETS_MS, ms)] += 1
        self.count += 1
        self.total += ms
        if ms < self.min:
            self.min = ms
        if ms > self.max:
            self.max = ms

    def point(self, start: int, now: int) -> HistogramDataPoint:
        buckets = list(self.buckets)  # the event loop may add while a scrape reads
        return HistogramDataPoint(
            attributes=self.attributes,
            start_time_unix_nano=start,
            time_unix_nano=now,
            count=sum(buckets),
            sum=self.total,
            bucket_counts=buckets,
            explicit_bounds=DURATION_BUCKETS_MS,
            min=self.min,
            max=self.max,
            exemplars=[],
        )


class Durations:
    """One duration histogram metric, a `_Series` per attribute set."""

    def __init__(self, name: str, description: str) -> None:
        self.name, self.description = name, description
        self._series: dict[tuple[str, str, int], _Series] = {}
        self._started = time.time_ns()

    def series(self, attributes: dict[str, Any]) -> _Series:
        key = (
            attributes["rpc.service"],
            attributes["rpc.method"],
            attributes["rpc.grpc.status_code"],
        )
        found = self._series.get(key)
        if found is None:
            found = self._series[key] = _Series(attributes)
        return found

    def reset(self) -> None:
        self._started = time.time_ns()
        for series in list(self._series.values()):
            series.reset()

    def metric(self, now: int) -> Metric | None:
        points = [s.point(self._started, now) for s in list(self._series.values()) if s.count]
        if not points:
            return None
        data = Histogram(points, AggregationTemporality.CUMULATIVE)
        return Metric(self.name, self.description, "ms", data)


SERVER_DURATIONS = Durations(SERVER_DURATION, "Duration of the calls this process served.")
CLIENT_DURATIONS = Durations(CLIENT_DURATION, "Duration of the calls this process made.")


# -- server side (called by core.runtime.boundary) ---------------------------------------------


class ServerMethod:
    """The telemetry of one served method, built once when the method is registered.

    Args:
        method: The full method name, `/package.Service/Method`.
    """

    __slots__ = ("_attributes", "_by_code", "_lookups", "_ok", "span_name")

    def __init__(self, method: str) -> None:
        self.span_name, self._attributes, by_code = _names(method)
        self._by_code = {code: SERVER_DURATIONS.series(a) for code, a in by_code.items()}
        self._ok = self._by_code[grpc.StatusCode.OK]
        self._lookups = lookups_of(self._attributes).counts

    def start(self, context: grpc.aio.ServicerContext[Any, Any]) -> Span | None:
        """Starts the SERVER span (the caller's trace continued) and makes it current.

        No detach: grpc.aio runs each call in a task of its own with its own context.
        """
        tracer = active.tracer
        if tracer is None:
            return None
        carrier = {k: v for k, v in context.invocation_metadata() or () if k in _TRACE_KEYS}
        parent = _PROPAGATOR.extract(carrier, Context()) if carrier else Context()
        span = tracer.start_span(self.span_name, parent, SpanKind.SERVER, self._attributes)
        otel_context.attach(trace.set_span_in_context(span, parent))
        return span

    def end(
        self,
        code: grpc.StatusCode,
        ms: float,
        span: Span | None,
        error: BaseException | None = None,
    ) -> None:
        """Records the call's duration and ends its span with the final status code."""
        if active.metrics:
            (self._ok if code is grpc.StatusCode.OK else self._by_code[code]).record(ms)
        if span is not None:
            _end_span(span, code, code in SERVER_ERRORS, error)

    def looked_up(self, outcome: str, span: Span | None) -> None:
        """Counts how the cache served this call (`mesh.cache.lookups`); before `end`."""
        if active.metrics:
            self._lookups[outcome] += 1
        if span is not None:
            span.set_attribute("mesh.cache", outcome)


# -- client side (called by clients/base.py) ----------------------------------------------


class ClientCall:
    """One outgoing call: its client span (if tracing) and its metrics.

    `metadata` holds the W3C trace context to send with the call (empty when tracing
    is off). `end` must be called exactly once with the call's final status code.
    """

    __slots__ = ("_span", "_started", "_target", "metadata")

    def __init__(self, target: _ClientTarget | None = None) -> None:
        self.metadata: tuple[tuple[str, str], ...] = ()
        self._target = target
        self._span: Span | None = None
        self._started = 0.0
        if target is None:
            return
        tracer = active.tracer
        if tracer is not None:
            self._span = span = tracer.start_span(
                target.span_name, kind=SpanKind.CLIENT, attributes=target.span_attributes
            )
            carrier: dict[str, str] = {}
            _PROPAGATOR.inject(carrier, trace.set_span_in_context(span))
            self.metadata = tuple(carrier.items())
        self._started = time.perf_counter()

    def end(self, code: grpc.StatusCode) -> None:
        target, self._target = self._target, None
        if target is None:  # telemetry off, or ended already
            return
        if active.metrics:
            target.by_code[code].record((time.perf_counter() - self._started) * 1000)
        if self._span is not None:
            _end_span(self._span, code, code is not grpc.StatusCode.OK, None)


_OFF = ClientCall()


@dataclass(frozen=True, slots=True)
class _ClientTarget:
    span_name: str
    span_attributes: dict[str, Any]
    by_code: dict[grpc.StatusCode, _Series]


_targets: dict[tuple[str, str], _ClientTarget] = {}


def client_call(method: str, target: str) -> ClientCall:
    """Starts the telemetry of one client call to `method` (`/pkg.Service/Method`).

    The CLIENT span is a child of the current span (the server call being handled, if
    any); with tracing and metrics both off this returns a shared no-op call.
    """
    if active.tracer is None and not active.metrics:
        return _OFF
    key = (method, target)
    found = _targets.get(key)
    if found is None:
        name, attributes, by_code = _names(method)
        found = _targets[key] = _ClientTarget(
            name,
            {**attributes, "server.address": target},
            {code: CLIENT_DURATIONS.series(a) for code, a in by_code.items()},
        )
    return ClientCall(found)


def _names(method: str) -> tuple[str, dict[str, Any], dict[grpc.StatusCode, dict[str, Any]]]:
    """The span name, span attributes and metric attributes by status code of `method`."""
    service, _, name = method.lstrip("/").partition("/")
    attributes: dict[str, Any] = {
        "rpc.system": "grpc",
        "rpc.service": service,
        "rpc.method": name,
    }
    by_code = {c: {**attributes, "rpc.grpc.status_code": c.value[0]} for c in grpc.StatusCode}
    return f"{service}/{name}", attributes, by_code


def _end_span(span: Span, code: grpc.StatusCode, failed: bool, error: BaseException | None) -> None:
    span.set_attribute("rpc.grpc.status_code", code.value[0])
    if failed:
        span.set_status(StatusCode.ERROR, code.name)
        if error is not None:
            span.record_exception(error)
    span.end()
