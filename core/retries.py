"""Retries: one helper over stamina, bounded, backed off, logged and counted.

Every retry loop of the framework (component starts, transaction conflicts, the outbox
relay, event handlers, reconnects) goes through `Retry`, and application code can use the
same decorator on its own calls. The backoff is stamina's: retry n waits
`wait_initial * 2**(n-1)` plus a random jitter of up to `wait_jitter`, at most `wait_max`.
Tries stop after `attempts` tries or `timeout` seconds, whichever comes first; giving up
raises the last error as it was raised. Only the errors `on` names are retried;
cancellation (`asyncio.CancelledError`) always goes straight through, backoffs included.

Each scheduled retry logs `retry.scheduled` (warning: operation, attempt, delay_s, error,
cause and the call's own fields) and adds one to the counter `mesh.retries` (attributes
`operation` and `error.type`), which the process's metrics report when they are on. The
hook is stamina's (`stamina.instrumentation.set_on_retry_hooks`), installed when this module
is imported, so functions decorated with `stamina.retry` directly are logged and counted
the same way, under their qualified name. It replaces stamina's default hooks: their
Prometheus counter would bypass the OpenTelemetry reader (the admin summary, the
MESH_METRICS switch), and their `stamina.retry_scheduled` line names no operation.

Usage::

    from core.retries import Retry

    @Retry("billing.charge", on=UnavailableError, attempts=5, timeout=30.0)
    async def charge(invoice: Invoice) -> Receipt:
        ...

    starts = Retry("component.start", on=is_transient, attempts=3, wait_max=10.0)
    await starts.call(component.start, component=component.name)  # fields go into the log

Tests switch backoffs off, or retries altogether, with stamina's own switch::

    with stamina.set_testing(True, attempts=1):  # one try, no backoff: fail fast
        ...

This module sits beside `core.errors` at the bottom of the core layers (pyproject's
import-linter contract), so every layer, `core.calls` and `core.data` included, can use it;
it imports nothing of ours.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import Any, ParamSpec, TypeAlias, TypeVar, cast

import stamina
import structlog
from opentelemetry import metrics
from stamina.instrumentation import RetryDetails, set_on_retry_hooks

log = structlog.get_logger()

P = ParamSpec("P")
T = TypeVar("T")

On: TypeAlias = type[Exception] | tuple[type[Exception], ...] | Callable[[Exception], bool]
"""What to retry: an exception type, a tuple of them, or a predicate over the error."""

RETRIES = "mesh.retries"
_retries = metrics.get_meter("core.retries").create_counter(
    RETRIES, unit="{retry}", description="Retries scheduled, by operation and error type"
)


class Retry:
    """An operation retried with exponential backoff and jitter, within bounds.

    Use it as a decorator on an async function, or `call` a zero-argument coroutine
    function with it. An instance holds no state between calls; share it freely.

    Args:
        operation: What is retried, as logged and counted (`noun.verb`, a fixed string:
            it is a metric attribute).
        on: The errors worth another try: an exception type, a tuple of them, or a
            predicate. Anything else is raised at once.
        attempts: Tries in all, the first included; None for no limit.
        timeout: Seconds from the first try after which no retry is scheduled; None for
            no limit. With neither bound the operation is retried until it succeeds or is
            cancelled (only for loops that must never give up).
        wait_initial: Seconds before the first retry (plus jitter).
        wait_max: The longest wait between two tries.
        wait_jitter: Up to this many random seconds are added to each wait.

    Example::

        @Retry("inventory.reserve", on=UnavailableError, attempts=4, timeout=10.0)
        async def reserve(item: str) -> Reservation:
            return await inventory.reserve(item)
    """

    __slots__ = (
        "attempts",
        "on",
        "operation",
        "timeout",
        "wait_initial",
        "wait_jitter",
        "wait_max",
    )

    def __init__(
        self,
        operation: str,
        *,
        on: On,
        attempts: int | None = 10,
        timeout: float | None = 45.0,
        wait_initial: float = 0.1,
        wait_max: float = 5.0,
        wait_jitter: float = 1.0,
    ) -> None:
        if attempts is not None and attempts < 1:
            raise ValueError("attempts must be at least 1, or None for no limit")
        if timeout is not None and timeout <= 0:
            raise ValueError("timeout must be greater than 0, or None for no limit")
        if min(wait_initial, wait_max, wait_jitter) < 0:
            raise ValueError("waits must not be negative")
        self.operation = operation
        self.on = on
        self.attempts = attempts
        self.timeout = timeout
        self.wait_initial = wait_initial
        self.wait_max = wait_max
        self.wait_jitter = wait_jitter

    def __repr__(self) -> str:
        return f"Retry({self.operation!r}, attempts={self.attempts}, timeout={self.timeout})"

    def __call__(self, fn: Callable[P, Awaitable[T]]) -> Callable[P, Coroutine[Any, Any, T]]:
        """Decorates an async function: each call of it is retried by this policy."""

        @functools.wraps(fn)
        async def retried(*args: P.args, **kwargs: P.kwargs) -> T:
            return await self.call(functools.partial(fn, *args, **kwargs))

        return retried

    async def call(
        self, work: Callable[[], Awaitable[T]], *, after: Exception | None = None, **fields: object
    ) -> T:
        """Awaits `work()` until it succeeds, retrying the errors of `on` within the bounds.

        Args:
            work: The operation, a coroutine function of no arguments.
            after: An error the caller just had doing the same thing elsewhere (a stream
                that broke, say): the first try is then already a retry, after the
                first wait, logged and counted like any (`after` counts as the first try).
            fields: Added to each `retry.scheduled` line (a component's name, say).

        Raises:
            Exception: The last error `work` raised, once the bounds are reached, or
                at once when `on` does not cover it.
        """
        started = time.monotonic()
        if after is None:
            try:  # the first try runs bare: stamina's machinery costs only when one fails
                return await work()
            except Exception as exc:
                after = exc
        if not self._covers(after):
            raise after
        timeout = self.timeout
        if timeout is not None:
            timeout -= time.monotonic() - started
            if timeout <= 0:
                raise after
        retrying = stamina.retry(
            # Any: stamina 26.2 widened `on` to BaseException, which 26.1 does not accept.
            on=cast(Any, self.on),
            attempts=self.attempts,
            timeout=timeout,
            wait_initial=self.wait_initial,
            wait_max=self.wait_max,
            wait_jitter=self.wait_jitter,
        )(_attempt)
        # stamina's first try re-raises that failure, so its hooks and backoff apply
        return await retrying(work, [after], operation=self.operation, fields=fields)

    def _covers(self, exc: Exception) -> bool:
        on = self.on
        if isinstance(on, tuple | type):  # as stamina: a type is what to catch, not a predicate
            return isinstance(exc, on)
        return bool(on(exc))


async def _attempt(
    work: Callable[[], Awaitable[T]],
    failed: list[Exception],
    *,
    operation: str,
    fields: Mapping[str, object],
) -> T:
    """One try under stamina; the first re-raises the try `Retry.call` already made."""
    if failed:
        raise failed.pop()
    return await work()


_ATTEMPT = f"{_attempt.__module__}.{_attempt.__qualname__}"  # stamina's name for it


def _on_retry(details: RetryDetails) -> None:
    """stamina's hook for every scheduled retry: one log line and one count."""
    fields: Mapping[str, object] = {}
    operation = details.name
    if operation == _ATTEMPT:
        operation = str(details.kwargs["operation"])
        fields = cast(Mapping[str, object], details.kwargs["fields"])  # set by Retry.call
    error = details.caused_by
    kind = type(error).__name__
    text = str(error)
    line = {k: v for k, v in fields.items() if k != "event"} | {
        "operation": operation,
        "attempt": details.retry_num,
        "delay_s": round(details.wait_for, 3),
        "error": kind,
        "cause": f"{kind}: {text}"[:300] if text else kind,
    }
    log.warning("retry.scheduled", **line)
    _retries.add(1, {"operation": operation, "error.type": kind})


set_on_retry_hooks([_on_retry])
