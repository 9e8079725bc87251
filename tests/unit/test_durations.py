"""Telemetry without sockets: names, the no-op paths, duration buckets and the p99 estimate."""

from __future__ import annotations

import grpc
import pytest

from core import telemetry
from servers.admin.metrics import quantile

BOUNDS = (1.0, 2.0, 4.0)


def test_server_method_names_follow_the_rpc_conventions() -> None:
    method = telemetry.ServerMethod("/mesh.projects.v1.ProjectService/GetProject")
    assert method.span_name == "mesh.projects.v1.ProjectService/GetProject"


def test_telemetry_off_makes_no_span_and_sends_no_metadata() -> None:
    call = telemetry.client_call("/mesh.projects.v1.ProjectService/GetProject", "x:1")
    assert call.metadata == ()
    call.end(grpc.StatusCode.OK)  # a no-op, however often
    call.end(grpc.StatusCode.OK)
    assert telemetry.collect() is None


def test_only_server_faults_count_as_errors() -> None:
    assert grpc.StatusCode.INTERNAL in telemetry.SERVER_ERRORS
    assert grpc.StatusCode.UNAVAILABLE in telemetry.SERVER_ERRORS
    assert grpc.StatusCode.NOT_FOUND not in telemetry.SERVER_ERRORS
    assert grpc.StatusCode.CANCELLED not in telemetry.SERVER_ERRORS


def test_p99_interpolates_within_its_bucket() -> None:
    # 100 values: 50 in (0, 1], 40 in (1, 2], 10 in (2, 3] (3 the largest): the 99th is
    # 9/10 into the last of these.
    assert quantile(BOUNDS, [50, 40, 10, 0], 0.99, low=0.5, high=3.0) == pytest.approx(2.9)


def test_p99_uses_the_smallest_and_largest_values_for_the_outer_buckets() -> None:
    assert quantile(BOUNDS, [0, 0, 0, 100], 0.99, low=10.0, high=20.0) == pytest.approx(19.9)
    assert quantile(BOUNDS, [100, 0, 0, 0], 0.5, low=0.2, high=0.4) == pytest.approx(0.3)


def test_p99_of_nothing_is_zero() -> None:
    assert quantile(BOUNDS, [0, 0, 0, 0], 0.99, low=float("inf"), high=0.0) == 0.0


def test_duration_buckets_are_fine_below_a_millisecond() -> None:
    below = [b for b in telemetry.DURATION_BUCKETS_MS if b < 1]
    assert len(below) >= 6
    assert list(telemetry.DURATION_BUCKETS_MS) == sorted(telemetry.DURATION_BUCKETS_MS)
