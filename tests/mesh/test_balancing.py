"""Round-robin over replicas in processes of their own, skipping one that is not ready."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from clients.admin import AdminClient
from core.errors import ConfigError
from tests.mesh._processes import MeshProcess, replica, wait_health

pytestmark = pytest.mark.timeout(90)
WITHIN = 20.0  # seconds a change may take to reach the client


@dataclass
class Replica:
    process: MeshProcess
    flag: Path

    def set_ready(self, ready: bool) -> None:
        self.flag.write_text("healthy" if ready else "unhealthy")


@asynccontextmanager
async def replicas(directory: Path, *names: str) -> AsyncIterator[list[Replica]]:
    async with AsyncExitStack() as stack:
        started = []
        for name in names:
            flag = directory / f"{name}.health"
            flag.write_text("healthy")
            process = await stack.enter_async_context(
                replica(MESH_SERVICE_NAME=name, MESH_TEST_HEALTH_FILE=str(flag))
            )
            started.append(Replica(process, flag))
        yield started


async def answered_by(admin: AdminClient, calls: int) -> Counter[str]:
    return Counter([(await admin.get_service_summary()).service for _ in range(calls)])


async def until(admin: AdminClient, wanted: set[str]) -> None:
    """Calls until 10 answers in a row came from exactly `wanted` (bounded by WITHIN)."""
    async with asyncio.timeout(WITHIN):
        while set(await answered_by(admin, 10)) != wanted:  # noqa: ASYNC110 (calls are the probe)
            await asyncio.sleep(0.05)


async def test_calls_are_spread_over_the_replicas_of_a_list(tmp_path: Path) -> None:
    async with replicas(tmp_path, "r1", "r2") as (r1, r2):
        listed = f"{r1.process.address},{r2.process.address}"
        async with AdminClient(listed, health_checked=True) as admin:
            await until(admin, {"r1", "r2"})  # both connected and reported SERVING

            counts = await answered_by(admin, 20)

    assert counts == {"r1": 10, "r2": 10}


async def test_a_replica_that_is_not_ready_gets_no_calls_until_it_is(tmp_path: Path) -> None:
    async with replicas(tmp_path, "r1", "r2") as (r1, r2):
        listed = f"{r1.process.address},{r2.process.address}"
        async with AdminClient(listed, health_checked=True) as admin:
            await until(admin, {"r1", "r2"})

            r1.set_ready(False)
            await wait_health(r1.process.address, "readiness", "NOT_SERVING", within=WITHIN)
            await until(admin, {"r2"})
            avoided = await answered_by(admin, 20)

            r1.set_ready(True)
            await until(admin, {"r1", "r2"})
            back = await answered_by(admin, 20)

    assert avoided == {"r2": 20}
    assert back == {"r1": 10, "r2": 10}


async def test_a_client_without_health_checking_still_reaches_a_replica_not_ready(
    tmp_path: Path,
) -> None:
    async with replicas(tmp_path, "r1") as (r1,):
        r1.set_ready(False)
        await wait_health(r1.process.address, "readiness", "NOT_SERVING", within=WITHIN)
        async with AdminClient(r1.process.address) as admin:  # as `mesh status` does
            summary = await admin.get_service_summary()

    assert summary.service == "r1"


def test_a_list_of_hostnames_is_refused_with_a_hint() -> None:
    with pytest.raises(ConfigError, match="dns:///"):
        AdminClient("localhost:1,localhost:2")
