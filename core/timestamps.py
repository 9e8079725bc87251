"""Timestamps from requests, checked against what every store can hold.

A `google.protobuf.Timestamp` may carry any 64-bit seconds and any 32-bit nanos; Python's
datetime, SQLite and PostgreSQL hold only the years 1 to 9999. A request's timestamp
outside them is the caller's mistake, INVALID_ARGUMENT naming the field, never an
overflow deep in a driver that would surface as INTERNAL.

Usage::

    start = checked_datetime(request.start_time, "start_time")
"""

from __future__ import annotations

from datetime import datetime

from google.protobuf.timestamp_pb2 import Timestamp

from core.errors import FieldViolation, InvalidArgumentError

MIN_SECONDS = -62135596800  # 0001-01-01T00:00:00Z
MAX_SECONDS = 253402300799  # 9999-12-31T23:59:59Z
RANGE = "must be a timestamp from 0001-01-01 to 9999-12-31"


def in_range(stamp: Timestamp) -> bool:
    return MIN_SECONDS <= stamp.seconds <= MAX_SECONDS and 0 <= stamp.nanos <= 999_999_999


def checked_datetime(stamp: Timestamp, field: str) -> datetime:
    """The timestamp as a naive UTC datetime (as `Timestamp.ToDatetime()` gives it);
    INVALID_ARGUMENT naming `field` when out of range."""
    if not in_range(stamp):
        raise InvalidArgumentError(
            f"{field} {RANGE}",
            reason="INVALID_TIMESTAMP",
            violations=[FieldViolation(field, RANGE)],
        )
    return stamp.ToDatetime()
