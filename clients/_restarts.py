"""Riding out a server restart (see `clients.base`): a call waits, unsent, for a ready
server, and an idempotent call that no server answered goes again once one is ready.

Whether a server answered is read from the failure: a meshkit server's own answers carry
a google.rpc.Status in the trailing metadata; a refused connection, no ready server or a
call dropped unstarted by a stopping server carry none.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import grpc

from core.calls.channel import Resilience
from core.calls.status import DETAILS_KEY
from core.retries import Retry


def has_ready_server(channel: grpc.aio.Channel) -> bool:
    return channel.get_state() is grpc.ChannelConnectivity.READY


async def when_ready(channel: grpc.aio.Channel, until: float) -> None:
    """Waits, until the monotonic time `until` at the latest, for a ready server.

    Costs one state check while the channel is READY. The call that follows is sent
    either way: when none became ready it fails as gRPC fails it (no connection, or
    SERVER_NOT_READY), which says more than a timeout would.
    """
    if has_ready_server(channel):
        return
    budget = until - time.monotonic()
    if budget <= 0:
        return
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(budget):
            await channel.channel_ready()


def retry_unserved(resilience: Resilience, seconds: float, wait_until: float) -> Retry:
    """Tries an idempotent call again that no server took, once one is ready, while its
    time to wait for one lasts: a server that stays not ready (its database is down) gets
    one try after the wait, not a try per attempt."""

    def unserved(error: Exception) -> bool:
        return _unserved(error) and time.monotonic() < wait_until

    return Retry(
        "client.call",
        on=unserved,
        attempts=resilience.attempts,
        timeout=seconds,
        wait_initial=resilience.initial_backoff,
        wait_max=resilience.max_backoff,
        wait_jitter=resilience.initial_backoff,
    )


def _unserved(error: Exception) -> bool:
    """Whether no server answered the call: UNAVAILABLE without a server's answer (refused
    connection, no ready server, a connection that went away) or a call the server
    cancelled unanswered. Such a call is tried again only for idempotent methods: one
    that went away mid-call may have been served."""
    return (
        isinstance(error, grpc.aio.AioRpcError)
        and error.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
        and not answered(error)
    )


def answered(error: grpc.RpcError) -> bool:
    """Whether a meshkit server sent this failure (with a google.rpc.Status in details)."""
    return any(key == DETAILS_KEY for key, _ in trailing(error))


def trailing(error: grpc.RpcError) -> tuple[tuple[str, str | bytes], ...]:
    """The trailing metadata of a failed call; empty when it has none."""
    metadata = getattr(error, "trailing_metadata", None)
    return tuple((metadata() if callable(metadata) else None) or ())
