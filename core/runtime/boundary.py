"""The error boundary: one wrapper around every handler a server registers.

- A `DomainError` becomes its gRPC code with a `google.rpc.Status` carrying `ErrorInfo`
  (and `BadRequest` field violations for bad fields).
- Any other exception is logged with its traceback and reaches the client as INTERNAL
  with the fixed message "internal error" and a `correlation_id` in its ErrorInfo (the
  trace id when the call is traced), also on the log line: no class name, text, path or
  URL leaks, in every profile (MESH_ENV).
- A request whose bytes do not decode is INVALID_ARGUMENT, not UNKNOWN.
- With a `Guard` (core.security), every call of our services is authenticated and
  authorized before its handler runs, or before a stream sends anything; the principal
  is current (`current_principal()`) while the handler runs. Health and reflection are
  not guarded.
- Every call writes one `rpc.finished` line with method, code, duration and peer, records
  `rpc.server.duration` when metrics are on and, when tracing is, runs in a SERVER span
  that continues the caller's trace (core.telemetry).
- A unary call whose read went to the cache (`core.telemetry.served`) says how it was
  served in the trailing metadata `mesh-cache` (local-hit, shared-hit, miss, bypass),
  failed calls too (a cached NOT_FOUND), and counts it in `mesh.cache.lookups`.
"""

from __future__ import annotations

import asyncio
import inspect
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any, cast

import grpc
import structlog
from opentelemetry import trace
from opentelemetry.trace import Span
from structlog.contextvars import bind_contextvars

from core import faults
from core.calls.deadlines import set_remaining
from core.calls.status import DETAILS_KEY, to_status
from core.errors import DeadlineExceededError, DomainError, InternalError
from core.runtime._messages import checked, passing_bytes, safe_decoder
from core.runtime.limits import ALWAYS_READY, UNLIMITED, CallLimits, Readiness
from core.security.access import is_exempt
from core.security.guard import Admission, Guard
from core.security.principal import current_principal
from core.telemetry import CACHE_KEY, ServerMethod, cache_outcome

log = structlog.get_logger()

Context = grpc.aio.ServicerContext[Any, Any]


async def abort_with(context: Context, exc: DomainError) -> None:
    """Ends the call with the status for `exc`, details included. Always raises AbortError."""
    status = to_status(exc)  # its message is clipped to a size any client accepts
    trailers: tuple[tuple[str, str | bytes], ...] = ((DETAILS_KEY, status.SerializeToString()),)
    outcome = cache_outcome()
    if outcome is not None:  # abort replaces the trailing metadata set before: say it again
        trailers += ((CACHE_KEY, outcome),)
    await context.abort(exc.code, status.message, trailers)


# What a method's calls pass before its handler: the guard, the limits, the readiness gate.
Policy = tuple[Admission | None, CallLimits, Readiness]


class BoundaryServer:
    """Stands in for a grpc.aio.Server while services register, wrapping every handler once.

    The generated `add_<Name>Servicer_to_server` functions (ours, health's, reflection's)
    call these two methods. Wrapping here rather than in a ServerInterceptor keeps the
    interceptor chain, and its per-call coroutine, off every call: a measured 10 % of the
    CPU of a cached read.

    Methods the generated code would register with the server go into one generic
    handler instead: grpc.aio keeps a pending request per registered method and waits on
    all of them (`asyncio.wait`) each time it accepts calls, so every registered method
    costs every call. With health, reflection and admin beside a service that was about
    a fifth more instructions per cached read; a dict lookup per call costs next to nothing.
    """

    def __init__(
        self,
        server: grpc.aio.Server,
        guard: Guard | None = None,
        limits: CallLimits | None = None,
        gates: Mapping[str, Readiness] | None = None,
    ) -> None:
        self._server = server
        self._guard = guard
        self._limits = limits or UNLIMITED
        self._gates = gates or {}  # by service: what its calls wait for; none: always open
        self._methods = _MethodTable()
        # First, so it answers before the generated generic handlers of the same methods.
        server.add_generic_rpc_handlers((self._methods,))

    def add_registered_method_handlers(
        self, service: str, handlers: dict[str, grpc.RpcMethodHandler[Any, Any]]
    ) -> None:
        for name, handler in handlers.items():
            method = f"/{service}/{name}"
            self._methods.handlers[method] = _wrap(handler, method, *self._policy(method))

    def add_generic_rpc_handlers(self, handlers: Sequence[grpc.GenericRpcHandler]) -> None:
        self._server.add_generic_rpc_handlers(tuple(_Wrapped(h, self._policy) for h in handlers))

    def _policy(self, method: str) -> Policy:
        """Who may call `method`, what must be ready first, and the limits it counts
        against: none for health and reflection, which probes and operators need most
        when the process is full."""
        if is_exempt(method):
            return None, UNLIMITED, ALWAYS_READY
        admit = None if self._guard is None else self._guard.admission(method)
        service = method.split("/")[1] if method.count("/") == 2 else ""
        return admit, self._limits, self._gates.get(service, ALWAYS_READY)


