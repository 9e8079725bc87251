"""Helpers of the events tests: a server on each backend, a raw stub, stream readers."""

from __future__ import annotations

import asyncio
import dataclasses
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import grpc

from core.calls.status import from_rpc_error
from core.config import EventSettings, Settings
from core.errors import DomainError
from core.testing.databases import forget_namespace
from core.testing.services import Running, serving, settings_for
from mesh.events.v1 import events_pb2 as pb
from mesh.events.v1 import events_pb2_grpc
from tests._services import EVENTS

REDIS_URL = os.environ.get("MESH_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
T = TypeVar("T")


def events_settings(backend: str, tmp_path: Path, **event_overrides: Any) -> Settings:
    """Settings of an events server on `backend` ("sql" on SQLite, or "redis")."""
    config = dataclasses.replace(EventSettings(backend=backend), **event_overrides)
    database = f"sqlite+aiosqlite:///{tmp_path / 'events.db'}"
    redis_url = REDIS_URL if backend == "redis" else ""
    return settings_for(database, redis_url=redis_url, events=config)


@asynccontextmanager
async def events_server(settings: Settings) -> AsyncIterator[Running]:
    """The events service the way `mesh serve events` runs it, through the test kit."""
    async with serving(EVENTS, settings=settings) as r:
        yield r


async def drop_namespace(namespace: str) -> None:
    """Deletes every Redis key of a test's namespace."""
    await forget_namespace(REDIS_URL, namespace)


@asynccontextmanager
async def stub_of(server: Running) -> AsyncIterator[events_pb2_grpc.EventServiceStub]:
    async with grpc.aio.insecure_channel(server.address) as channel:
        yield events_pb2_grpc.EventServiceStub(channel)


def event(type: str = "mesh.test.v1.thing.done", **fields: Any) -> pb.Event:
    return pb.Event(type=type, source=fields.pop("source", "tests"), **fields)


async def failure(call: Awaitable[Any]) -> DomainError:
    """The domain error a call fails with; fails the test if it succeeds."""
    try:
        await call
    except grpc.RpcError as exc:
        return from_rpc_error(exc)
    raise AssertionError("the call succeeded")


async def take(
    stream: Any, count: int, *, until: Callable[[pb.SubscribeResponse], bool] | None = None
) -> list[pb.SubscribeResponse]:
    """Reads messages until `count` events arrived (or `until` holds), within 10 s."""
    got: list[pb.SubscribeResponse] = []
    async with asyncio.timeout(10):
        async for message in stream:
            got.append(message)
            if until is not None and until(message):
                break
            if until is None and sum(m.HasField("event") for m in got) >= count:
                break
    return got


def events_of(messages: list[pb.SubscribeResponse]) -> list[pb.Event]:
    return [m.event for m in messages if m.HasField("event")]


async def eventually(check: Callable[[], Awaitable[T]], timeout: float = 10.0) -> T:
    """Polls `check` until it returns without an AssertionError, within `timeout`."""
    async with asyncio.timeout(timeout):
        while True:
            try:
                return await check()
            except AssertionError:
                await asyncio.sleep(0.05)
