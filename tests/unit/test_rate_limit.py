"""The per-caller token bucket of core.runtime.limits."""

from __future__ import annotations

import pytest

from core.errors import ResourceExhaustedError
from core.runtime.limits import MAX_TRACKED_CALLERS, RateLimit


def test_a_burst_then_refused_with_the_wait() -> None:
    limit = RateLimit(rate=10.0, burst=2.0)
    limit.take("alice")
    limit.take("alice")
    with pytest.raises(ResourceExhaustedError) as refused:
        limit.take("alice")
    assert refused.value.reason == "RATE_LIMITED"
    assert 0 < refused.value.retry_after <= 0.1
    limit.take("bob")  # a bucket of its own


def test_callers_whose_bucket_refilled_are_forgotten() -> None:
    limit = RateLimit(rate=1000.0)
    for n in range(3 * MAX_TRACKED_CALLERS):
        limit.take(f"caller-{n}")
    assert len(limit._buckets) <= MAX_TRACKED_CALLERS + 1


def test_off_at_rate_zero() -> None:
    limit = RateLimit(rate=0.0)
    for _ in range(100):
        limit.take("anyone")
    assert not limit._buckets
