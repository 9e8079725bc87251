"""The process's OpenTelemetry SDK set-up: providers, exporters, the metric reader.

The providers are made once per process and installed as the OpenTelemetry globals;
each `configure_telemetry` switches their sampler, span processor and metric reader
(the switching parts and the library instrumentation are in `core.telemetry.tracing`),
then turns the per-call paths of `core.telemetry.calls` on or off.
"""

from __future__ import annotations

import threading
import time
from typing import Any, TextIO

import structlog
from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    MetricReader,
    MetricsData,
    ResourceMetrics,
    ScopeMetrics,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased, TraceIdRatioBased
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from core.config import TelemetrySettings
from core.telemetry.calls import CLIENT_DURATIONS, SERVER_DURATIONS, active
from core.telemetry.tracing import (
    InsideTraces,
    SwitchedProcessor,
    SwitchedSampler,
    instrument_libraries,
    traces_exporter,
)

log = structlog.get_logger()

_RPC_SCOPE = InstrumentationScope("core.runtime.boundary")


class Telemetry:
    """What `configure_telemetry` turned on; `shutdown` it at process exit."""

    def __init__(
        self,
        settings: TelemetrySettings,
        tracing: bool,
        reader: _Reader | None,
        console: TextIO | None = None,
    ) -> None:
        self.settings = settings
        self.tracing = tracing
        self.metrics = reader is not None
        self._reader = reader
        self._console = console
        self._http: tuple[Any, threading.Thread] | None = None

    def collect(self) -> MetricsData | None:
        """Every metric as it stands (cumulative since the start); None when metrics are off."""
        if self._reader is None or _process.current is not self:
            return None
        return self._reader.snapshot()

    def force_flush(self) -> None:
        """Exports the spans still waiting in the batch."""
        if _process.current is self and _process.tracer_provider is not None:
            _process.tracer_provider.force_flush()

    def shutdown(self) -> None:
        """Flushes spans, stops the Prometheus endpoint and turns telemetry off; idempotent."""
        with _process.lock:
            if _process.current is self:
                _process.switch_off()


class _Reader(MetricReader):
    """The process's one metric reader, for the admin summary and Prometheus scrapes alike.

    Each SDK reader aggregates every measurement again, so a second one for the summary
    would double the cost of metrics. `snapshot` collects for the summary; with
    MESH_METRICS_ADDRESS set, `_prometheus_reader` makes the Prometheus exporter's reader
    with the same behaviour, and a scrape collects the usual way. Both get the duration
    histograms added. (The exporter and prometheus_client are imported only then: they
    pull in an HTTP server and 4 MB that a process without the endpoint does not need.)
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._taking = threading.local()  # scrapes run in the HTTP server's thread

    def snapshot(self) -> MetricsData:
        self._taking.data = None
        self._taking.active = True
        try:
            self.collect()
        finally:
            self._taking.active = False
        data: MetricsData | None = self._taking.data
        self._taking.data = None
        return MetricsData([]) if data is None else data  # on, but nothing measured yet

    # The SDK calls `_receive_metrics` only when it has metrics of its own; the durations
    # must come out even when it has none (a process with no cache, database or breaker).
    # `collect` is final in the stubs only, to keep readers from changing how it collects;
    # this one collects the same way.
    def collect(self, timeout_millis: float = 10_000) -> None:  # type: ignore[misc]
        self._taking.received = False
        super().collect(timeout_millis)
        if not self._taking.received:  # the SDK had nothing: the durations may have
            self._receive_metrics(None, timeout_millis)

    def _receive_metrics(
        self, metrics_data: MetricsData | None, timeout_millis: float = 10_000, **kwargs: Any
    ) -> None:
        self._taking.received = True
        data = _with_durations(metrics_data)
        if getattr(self._taking, "active", False):
            self._taking.data = data
        elif data is not None:
            self._scraped(data, timeout_millis, **kwargs)

    def _scraped(self, data: MetricsData, timeout_millis: float, **kwargs: Any) -> None:
        """A collection that was not a snapshot: only the Prometheus reader makes one."""

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        pass


def _prometheus_reader() -> _Reader:
    """A `_Reader` that is also the Prometheus exporter's reader, on the default registry."""
    from opentelemetry.exporter.prometheus import PrometheusMetricReader

    class PrometheusReader(_Reader, PrometheusMetricReader):
        def _scraped(self, data: MetricsData, timeout_millis: float, **kwargs: Any) -> None:
            PrometheusMetricReader._receive_metrics(self, data, timeout_millis, **kwargs)

        def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
            PrometheusMetricReader.shutdown(self, timeout_millis, **kwargs)

    return PrometheusReader()


def _with_durations(data: MetricsData | None) -> MetricsData | None:
    """`data` from the SDK with rpc.server.duration and rpc.client.duration added."""
    now = time.time_ns()
    durations = [
        m for m in (SERVER_DURATIONS.metric(now), CLIENT_DURATIONS.metric(now)) if m is not None
    ]
    if not durations:
        return data
    scope = ScopeMetrics(_RPC_SCOPE, durations, "")
    if data is None or not data.resource_metrics:
        assert _process.resource is not None
        return MetricsData([ResourceMetrics(_process.resource, [scope], "")])
    first, *rest = data.resource_metrics
    resource = ResourceMetrics(first.resource, [*first.scope_metrics, scope], first.schema_url)
    return MetricsData([resource, *rest])


