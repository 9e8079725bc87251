"""How the cache served the read of the call being handled, and the `mesh.cache.lookups`
counter that counts it per method.

`core.resources.cache` notes the outcome of each lookup here; the RPC boundary
(`core.runtime.boundary`) reads it when the call ends, sends it to the caller as the
trailing metadata `mesh-cache` and counts it. grpc.aio runs every call in a task of its
own with its own copy of the context variables, so what the cache notes belongs to that
call alone; a call that made no lookup reads None and sends nothing. Kept below both
layers, so the cache writes it without loading the server.

The outcomes:

- `local-hit`: answered from this process's in-process tier.
- `shared-hit`: answered from the shared tier (Redis), no database read.
- `miss`: neither tier had it; read from the database and kept.
- `bypass`: the cache was not used: the read does not go through it (BatchGetProjects),
  the process has none, or it cannot be trusted now (Redis unreachable): read from the
  database and not kept.

Usage::

    note_cache(LOCAL_HIT)           # the cache, on a lookup
    outcome = cache_outcome()       # the boundary, as the call ends: None if no lookup
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation

CACHE_KEY = "mesh-cache"
"""The trailing metadata key that says how a read was served."""

LOCAL_HIT, SHARED_HIT, MISS, BYPASS = "local-hit", "shared-hit", "miss", "bypass"
OUTCOMES = (LOCAL_HIT, SHARED_HIT, MISS, BYPASS)

_outcome: ContextVar[str | None] = ContextVar("mesh_cache_outcome", default=None)

# Bound methods, not wrappers: the cached read pays no Python frame for them.
note_cache = _outcome.set
"""Records how the current call's read was served (one of OUTCOMES); the last one wins."""
cache_outcome = _outcome.get
"""How the current call's read was served, or None when it made no cache lookup."""


class Lookups:
    """The lookups of one served method, counted by outcome (a dict increment each)."""

    __slots__ = ("attributes", "counts")

    def __init__(self, attributes: dict[str, Any]) -> None:
        self.attributes = attributes
        self.counts = dict.fromkeys(OUTCOMES, 0)


_LOOKUPS: list[Lookups] = []


def lookups_of(attributes: dict[str, Any]) -> Lookups:
    """A new counter set for one method (`rpc.service`, `rpc.method`), reported from now on."""
    found = Lookups(
        {"rpc.service": attributes["rpc.service"], "rpc.method": attributes["rpc.method"]}
    )
    _LOOKUPS.append(found)
    return found


def _observe(options: CallbackOptions) -> list[Observation]:
    totals: dict[tuple[str, str, str], int] = {}  # a method registered twice adds up
    for lookups in list(_LOOKUPS):
        service, method = lookups.attributes["rpc.service"], lookups.attributes["rpc.method"]
        for outcome, count in list(lookups.counts.items()):
            if count:
                key = (service, method, outcome)
                totals[key] = totals.get(key, 0) + count
    return [
        Observation(count, {"rpc.service": s, "rpc.method": m, "mesh.cache.outcome": o})
        for (s, m, o), count in totals.items()
    ]


metrics.get_meter("core.runtime.boundary").create_observable_counter(
    "mesh.cache.lookups",
    [_observe],
    unit="{lookup}",
    description="Calls whose read went to the cache, by method and outcome "
    "(local-hit, shared-hit, miss, bypass).",
)
