"""What a call passes before its handler runs: the readiness of what its service needs,
bounds on the calls and streams one process works on at once (load shedding), and a
deadline for calls that arrive without one.

The port opens before the components start (core.runtime.container: the server faces
callers), so a call can arrive while the database is still coming up. Until the container
runs every component, calls of a service that needs components fail at once with
UNAVAILABLE, reason SERVER_NOT_READY, naming what is not running yet and why; and so do
they, naming it, while a component the service needs is UNHEALTHY (a hung database), rather
than wait on it until their deadlines.

A caller that sends more than its share is slowed before it crowds out the others: with
`rate` set, each principal (a token's subject or a certificate's identity; an
unauthenticated caller by its address) may start `rate` calls per second, in bursts of
up to `burst`; beyond, RESOURCE_EXHAUSTED, reason RATE_LIMITED, with a RetryInfo of the
time until its next call is allowed. Counted per process: N replicas allow N times the rate.

A process past its capacity that keeps accepting calls only queues them: every call gets
slower until all of them miss their deadlines. Beyond `max_calls` unary calls (or
`max_streams` open streams) a call is refused at once with RESOURCE_EXHAUSTED, reason
OVERLOADED (or TOO_MANY_STREAMS), and a `google.rpc.RetryInfo` saying when to try again,
before any of its work is done. Health checks are never counted or refused, so probes
keep answering while the process sheds.

Usage (the boundary does this around every handler)::

    limits = CallLimits(max_calls=1000, max_streams=1000, default_deadline=30.0)
    with limits.calls:
        ...
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import NoReturn

from google.protobuf.message import Message
from opentelemetry import metrics

from core.errors import ResourceExhaustedError, UnavailableError

_shed = metrics.get_meter("meshkit.rpc").create_counter(
    "mesh.rpc.shed", unit="{call}", description="Calls refused because the process was full"
)


class Readiness:
    """The gate of one service's calls; its owner (core.runtime.server) keeps `open` in
    step with the container: open from RUNNING through STOPPING (the drain serves calls)
    while none of the components the service needs is UNHEALTHY."""

    __slots__ = ("_why", "open")

    def __init__(self, why: Callable[[], str], *, open: bool = False) -> None:
        self.open = open
        self._why = why

    def refuse(self, method: str) -> NoReturn:
        """Raises UNAVAILABLE for a call of `method` (`/package.Service/Method`)."""
        service = method.split("/")[1] if method.count("/") == 2 else method
        raise UnavailableError(
            f"{service} is not ready: {self._why()}", reason="SERVER_NOT_READY", retry_after=1.0
        )


ALWAYS_READY = Readiness(lambda: "", open=True)


class Slots:
    """A counter with a ceiling, entered once per call (`with slots:`)."""

    __slots__ = ("ceiling", "in_use", "reason", "retry_after", "what")

    def __init__(self, ceiling: int, what: str, reason: str, retry_after: float) -> None:
        self.ceiling = ceiling
        self.in_use = 0
        self.what = what
        self.reason = reason
        self.retry_after = retry_after

    def __enter__(self) -> None:
        if self.in_use >= self.ceiling:
            _shed.add(1, {"reason": self.reason})
            raise ResourceExhaustedError(
                f"the server is at its limit of {self.ceiling} {self.what}; retry later",
                reason=self.reason,
                retry_after=self.retry_after,
            )
        self.in_use += 1

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.in_use -= 1


class RateLimit:
    """A token bucket per caller: `rate` calls a second, `burst` at once; off at rate 0.

    Written by hand: it runs synchronously on every call, where libraries such as `limits`
    keep a timestamp per call (memory growing with the rate) behind an async storage API.
    """

    __slots__ = ("_buckets", "_prune_at", "burst", "rate")

    def __init__(self, rate: float, burst: float = 0.0) -> None:
        self.rate = rate
        self.burst = max(burst or rate, 1.0)
        self._buckets: dict[str, tuple[float, float]] = {}  # caller: (tokens, as of)
        self._prune_at = MAX_TRACKED_CALLERS

    def take(self, caller: str) -> None:
        """Spends one of `caller`'s tokens, or raises RESOURCE_EXHAUSTED (RATE_LIMITED)."""
        if self.rate <= 0:
            return
        now = time.monotonic()
        tokens, then = self._buckets.get(caller, (self.burst, now))
        tokens = min(self.burst, tokens + (now - then) * self.rate)
        if tokens < 1.0:
            wait = (1.0 - tokens) / self.rate
            _shed.add(1, {"reason": "RATE_LIMITED"})
            raise ResourceExhaustedError(
                f"more than {self.rate:g} calls a second from this caller; retry in {wait:.2f} s",
                reason="RATE_LIMITED",
                retry_after=wait,
                metadata={"calls_per_second": f"{self.rate:g}", "burst": f"{self.burst:g}"},
            )
        self._buckets[caller] = (tokens - 1.0, now)
        if len(self._buckets) > self._prune_at:
            self._prune(now)

    def _prune(self, now: float) -> None:
        """Forgets the callers whose bucket has refilled: the same as never seen."""
        full = self.burst - 1.0
        self._buckets = {
            caller: (tokens, then)
            for caller, (tokens, then) in self._buckets.items()
            if tokens + (now - then) * self.rate < full
        }
        self._prune_at = max(MAX_TRACKED_CALLERS, 2 * len(self._buckets))


MAX_TRACKED_CALLERS = 10_000  # buckets kept before the full ones are forgotten


@dataclass(frozen=True, slots=True)
class CallLimits:
    """The process's bounds; one instance is shared by every method's handler."""

    calls: Slots
    streams: Slots
    default_deadline: float  # seconds, for a unary call that came without a deadline
    max_response_bytes: int = sys.maxsize  # the server's message limit
    rate: RateLimit = field(default_factory=lambda: RateLimit(0.0))  # per caller; off

    @classmethod
    def of(
        cls,
        *,
        max_calls: int = 1000,
        max_streams: int = 1000,
        default_deadline: float = 30.0,
        retry_after: float = 1.0,
        max_response_bytes: int = sys.maxsize,
        rate: float = 0.0,
        burst: float = 0.0,
    ) -> CallLimits:
        return cls(
            calls=Slots(max_calls, "calls in progress", "OVERLOADED", retry_after),
            streams=Slots(max_streams, "open streams", "TOO_MANY_STREAMS", retry_after),
            default_deadline=default_deadline,
            max_response_bytes=max_response_bytes,
            rate=RateLimit(rate, burst),
        )

    def check_response(self, response: object) -> None:
        """RESOURCE_EXHAUSTED, reason RESPONSE_TOO_LARGE, for a response over the message
        limit, which gRPC would otherwise refuse to send with a bare "Sent message larger
        than max" (lists end their pages early instead: core.data.pagination)."""
        if not isinstance(response, Message):
            return
        size = response.ByteSize()
        if size > self.max_response_bytes:
            raise ResourceExhaustedError(
                f"the response would be {size} bytes, over the server's limit of "
                f"{self.max_response_bytes} (MESH_MAX_MESSAGE_BYTES); ask for less per call",
                reason="RESPONSE_TOO_LARGE",
                metadata={"size": str(size), "limit": str(self.max_response_bytes)},
            )


# For health and reflection, and servers built without limits: nothing is ever refused.
UNLIMITED = CallLimits.of(max_calls=sys.maxsize, max_streams=sys.maxsize, default_deadline=0.0)
