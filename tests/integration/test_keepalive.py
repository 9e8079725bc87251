"""A connection that goes silent (a frozen peer, not a closed one) is found by keepalive
within its interval plus its timeout, and the stream on it ends UNAVAILABLE so the
subscriber can resume elsewhere."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from clients.admin import AdminClient
from core.config import ChannelSettings, Settings
from core.errors import UnavailableError
from core.testing.services import FAST_START, serving
from tests._services import ADMIN
from tests.faults.proxy import FaultProxy

KEEPALIVE = 1.0
TIMEOUT = 1.0


async def drain(stream: AsyncIterator[object], *, within: float) -> None:
    async with asyncio.timeout(within):
        async for _ in stream:
            pass


async def test_stream_through_a_frozen_connection_ends_unavailable() -> None:
    settings = Settings(
        address="127.0.0.1:0",
        start_policy=FAST_START,
        keepalive=KEEPALIVE,
        keepalive_timeout=TIMEOUT,
    )
    channel = ChannelSettings(keepalive=KEEPALIVE, keepalive_timeout=TIMEOUT)
    async with (
        serving(ADMIN, settings=settings) as running,
        FaultProxy(running.server.port) as proxy,
        AdminClient(proxy.address, channel=channel) as admin,
    ):
        updates = admin.watch_service_status()
        await anext(updates)
        proxy.freeze()
        frozen = time.monotonic()
        with pytest.raises(UnavailableError):
            # Bounded far below gRPC's own 60 s ping timeout, which applied before.
            await drain(updates, within=10 * (KEEPALIVE + TIMEOUT))
        took = time.monotonic() - frozen
        print(f"frozen connection detected after {took:.1f} s")


async def test_a_client_pinging_too_often_is_refused_without_harming_others() -> None:
    settings = Settings(address="127.0.0.1:0", start_policy=FAST_START, keepalive=30.0)
    pushy = ChannelSettings(keepalive=1.0, keepalive_timeout=TIMEOUT)  # 15x the permitted rate
    async with (
        serving(ADMIN, settings=settings) as running,
        AdminClient(running.address, channel=pushy) as rude,
        AdminClient(running.address) as polite,
    ):
        rude_updates, polite_updates = rude.watch_service_status(), polite.watch_service_status()
        await anext(rude_updates)
        await anext(polite_updates)
        with pytest.raises(UnavailableError, match=r"(?i)too many pings"):
            await drain(rude_updates, within=30)
        # The other connection is untouched: its stream is open and its calls answer.
        assert (await polite.ping("still here")).message == "still here"
        waiting = asyncio.ensure_future(anext(polite_updates))
        done, _ = await asyncio.wait({waiting}, timeout=0.2)
        assert not done, "the polite client's stream ended"
        waiting.cancel()
