"""The deadline of the call this task is handling, for the calls it makes on the way.

The server's boundary (`core.runtime.boundary`) records it when a call arrives; clients
read it through `remaining()`, so an outgoing call never gets more time than the caller
has left. Kept here, below both, so a client reads it without loading the server.
"""

from __future__ import annotations

import contextvars
import time

# When the call being handled must be answered (time.monotonic()), if its caller set one.
_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "mesh_deadline", default=None
)


def remaining() -> float | None:
    """Seconds left of the deadline of the call this task is handling; None if none."""
    deadline = _deadline.get()
    return None if deadline is None else deadline - time.monotonic()


def set_remaining(seconds: float) -> None:
    """Records that the call this task is handling must be answered within `seconds`."""
    _deadline.set(time.monotonic() + seconds)