class _MethodTable(grpc.GenericRpcHandler):
    """Wrapped handlers by full method name (`/package.Service/Method`)."""

    def __init__(self) -> None:
        self.handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}

    def service(
        self, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        return self.handlers.get(handler_call_details.method)


class _Wrapped(grpc.GenericRpcHandler):
    """A generic handler whose method handlers pass through the boundary."""

    def __init__(
        self,
        inner: grpc.GenericRpcHandler,
        policy: Callable[[str], Policy],
    ) -> None:
        self._inner = inner
        self._policy = policy
        self._wrapped: dict[str, tuple[Any, grpc.RpcMethodHandler[Any, Any]]] = {}

    def service(
        self, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = self._inner.service(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        cached = self._wrapped.get(method)
        if cached is None or cached[0] is not handler:
            wrapped = _wrap(handler, method, *self._policy(method))
            cached = self._wrapped[method] = (handler, wrapped)
        return cached[1]


def _wrap(
    handler: grpc.RpcMethodHandler[Any, Any],
    method: str,
    admit: Admission | None,
    limits: CallLimits,
    ready: Readiness,
) -> grpc.RpcMethodHandler[Any, Any]:
    # grpc's stubs describe the synchronous handler shape; the aio server stores
    # coroutine functions and async generators in the same attributes, hence Any.
    h = cast(Any, handler)
    decode = safe_decoder(h.request_deserializer)
    if h.unary_unary:
        return grpc.unary_unary_rpc_method_handler(
            _unary(h.unary_unary, method, admit, limits, ready, unary_request=True),
            decode,
            h.response_serializer,
        )
    if h.stream_unary:
        return grpc.stream_unary_rpc_method_handler(
            _unary(h.stream_unary, method, admit, limits, ready, unary_request=False),
            decode,
            h.response_serializer,
        )
    behavior = h.unary_stream or h.stream_stream
    wrap = _streaming_gen if inspect.isasyncgenfunction(behavior) else _streaming_coro
    build = (
        grpc.unary_stream_rpc_method_handler
        if h.unary_stream
        else grpc.stream_stream_rpc_method_handler
    )
    return build(
        wrap(behavior, method, admit, limits, ready, unary_request=bool(h.unary_stream)),
        decode,
        passing_bytes(h.response_serializer),
    )


def _unary(
    behavior: Any,
    method: str,
    admit: Admission | None,
    limits: CallLimits,
    ready: Readiness,
    *,
    unary_request: bool,
) -> Any:
    observed = ServerMethod(method)  # names and metric attributes, built once
    default = limits.default_deadline

    async def handle(request: Any, context: Context) -> Any:
        started, unbounded = _begin(method, context, default)
        span = observed.start(context)
        try:
            with limits.calls:  # refused at once when the process is full
                if not ready.open:  # or when what the service needs is not running or down
                    ready.refuse(method)
                if admit is not None:  # authenticated and authorized before the handler runs
                    await admit(context)
                _take_turn(limits, context)
                await faults.hit("rpc.start")  # tests only (core.faults)
                call = behavior(checked(request, unary_request), context)
                response = await (_within(call, default) if unbounded else call)
                limits.check_response(response)
        except BaseException as exc:
            await _failed(context, exc, started, observed, span)
            raise
        outcome = cache_outcome()
        if outcome is not None:
            context.set_trailing_metadata(((CACHE_KEY, outcome),))
        _finished(context.code() or grpc.StatusCode.OK, started, observed, span)
        return response

    return handle


def _streaming_gen(
    behavior: Any,
    method: str,
    admit: Admission | None,
    limits: CallLimits,
    ready: Readiness,
    *,
    unary_request: bool,
) -> Any:
    observed = ServerMethod(method)

    async def handle(request: Any, context: Context) -> AsyncIterator[Any]:
        started, _ = _begin(method, context, 0.0)  # a stream lasts as long as its caller wants
        span = observed.start(context)
        try:
            with limits.streams:
                if not ready.open:
                    ready.refuse(method)
                if admit is not None:  # before the stream sends anything
                    await admit(context)
                _take_turn(limits, context)
                async for response in behavior(checked(request, unary_request), context):
                    yield response
        except BaseException as exc:
            await _failed(context, exc, started, observed, span)
            raise
        _finished(context.code() or grpc.StatusCode.OK, started, observed, span)

    return handle


def _streaming_coro(
    behavior: Any,
    method: str,
    admit: Admission | None,
    limits: CallLimits,
    ready: Readiness,
    *,
    unary_request: bool,
) -> Any:
    observed = ServerMethod(method)

    async def handle(request: Any, context: Context) -> None:
        started, _ = _begin(method, context, 0.0)
        span = observed.start(context)
        try:
            with limits.streams:
                if not ready.open:
                    ready.refuse(method)
                if admit is not None:
                    await admit(context)
                _take_turn(limits, context)
                await behavior(checked(request, unary_request), context)
        except BaseException as exc:
            await _failed(context, exc, started, observed, span)
            raise
        _finished(context.code() or grpc.StatusCode.OK, started, observed, span)

    return handle


def _take_turn(limits: CallLimits, context: Context) -> None:
    """Counts the call against its caller's rate limit: the principal, or for a caller
    without credentials its address (`ipv4:10.0.0.7`, without the port)."""
    if limits.rate.rate > 0:
        principal = current_principal()
        authenticated = principal.method != "unauthenticated"
        limits.rate.take(principal.subject if authenticated else context.peer().rpartition(":")[0])


def _begin(method: str, context: Context, default_deadline: float) -> tuple[float, bool]:
    """Binds the call's log fields and deadline; returns its start time and whether it
    came without a deadline and runs under the server's default."""
    # grpc.aio runs every call in a task of its own, with its own copy of the context
    # variables: what we bind here is seen by the handler's logs and needs no unbinding.
    bind_contextvars(rpc=method, peer=context.peer())
    left = context.time_remaining()
    unbounded = left is None and default_deadline > 0
    if left is not None or unbounded:
        set_remaining(default_deadline if left is None else left)
    return time.perf_counter(), unbounded


async def _within(call: Awaitable[Any], seconds: float) -> Any:
    """Awaits a call that came without a deadline, bounded by the server's default."""
    bound = asyncio.timeout(seconds)
    try:
        async with bound:
            return await call
    except TimeoutError:
        if not bound.expired():  # the handler's own timeout, not ours
            raise
        raise DeadlineExceededError(
            f"the call came without a deadline and ran past the server's default of "
            f"{seconds:g}s (MESH_DEFAULT_DEADLINE_SECONDS); send a deadline to choose",
            reason="SERVER_DEADLINE_EXCEEDED",
        ) from None


def _finished(
    code: grpc.StatusCode,
    started: float,
    observed: ServerMethod,
    span: Span | None,
    error: BaseException | None = None,
) -> None:
    ms = (time.perf_counter() - started) * 1000
    outcome = cache_outcome()
    if outcome is None:
        log.info("rpc.finished", code=code.name, ms=round(ms, 3))  # inside the span: traced
    else:
        log.info("rpc.finished", code=code.name, ms=round(ms, 3), cache=outcome)
        observed.looked_up(outcome, span)
    observed.end(code, ms, span, error)


def _correlation_id() -> str:
    """What ties an INTERNAL answer to its log line: the trace id, or a fresh random id."""
    span = trace.get_current_span().get_span_context()
    return format(span.trace_id, "032x") if span.is_valid else uuid.uuid4().hex


async def _failed(
    context: Context,
    exc: BaseException,
    started: float,
    observed: ServerMethod,
    span: Span | None,
) -> None:
    """Logs the call's end; for a domain or unexpected error, aborts with its status.

    Returns (so the caller re-raises) for cancellation, aborts already made and
    non-`Exception` errors; raises AbortError in place of `exc` otherwise.
    """
    replacement: DomainError | None = None
    if isinstance(exc, asyncio.CancelledError | GeneratorExit):
        code = grpc.StatusCode.CANCELLED
    elif isinstance(exc, grpc.aio.AbortError):
        code = context.code() or grpc.StatusCode.UNKNOWN
    elif isinstance(exc, DomainError):
        code, replacement = exc.code, exc
    elif isinstance(exc, Exception):
        correlation = _correlation_id()
        log.error("rpc.unexpected_error", exc_info=exc, correlation_id=correlation)
        replacement = InternalError("internal error", metadata={"correlation_id": correlation})
        code = grpc.StatusCode.INTERNAL
    else:  # KeyboardInterrupt and the like are not ours to turn into a status
        code = grpc.StatusCode.UNKNOWN
    _finished(code, started, observed, span, exc if replacement is not None else None)
    if replacement is not None:
        await abort_with(context, replacement)
