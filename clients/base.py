"""The base of every typed client: its channel, resilience, telemetry and error decoding.

Every call goes through `Client._unary` or `Client._stream`, the one place that applies
the deadline (the client's, the call's `timeout=`, and what is left of the deadline of
the server call being handled), the target's circuit breaker, telemetry, and turns a
failed call into the `core.errors` exception the server raised. gRPC's retry policy
(the channel's service config, see `core.calls.channel`) retries a server's UNAVAILABLE
answers of the client's idempotent methods; riding out a restart is made here: a call
waits (unsent) up to `Resilience.ready_wait` for a ready server, and an idempotent call
that no server answered goes again once one is ready (`core.retries`). Writes that are
not idempotent are never sent twice.

Usage (every client takes the same arguments)::

    resilience = Resilience(deadline=2.0, attempts=3, breaker_failures=5)
    async with ProjectsClient(
        "dns:///projects.internal:50051", resilience=resilience, channel=settings.channel()
    ) as projects:
        await projects.get_project("projects/demo", timeout=0.5)  # this call: 0.5 s

        trailers = Trailers()  # what the server sent after its answer, e.g. how it was served
        await projects.get_project("projects/demo", trailers=trailers)
        trailers.cache                                             # "local-hit"
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import ClassVar, Self, TypeVar

import grpc

from clients._restarts import answered, has_ready_server, retry_unserved, trailing, when_ready
from core import telemetry
from core.calls.breaker import CircuitBreaker, breaker_for
from core.calls.channel import Resilience, channel_target, open_channel, service_config
from core.calls.deadlines import remaining
from core.calls.status import from_rpc_error
from core.calls.tokens import BearerToken
from core.config import ChannelSettings
from core.errors import DeadlineExceededError, DomainError, UnavailableError
from core.telemetry import CACHE_KEY

__all__ = [
    "SERVER_DROPPED_CALL",
    "SERVER_NOT_READY",
    "ChannelSettings",
    "Client",
    "Resilience",
    "Trailers",
]

# The reason of the UnavailableError for a call no ready server could take.
SERVER_NOT_READY = "SERVER_NOT_READY"
# The reason of the UnavailableError for a call the server cancelled without an answer.
SERVER_DROPPED_CALL = "SERVER_DROPPED_CALL"
# What grpc core reports for a server whose health check (our `readiness`) is not SERVING.
NOT_READY_TEXT = "backend unhealthy"

Request = TypeVar("Request")
Response = TypeVar("Response")


@dataclass(slots=True)
class Trailers:
    """The trailing metadata of one call, filled in when it ends, failed or not: the
    `grpc.Trailer(&md)` call option of grpc-go. Pass a fresh one to a client method that
    takes `trailers=`; one per call, so concurrent calls on one client never mix.

    Attributes:
        metadata: Every trailing pair the server sent (binary keys end in "-bin").
    """

    metadata: tuple[tuple[str, str | bytes], ...] = ()

    @property
    def cache(self) -> str:
        """How the server's cache served the read: "local-hit", "shared-hit", "miss" or
        "bypass" (see the `mesh-cache` trailer in README); "" if the server did not say."""
        for key, value in self.metadata:
            if key == CACHE_KEY:
                return value if isinstance(value, str) else value.decode()
        return ""


class Client:
    """Opens a channel to `address` on enter and closes it on exit.

    Subclasses set `service` (the proto's `package.Service`) and `idempotent` (the
    method names that are safe to send twice: reads, writes that carry a request id or
    event ids, acks), build stubs on `self.channel` and call through `_unary`/`_stream`.
    Probes (health, admin) set `health_checked` and `guarded` to False: they must reach
    a server that is not ready, and report it down rather than CIRCUIT_OPEN or wait.

    Args:
        address: HOST:PORT, a comma-separated list of IP:PORT, or dns:///NAME:PORT.
        resilience: Default deadline, retries of idempotent calls, the wait for a ready
            server (`ready_wait`) and the circuit breaker.
        channel: Keepalive, message size, TLS and the bearer token (`token`,
            `token_file`); `Settings.channel()` in a server.
        deadline: Shorthand for `resilience.deadline`.
        attempts: Shorthand for `resilience.attempts`.
        health_checked: Send calls only to servers whose readiness is SERVING (default:
            the class's `health_checked`).
    """

    service: ClassVar[str] = ""
    idempotent: ClassVar[frozenset[str]] = frozenset()
    health_checked: ClassVar[bool] = True
    guarded: ClassVar[bool] = True  # calls pass through the target's circuit breaker

    def __init__(
        self,
        address: str,
        *,
        resilience: Resilience | None = None,
        channel: ChannelSettings | None = None,
        deadline: float | None = None,
        attempts: int | None = None,
        health_checked: bool | None = None,
    ) -> None:
        resilience = resilience or Resilience()
        if deadline is not None:
            resilience = dataclasses.replace(resilience, deadline=deadline)
        if attempts is not None:
            resilience = dataclasses.replace(resilience, attempts=attempts)
        self.address = address
        self.target = channel_target(address)  # raises ConfigError for a bad address
        self.resilience = resilience
        self.channel_settings = channel or ChannelSettings()
        # Sent with every call: MESH_TOKEN, or MESH_TOKEN_FILE re-read when it changes.
        self.token = BearerToken(self.channel_settings.token, self.channel_settings.token_file)
        self._health_checked = self.health_checked if health_checked is None else health_checked
        self._channel: grpc.aio.Channel | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.breaker: CircuitBreaker | None = None
        if self.guarded:
            self.breaker = breaker_for(
                self.target,
                failures_to_open=resilience.breaker_failures,
                reset=resilience.breaker_reset,
                trials=resilience.breaker_trials,
            )

    @property
    def deadline(self) -> float:
        return self.resilience.deadline

    @property
    def channel(self) -> grpc.aio.Channel:
        """The open channel; a RuntimeError if the client is closed or on another loop."""
        if self._channel is None:
            raise RuntimeError(f"{type(self).__name__} is not open: use `async with`")
        if _running_loop() is not self._loop:
            raise RuntimeError(
                f"{type(self).__name__} was opened on another event loop: open one client "
                "per loop (a gRPC channel belongs to the loop it was opened on)"
            )
        return self._channel

    async def __aenter__(self) -> Self:
        if self._channel is not None:
            raise RuntimeError(f"{type(self).__name__} is already open")
        names = (f"{self.service}/{method}" for method in self.idempotent)
        config = service_config(names, self.resilience, health_checked=self._health_checked)
        self._loop = asyncio.get_running_loop()
        self._channel = open_channel(self.address, self.channel_settings, config)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        channel, self._channel = self._channel, None
        if channel is not None:
            await channel.close()

    async def wait_ready(self, timeout: float) -> None:
        """Waits until the channel is connected to a ready server (after a restart, say).

        Calls fail fast while no server is ready, and the channel tries to reconnect
        about once a second; a caller that knows the server is back waits here first.

        Raises:
            UnavailableError: No server was ready within `timeout` seconds.
        """
        try:
            async with asyncio.timeout(timeout):
                await self.channel.channel_ready()
        except TimeoutError:
            raise UnavailableError(
                f"no ready server at {self.target} within {timeout:g}s",
                reason="NOT_READY",
                metadata={"target": self.target},
            ) from None

    def _timeout(self, timeout: float | None) -> float:
        """The call's own timeout (or the default deadline), cut to the propagated one."""
        own = self.resilience.deadline if timeout is None else timeout
        left = remaining()
        if left is None:
            return own
        if left <= 0:
            raise DeadlineExceededError(
                f"the deadline of the call being handled has passed; not calling {self.service}",
                reason="DEADLINE_PROPAGATED",
                metadata={"target": self.target},
            )
        return min(own, left)

    def _decode(self, exc: grpc.RpcError) -> DomainError:
        """The domain error for a failed call; a server that is not ready says so.

        gRPC's health-checked balancing fails a call to servers whose readiness is not
        SERVING with UNAVAILABLE and its own text ("connections to all backends failing
        ... backend unhealthy"); that becomes `SERVER_NOT_READY`, naming the target and
        the service, with gRPC's text in the metadata's `grpc_message`.

        A call the server cancelled without an answer (a stopping server drops the calls
        it received but had not started) becomes UNAVAILABLE `SERVER_DROPPED_CALL`: like
        a connection lost mid-call, it went away unanswered and another try may succeed.
        A call this process cancels raises `asyncio.CancelledError`, never this.
        """
        error = from_rpc_error(exc)
        if error.code is grpc.StatusCode.CANCELLED and not answered(exc):
            return UnavailableError(
                f"{self.target} ended the call without an answer (was it stopping?)",
                reason=SERVER_DROPPED_CALL,
                metadata={"target": self.target, "grpc_message": error.message},
            )
        if (
            self._health_checked
            and error.code is grpc.StatusCode.UNAVAILABLE
            and not answered(exc)
            and NOT_READY_TEXT in error.message
        ):
            return UnavailableError(
                f"{self.service} at {self.target} is not ready (its readiness is not SERVING)",
                reason=SERVER_NOT_READY,
                metadata={
                    "target": self.target,
                    "service": self.service,
                    "grpc_message": error.message,
                },
            )
        return error

    async def _unary(
        self,
        method: str,
        rpc: grpc.aio.UnaryUnaryMultiCallable[Request, Response],
        request: Request,
        timeout: float | None = None,
        trailers: Trailers | None = None,
    ) -> Response:
        """Makes one unary call and decodes its failure; `trailers` gets the trailing
        metadata of the call's last attempt.

        A guarded client rides out a restart: while it has no ready server the call
        waits for one, and an idempotent call that no server took is tried again
        (`clients._restarts`), all within the call's deadline. gRPC's retry policy
        still retries a server's own UNAVAILABLE answers (see `core.calls.channel`).
        """
        call = telemetry.client_call(f"/{self.service}/{method}", self.target)
        breaker = self.breaker
        try:
            seconds = self._timeout(timeout)
            if breaker is not None:
                if breaker.awaits_server and has_ready_server(self.channel):
                    breaker.recover()  # opened while no server was ready; one is now
                breaker.check()
        except DomainError as exc:
            call.end(exc.code)
            raise
        code = outcome = grpc.StatusCode.OK  # outcome: what the breaker counts
        unreachable = False  # the call failed while no server was ready
        now = time.monotonic()
        deadline = now + seconds
        wait_until = now + min(self.resilience.ready_wait, seconds / 2) if self.guarded else now
        metadata = call.metadata + self.token.metadata()

        async def attempt() -> Response:
            await when_ready(self.channel, wait_until)
            left = max(deadline - time.monotonic(), 0.001)  # none left: DEADLINE_EXCEEDED
            if trailers is None:
                return await rpc(request, timeout=left, metadata=metadata)
            sent = rpc(request, timeout=left, metadata=metadata)
            response = await sent
            trailers.metadata = tuple(await sent.trailing_metadata() or ())
            return response

        try:
            if self.guarded and method in self.idempotent and self.resilience.attempts > 1:
                restarts = retry_unserved(self.resilience, seconds, wait_until)
                return await restarts.call(attempt, rpc=method, target=self.target)
            return await attempt()
        except grpc.RpcError as exc:
            if trailers is not None:
                trailers.metadata = trailing(exc)
            error = self._decode(exc)
            code = error.code
            # A server that answers with error details is up and chose the answer (its
            # database is down, it is stopping): only failures without them (no
            # connection, no ready server, no answer in time) count against the target.
            outcome = grpc.StatusCode.OK if answered(exc) else code
            unreachable = not has_ready_server(self.channel)
            raise error from None
        except asyncio.CancelledError:
            code = outcome = grpc.StatusCode.CANCELLED
            raise
        finally:
            if breaker is not None:
                breaker.record(outcome, unreachable=unreachable)
            call.end(code)

    async def _stream(
        self,
        method: str,
        rpc: grpc.aio.UnaryStreamMultiCallable[Request, Response],
        request: Request,
        *,
        on_call: Callable[[grpc.aio.UnaryStreamCall[Request, Response]], None] | None = None,
    ) -> AsyncGenerator[Response, None]:
        """Yields a server stream's messages; decodes its failure.

        No deadline of its own (streams are long-lived) but the propagated one, and no
        circuit breaker: a stream's owner reconnects with its own backoff, and counting
        those attempts would keep the breaker open for the unary calls of a server that
        has just come back. `on_call` gets the call, so another task can cancel it.
        Close the generator (`contextlib.aclosing`) to cancel the call at once.
        """
        call = telemetry.client_call(f"/{self.service}/{method}", self.target)
        left = remaining()
        try:
            seconds = None if left is None else self._timeout(left)
        except DomainError as exc:
            call.end(exc.code)
            raise
        stream = rpc(request, timeout=seconds, metadata=call.metadata + self.token.metadata())
        if on_call is not None:
            on_call(stream)
        code = grpc.StatusCode.OK
        try:
            async for message in stream:
                yield message
        except grpc.RpcError as exc:
            error = self._decode(exc)
            code = error.code
            raise error from None
        except (asyncio.CancelledError, GeneratorExit):
            code = grpc.StatusCode.CANCELLED
            raise
        finally:
            stream.cancel()
            call.end(code)


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None
