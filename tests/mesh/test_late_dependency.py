"""A dependency that is down at start is a slow start, not a crash loop: the port opens at
once (liveness SERVING, readiness NOT_SERVING), calls fail fast naming what is not ready,
and the process becomes SERVING soon after the dependency comes up; past the start
deadline it exits non-zero with the reason."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import grpc
import pytest

from clients.health import HealthClient
from core.calls.status import from_rpc_error
from core.errors import UnavailableError
from mesh.events.v1 import events_pb2, events_pb2_grpc
from tests.mesh._processes import RedisServer, mesh_env, serving, wait_health


def _late_redis_env(redis: RedisServer, tmp_path: Path, **extra: str) -> dict[str, str]:
    return mesh_env(
        MESH_DATA_DIR=str(tmp_path / "data"),
        MESH_REDIS_URL=redis.url,
        MESH_EVENTS_BACKEND="redis",
        MESH_CACHE_NAMESPACE=f"late-{redis.port}",
        **extra,
    )


async def test_the_port_opens_before_a_late_redis_and_serves_soon_after_it(
    tmp_path: Path,
) -> None:
    redis = RedisServer(tmp_path / "redis")  # not started yet
    try:
        async with serving("events", env=_late_redis_env(redis, tmp_path), ready=False) as server:
            async with HealthClient(server.address) as health:
                assert await health.check("liveness") == "SERVING"
                assert await health.check("readiness") == "NOT_SERVING"
            async with grpc.aio.insecure_channel(server.address) as channel:
                publish = events_pb2_grpc.EventServiceStub(channel).Publish
                event = events_pb2.Event(id="e1", type="demo.v1.thing", source="test")
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await publish(events_pb2.PublishRequest(event=event), timeout=5)
            error = from_rpc_error(refused.value)
            assert isinstance(error, UnavailableError)
            assert error.reason == "SERVER_NOT_READY"
            assert error.message.startswith(
                "mesh.events.v1.EventService is not ready: waiting for event-bus"
            )
            print(error.message)
            await redis.start()
            back = time.monotonic()
            await wait_health(server.address, "readiness", "SERVING", within=15)
            print(f"SERVING {time.monotonic() - back:.1f} s after Redis answered")
            assert server.proc.returncode is None
    finally:
        await redis.kill()


async def test_past_the_start_deadline_the_process_exits_naming_the_dependency(
    tmp_path: Path,
) -> None:
    redis = RedisServer(tmp_path / "redis")  # never started
    env = _late_redis_env(redis, tmp_path, MESH_START_DEADLINE_SECONDS="2")
    async with serving("events", env=env, ready=False) as server:
        async with asyncio.timeout(30):
            code = await server.proc.wait()
        await asyncio.sleep(0)  # let the log reader take the last lines
    assert code == 1
    [failed] = server.events("service.start_failed")
    assert str(failed["cause"]).startswith("event-bus: ")
