"""Taking connections from the pool, the errors of a database that cannot be used, and the
pool metrics.

Shared by `core.data.database` and the asyncpg path of `core.data.statements`, so an
unreachable database, a full pool and a statement past its time limit read the same to a
caller whichever path ran the statement.
"""

from __future__ import annotations

import weakref
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation
from sqlalchemy.exc import TimeoutError as PoolTimeout

from core.errors import DeadlineExceededError, ResourceExhaustedError, UnavailableError

T = TypeVar("T")

STATEMENT_TIMEOUT = "57014"  # query_canceled, raised by statement_timeout


class Checkouts:
    """Takes connections from the pool, counting the callers still waiting for one.

    SQLAlchemy's pool reports only the connections checked out; the waiting count is the
    `mesh.db.pool.waiting` metric. Shared by `Database.connect` and core.data.statements.
    """

    def __init__(self) -> None:
        self.waiting = 0

    async def take(self, checkout: Callable[[], Awaitable[T]]) -> T:
        """Runs `checkout`; a full pool is RESOURCE_EXHAUSTED, any other failure UNAVAILABLE."""
        self.waiting += 1
        try:
            return await checkout()
        except PoolTimeout:
            raise busy() from None
        except Exception as exc:
            raise unavailable() from exc
        finally:
            self.waiting -= 1


def unavailable() -> UnavailableError:
    return UnavailableError("the database is unreachable", reason="DATABASE_UNAVAILABLE")


def busy() -> ResourceExhaustedError:
    return ResourceExhaustedError(
        "every database connection is busy; try again later", reason="DATABASE_BUSY"
    )


def statement_timed_out() -> DeadlineExceededError:
    return DeadlineExceededError(
        "a database statement ran past its time limit", reason="DATABASE_TIMEOUT"
    )


class MeasuredPool(Protocol):
    """What the pool metrics read of a running database."""

    dialect: str

    def pool_counts(self) -> tuple[int, int]:
        """Connections checked out of the pool now, and callers waiting for one."""
        ...


# Every started database, for the pool metrics read at collection.
_MEASURED: weakref.WeakSet[MeasuredPool] = weakref.WeakSet()


def measure_pool(database: MeasuredPool) -> None:
    """Counts `database`'s pool in mesh.db.pool.* from now on (until it is dropped)."""
    _MEASURED.add(database)


def stop_measuring_pool(database: MeasuredPool) -> None:
    """Leaves `database`'s pool out of mesh.db.pool.* from now on."""
    _MEASURED.discard(database)


def _pool_counts(pick: int) -> Callable[[CallbackOptions], list[Observation]]:
    def observe(options: CallbackOptions) -> list[Observation]:
        totals: dict[str, int] = {}
        for db in list(_MEASURED):
            totals[db.dialect] = totals.get(db.dialect, 0) + db.pool_counts()[pick]
        return [Observation(n, {"db.system": dialect}) for dialect, n in totals.items()]

    return observe


_meter = metrics.get_meter("core.data.database")  # the scope the metrics have always had
_meter.create_observable_up_down_counter(
    "mesh.db.pool.in_use",
    [_pool_counts(0)],
    unit="{connection}",
    description="Pooled database connections checked out now.",
)
_meter.create_observable_up_down_counter(
    "mesh.db.pool.waiting",
    [_pool_counts(1)],
    unit="{caller}",
    description="Callers waiting now for a pooled database connection.",
)


def figures(pool: Any, checked_out: int, waiting: int) -> dict[str, str]:
    """A SQLAlchemy pool as named figures: `size` kept, `open` now, `checked_out` in use,
    `overflow` opened beyond `size`, `waiting` callers. A pool without a fixed size has
    only the last two."""
    named = {"checked_out": checked_out, "waiting": waiting}
    size = getattr(pool, "size", None)
    if callable(size):
        # SQLAlchemy's overflow() counts from -size: below 0 while fewer are open.
        named |= {
            "size": size(),
            "open": getattr(pool, "checkedin", lambda: 0)() + checked_out,
            "overflow": max(0, getattr(pool, "overflow", lambda: 0)()),
        }
    return {name: str(value) for name, value in named.items()}
