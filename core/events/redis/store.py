"""`RedisEventStore`: the stream and group halves over one client, opened and checked."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from core.events.model import AppendListener, LossListener
from core.events.redis import scripts
from core.events.redis.groups import RedisGroups
from core.events.redis.replies import as_text
from core.events.redis.stream import BLOCK, RedisStream

_GAP_REPORTED = 300.0  # seconds `check` reports a gap after it was found


class RedisEventStore(RedisStream, RedisGroups):
    """`core.events.model.EventStore` over Redis Streams, shared by every instance.

    Args:
        url: For example "redis://127.0.0.1:6379/0". The Redis must not evict keys
            (maxmemory-policy noeviction): an evicted sentinel reads as lost data.
        namespace: Every key starts with f"{namespace}:events:".
        retention: Events kept; older ones are trimmed with their statuses.
        timeout: Seconds any one Redis call may take.

    Usage::

        bus = EventBus(RedisEventStore(settings.redis_url))
    """

    name = "redis"
    read_ahead = True

    def __init__(
        self, url: str, *, namespace: str = "mesh", retention: int = 1_000_000, timeout: float = 2.0
    ) -> None:
        if retention < 1 or timeout <= BLOCK:
            raise ValueError("retention must be positive and timeout above the XREAD block")
        super().__init__(namespace=namespace, timeout=timeout, retention=retention)
        self._url = url

    async def open(self, on_append: AppendListener, on_lost: LossListener) -> None:
        # No hidden retries but one: a connection that died with a restarted Redis.
        # A pool that queues for a free connection (bounded by the socket timeout) rather
        # than failing when many subscriptions and groups need Redis at once.
        pool = BlockingConnectionPool.from_url(
            self._url,
            max_connections=100,
            timeout=self._timeout,
            socket_timeout=self._timeout,
            socket_connect_timeout=self._timeout,
            retry=Retry(NoBackoff(), 1),
            protocol=2,  # the reply shapes the scripts and parsing expect
        )
        self._client = Redis.from_pool(pool)  # closing the client closes the pool
        self._scripts = {
            name: self._client.register_script(source) for name, source in scripts.SOURCES.items()
        }
        try:
            token, head = await self._run("open", uuid.uuid4().hex)
        except BaseException:
            await self.close()
            raise
        self._token, self._cursor = as_text(token), as_text(head)
        self._closing = False
        self._on_lost = on_lost
        self._reader.start(self._read_live(on_append))

    async def close(self) -> None:
        self._closing = True  # the reader stops even if a driver swallowed the cancel
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._timeout + BLOCK):
                await self._reader.stop()
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose()

    async def check(self) -> str:
        await self._verify()  # raises UnavailableError when Redis is unreachable
        problems = []
        if self._gap is not None and time.time() - self._gap.at < _GAP_REPORTED:
            problems.append(self._gap.problem)  # reported for a while, never just logged
        if not self._reader.running:
            problems.append("the event reader is not running")
        elif self._reader_error:
            problems.append(f"the event reader is reconnecting: {self._reader_error}")
        return "; ".join(problems)
