"""Shared by test_security_owners*.py: a server requiring HS256 tokens, and the callers'
tokens (alice and bob may read and write projects and events; root holds `admin`)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

import pytest

from core.config import AuthSettings, ChannelSettings
from core.errors import DomainError
from core.testing.credentials import hs256_token
from core.testing.databases import forget_namespace
from core.testing.services import Running, serving, settings_for
from tests._services import ADMIN, EVENTS, PROJECTS

SECRET = "owners-test-secret-of-at-least-32-bytes"
AUTH = AuthSettings(mode="required", jwt_secret=SECRET)
WRITER = "projects.read projects.write events.read events.subscribe events.publish"


def bearer(sub: str, scope: str) -> str:
    """An HS256 token of `sub` with the space-separated `scope`, valid for an hour."""
    return hs256_token(SECRET, sub=sub, scope=scope)


ALICE = bearer("alice", WRITER)
BOB = bearer("bob", WRITER)
ROOT = bearer("root", "admin")
AUDITOR = bearer("auditor", "audit.read")


@asynccontextmanager
async def secured_server(database_url: str, redis_url: str = "") -> AsyncIterator[Running]:
    """Projects, events (on the in-process bus, or Redis with `redis_url`) and admin in
    one process requiring tokens; its Redis keys are deleted afterwards."""
    settings = replace(settings_for(database_url, redis_url=redis_url), auth=AUTH)
    try:
        async with serving(ADMIN, PROJECTS, EVENTS, settings=settings) as running:
            yield running
    finally:
        if redis_url:
            await forget_namespace(redis_url, settings.cache_namespace)


async def client(running: Running, kind: Any, token: str) -> Any:
    """A typed client of `running` that sends `token`, closed before the server stops."""
    opened = kind(running.address, channel=ChannelSettings(token=token))
    return await running._clients.enter_async_context(opened)


async def failure(call: Awaitable[Any]) -> DomainError:
    """The domain error `call` fails with."""
    with pytest.raises(DomainError) as caught:
        await call
    return caught.value
