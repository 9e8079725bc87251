"""Health states and check results.

Usage::

    async def check_health(self) -> Health:
        if self._replica_lag > 5.0:
            return Health.degraded("replica lagging", lag_seconds=f"{self._replica_lag:.1f}")
        return Health.healthy()
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime


class HealthState(enum.Enum):
    """HEALTHY and DEGRADED still serve traffic; UNHEALTHY does not."""

    HEALTHY = "HEALTHY"
    DEGRADED = "DEGRADED"
    UNHEALTHY = "UNHEALTHY"

    @property
    def score(self) -> int:
        return _SCORE[self]

    @property
    def serving(self) -> bool:
        return self is not HealthState.UNHEALTHY


_SCORE = {HealthState.HEALTHY: 100, HealthState.DEGRADED: 50, HealthState.UNHEALTHY: 0}

# The bound a check puts on its probe of a dependency whose outage it reports as DEGRADED,
# so that a hung dependency reads as DEGRADED and not as the monitor's UNHEALTHY "timed out"
# (MESH_HEALTH_TIMEOUT_SECONDS must stay above it).
PROBE_TIMEOUT = 0.5


@dataclass(frozen=True, slots=True)
class Health:
    """One health check result: a state, a short reason and free-form details."""

    state: HealthState
    reason: str = ""
    details: dict[str, str] = field(default_factory=dict)
    checked_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    @classmethod
    def healthy(cls, **details: str) -> Health:
        return cls(HealthState.HEALTHY, "", details)

    @classmethod
    def degraded(cls, reason: str, **details: str) -> Health:
        return cls(HealthState.DEGRADED, reason, details)

    @classmethod
    def unhealthy(cls, reason: str, **details: str) -> Health:
        return cls(HealthState.UNHEALTHY, reason, details)


def worst(states: Iterable[HealthState]) -> HealthState:
    """The least healthy of `states`; HEALTHY when there are none."""
    return min(states, key=lambda s: s.score, default=HealthState.HEALTHY)
