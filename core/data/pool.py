"""Taking connections from the pool, and the errors of a database that cannot be used.

Shared by `core.data.database` and the asyncpg path of `core.data.statements`, so an
unreachable database, a full pool and a statement past its time limit read the same to a
caller whichever path ran the statement.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

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
