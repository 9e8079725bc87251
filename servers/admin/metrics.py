"""The admin summary's call statistics and circuit breakers.

The statistics come from `rpc.server.duration` as core.telemetry's metric reader hands it
out (the data Prometheus scrapes), not from a second store: per method, the histogram's count and
sum give the calls and the mean, its buckets the p99, and the status code attribute the
success and error rates. The numbers are cumulative since the process started.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from opentelemetry.sdk.metrics.export import HistogramDataPoint, MetricsData

from core import telemetry
from core.calls.breaker import BreakerState, all_breakers
from mesh.admin.v1 import admin_pb2

_ERROR_CODES = frozenset(c.value[0] for c in telemetry.SERVER_ERRORS)
_OK = 0


@dataclass
class _Method:
    count: int = 0
    total_ms: float = 0.0
    ok: int = 0
    errors: int = 0
    bounds: Sequence[float] = ()
    buckets: list[int] = field(default_factory=list)
    min_ms: float = float("inf")
    max_ms: float = 0.0

    def add(self, point: HistogramDataPoint, code: object) -> None:
        self.count += point.count
        self.total_ms += point.sum
        self.ok += point.count if code == _OK else 0
        self.errors += point.count if code in _ERROR_CODES else 0
        if not self.buckets:
            self.bounds, self.buckets = point.explicit_bounds, [0] * len(point.bucket_counts)
        for i, n in enumerate(point.bucket_counts):
            self.buckets[i] += n
        self.min_ms = min(self.min_ms, point.min)
        self.max_ms = max(self.max_ms, point.max)


def method_stats(data: MetricsData | None) -> list[admin_pb2.MethodStats]:
    """Per method served at least once, by service and method; empty without metrics."""
    methods: dict[tuple[str, str], _Method] = {}
    for point in _server_durations(data):
        attributes = point.attributes or {}
        key = (str(attributes.get("rpc.service", "")), str(attributes.get("rpc.method", "")))
        methods.setdefault(key, _Method()).add(point, attributes.get("rpc.grpc.status_code"))
    return [
        admin_pb2.MethodStats(
            service=service,
            method=method,
            calls=m.count,
            average_ms=m.total_ms / m.count,
            p99_ms=quantile(m.bounds, m.buckets, 0.99, low=m.min_ms, high=m.max_ms),
            success_rate=m.ok / m.count,
            error_rate=m.errors / m.count,
        )
        for (service, method), m in sorted(methods.items())
        if m.count
    ]


def quantile(
    bounds: Sequence[float], buckets: Sequence[int], q: float, *, low: float, high: float
) -> float:
    """The q-quantile of a histogram, interpolated linearly inside its bucket.

    `buckets[i]` counts values up to `bounds[i]` (the last one, those above every bound);
    `low` and `high` (the smallest and largest value seen) close the outer buckets.
    """
    total = sum(buckets)
    if total == 0:
        return 0.0
    rank = q * total
    seen = 0
    for i, n in enumerate(buckets):
        if n and seen + n >= rank:
            lower = max(low, bounds[i - 1]) if i > 0 else low
            upper = min(high, bounds[i]) if i < len(bounds) else high
            return lower + (upper - lower) * (rank - seen) / n
        seen += n
    return high


def _server_durations(data: MetricsData | None) -> Iterable[HistogramDataPoint]:
    if data is None:
        return
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name == telemetry.SERVER_DURATION:
                    for point in metric.data.data_points:
                        if isinstance(point, HistogramDataPoint):
                            yield point


_STATE = {
    BreakerState.CLOSED: admin_pb2.CIRCUIT_BREAKER_STATE_CLOSED,
    BreakerState.OPEN: admin_pb2.CIRCUIT_BREAKER_STATE_OPEN,
    BreakerState.HALF_OPEN: admin_pb2.CIRCUIT_BREAKER_STATE_HALF_OPEN,
}


def breakers() -> list[admin_pb2.CircuitBreakerSummary]:
    """Every circuit breaker of the process, by target."""
    return [
        admin_pb2.CircuitBreakerSummary(
            target=b.target,
            state=_STATE[b.state],
            consecutive_failures=b.failures,
            times_opened=b.opened,
        )
        for b in sorted(all_breakers(), key=lambda b: b.target)
    ]
