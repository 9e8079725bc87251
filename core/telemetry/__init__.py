"""OpenTelemetry traces and metrics for meshkit processes.

Tracing is on when an exporter is chosen (console, or OTLP reading `OTEL_EXPORTER_OTLP_*`
itself), sampling new traces at `sample_ratio` and following a sampled parent; database
statements and Redis commands get spans of their own. Metrics are on by default: RPC
durations, cache, pool and circuit breaker numbers, served as Prometheus text on
`metrics_address` when it is set and summarised by the admin service.

`calls` holds what runs on every call (core.runtime.boundary, the clients): spans and the
duration histograms, each behind a plain flag check; `served` how the cache answered the
call's read (the `mesh-cache` trailer and the `mesh.cache.lookups` counter). `providers`
sets up the SDK, with the switchable sampler and span processor and the library
instrumentation of `tracing`.

Usage::

    telemetry = configure_telemetry(settings.telemetry, service="projects", version="0.1.0")
    try:
        ...                                  # run the process
    finally:
        telemetry.shutdown()                 # flushes spans still in the batch

    call = client_call("/mesh.projects.v1.ProjectService/GetProject", "127.0.0.1:50051")
    try:
        response = await stub.GetProject(request, timeout=t, metadata=call.metadata)
    except grpc.RpcError as exc:
        call.end(exc.code())
        raise
    call.end(grpc.StatusCode.OK)

Tests that run servers in-process call `configure_telemetry(..., span_exporter=
InMemorySpanExporter())` and `shutdown()` at the end; calling it again reconfigures.
"""

from core.telemetry.calls import (
    CLIENT_DURATION,
    DURATION_BUCKETS_MS,
    SERVER_DURATION,
    SERVER_ERRORS,
    ClientCall,
    ServerMethod,
    client_call,
)
from core.telemetry.providers import Telemetry, collect, configure_telemetry
from core.telemetry.served import (
    BYPASS,
    CACHE_KEY,
    LOCAL_HIT,
    MISS,
    OUTCOMES,
    SHARED_HIT,
    cache_outcome,
    note_cache,
)

__all__ = [
    "BYPASS",
    "CACHE_KEY",
    "CLIENT_DURATION",
    "DURATION_BUCKETS_MS",
    "LOCAL_HIT",
    "MISS",
    "OUTCOMES",
    "SERVER_DURATION",
    "SERVER_ERRORS",
    "SHARED_HIT",
    "ClientCall",
    "ServerMethod",
    "Telemetry",
    "cache_outcome",
    "client_call",
    "collect",
    "configure_telemetry",
    "note_cache",
]
