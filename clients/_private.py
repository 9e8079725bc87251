"""What every client shares: one channel per client, errors decoded into domain errors."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial
from types import TracebackType
from typing import Self, TypeVar

import grpc

from core.errors import UnavailableError, from_rpc_error

T = TypeVar("T")


class Client:
    """Opens a channel to `address` on enter and closes it on exit.

    Subclasses build stubs on `self.channel`, which raises a RuntimeError that says
    how to open the client when it is not open, and set `deadline` (seconds a call may
    take by default) and `attempts` (tries of a call that is safe to retry).
    """

    deadline: float = 10.0
    attempts: int = 3

    def __init__(self, address: str) -> None:
        self.address = address
        self._channel: grpc.aio.Channel | None = None

    @property
    def channel(self) -> grpc.aio.Channel:
        if self._channel is None:
            raise RuntimeError(f"{type(self).__name__} is not open: use `async with`")
        return self._channel

    async def __aenter__(self) -> Self:
        self._channel = grpc.aio.insecure_channel(self.address)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = None

    async def _retried(self, rpc: Callable[[float], Awaitable[T]], timeout: float | None) -> T:
        """Calls `rpc(remaining_seconds)`, again after UNAVAILABLE, within one deadline."""
        deadline = time.monotonic() + (timeout or self.deadline)
        for attempt in range(1, self.attempts + 1):
            remaining = deadline - time.monotonic()
            try:
                return await call(partial(rpc, max(remaining, 0.001)))
            except UnavailableError:
                backoff = min(1.0, 0.05 * 2**attempt) * random.uniform(0.5, 1.0)
                if attempt == self.attempts or time.monotonic() + backoff >= deadline:
                    raise
                await asyncio.sleep(backoff)
        raise AssertionError("unreachable")  # pragma: no cover


async def call(rpc: Callable[[], Awaitable[T]]) -> T:
    """Awaits one unary call; a failed call raises the matching `core.errors` exception."""
    try:
        return await rpc()
    except grpc.RpcError as exc:
        raise from_rpc_error(exc) from None


@asynccontextmanager
async def translated() -> AsyncIterator[None]:
    """Like `call`, for the body of a streaming call."""
    try:
        yield
    except grpc.RpcError as exc:
        raise from_rpc_error(exc) from None