class _Process:
    """The process's SDK providers: made on first use, installed as the OpenTelemetry
    globals, kept for the process's life. Each configuration switches what they do."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.current: Telemetry | None = None
        self.resource: Resource | None = None
        self.tracer_provider: TracerProvider | None = None
        self.library_provider: TracerProvider | None = None  # see InsideTraces
        self.meter_provider: MeterProvider | None = None
        self.sampler = SwitchedSampler()
        self.processor = SwitchedProcessor()

    def switch_on(self, telemetry: Telemetry, span_exporter: SpanExporter | None) -> None:
        settings = telemetry.settings
        if telemetry.tracing:
            provider = self._tracer_provider()
            self.processor.inner = (
                BatchSpanProcessor(traces_exporter(settings.traces_exporter, telemetry._console))
                if span_exporter is None
                else SimpleSpanProcessor(span_exporter)
            )
            self.sampler.inner = ParentBased(TraceIdRatioBased(settings.sample_ratio))
            instrument_libraries(self._library_provider())
            active.tracer = provider.get_tracer("core.runtime.boundary")
        if telemetry._reader is not None:
            self._meter_provider().add_metric_reader(telemetry._reader)
            SERVER_DURATIONS.reset()
            CLIENT_DURATIONS.reset()
            active.metrics = True
        self.current = telemetry

    def switch_off(self) -> None:
        telemetry, self.current = self.current, None
        active.tracer, active.metrics = None, False
        if telemetry is None:
            return
        if telemetry.tracing:
            processor, self.processor.inner = self.processor.inner, None
            self.sampler.inner = ALWAYS_OFF
            if processor is not None:
                processor.shutdown()  # exports what is left in the batch
        if telemetry._http is not None:
            server, thread = telemetry._http
            server.shutdown()
            server.server_close()
            thread.join()
        if telemetry._reader is not None and self.meter_provider is not None:
            self.meter_provider.remove_metric_reader(telemetry._reader)

    def _tracer_provider(self) -> TracerProvider:
        if self.tracer_provider is None:
            provider = TracerProvider(
                sampler=self.sampler, resource=self.resource, shutdown_on_exit=False
            )
            provider.add_span_processor(self.processor)
            trace.set_tracer_provider(provider)
            self.tracer_provider = provider
        return self.tracer_provider

    def _library_provider(self) -> TracerProvider:
        if self.library_provider is None:
            provider = TracerProvider(
                sampler=InsideTraces(self.sampler),
                resource=self.resource,
                shutdown_on_exit=False,
            )
            provider.add_span_processor(self.processor)
            self.library_provider = provider
        return self.library_provider

    def _meter_provider(self) -> MeterProvider:
        if self.meter_provider is None:
            provider = MeterProvider(resource=self.resource, shutdown_on_exit=False)
            metrics.set_meter_provider(provider)
            self.meter_provider = provider
        return self.meter_provider


_process = _Process()


def collect() -> MetricsData | None:
    """The current configuration's metrics (see `Telemetry.collect`); None when off."""
    telemetry = _process.current
    return None if telemetry is None else telemetry.collect()


def configure_telemetry(
    settings: TelemetrySettings,
    *,
    service: str,
    version: str,
    span_exporter: SpanExporter | None = None,
    console: TextIO | None = None,
) -> Telemetry:
    """Sets up this process's traces and metrics from settings; once, in __main__.

    Args:
        settings: What to turn on (`Settings.telemetry`: MESH_TRACES_*, MESH_METRICS*).
        service: `service.name` of the resource.
        version: `service.version` of the resource.
        span_exporter: For tests: sampled spans go here, synchronously, instead of to
            the exporter the settings choose; tracing is then on.
        console: Where the console exporter writes spans (default stdout); a command
            whose stdout is its result passes stderr.

    The first call installs the OpenTelemetry API's global providers (what
    `trace.get_tracer` and `metrics.get_meter` give core.events and the instrumentations),
    with this call's resource; OpenTelemetry allows no second. A later call (tests) shuts
    the previous `Telemetry` down and switches the same providers' sampler, exporter and
    metric reader, so every instrument keeps working.

    Raises:
        OSError: The Prometheus endpoint cannot listen on `metrics_address`.
    """
    tracing = span_exporter is not None or settings.tracing
    with _process.lock:
        _process.switch_off()
        if _process.resource is None:
            _process.resource = Resource.create(
                {"service.name": service, "service.version": version}
            )
        reader = None
        if settings.metrics:
            reader = _prometheus_reader() if settings.metrics_address else _Reader()
        telemetry = Telemetry(settings, tracing, reader, console)
        try:
            if settings.metrics_address:
                from prometheus_client import start_http_server

                host, _, port = settings.metrics_address.rpartition(":")
                telemetry._http = start_http_server(int(port), host)
            _process.switch_on(telemetry, span_exporter)
        except BaseException:
            _process.current = telemetry
            _process.switch_off()
            raise
    log.info(
        "telemetry.configured",
        traces=settings.traces_exporter if span_exporter is None else "memory",
        sample_ratio=settings.sample_ratio,
        metrics=settings.metrics,
        metrics_address=settings.metrics_address or None,
    )
    return telemetry
