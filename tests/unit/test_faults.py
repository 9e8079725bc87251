"""core.faults: MESH_TEST_FAULTS arms hook points that do what it says; production refuses it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest

from core import faults
from core.config import Settings
from core.errors import ConfigError


@pytest.fixture(autouse=True)
def disarmed() -> Iterator[None]:
    yield
    faults.clear()


def test_a_spec_parses_into_faults() -> None:
    parsed = faults.parse("rpc.start=block:200, database.commit=raise,relay.published=kill")
    assert [str(f) for f in parsed] == [
        "rpc.start=block:200",
        "database.commit=raise",
        "relay.published=kill",
    ]


@pytest.mark.parametrize(
    "spec", ["nowhere=raise", "rpc.start=explode", "rpc.start=block", "rpc.start=raise:5"]
)
def test_a_bad_spec_is_refused(spec: str) -> None:
    with pytest.raises(ValueError, match=r"point|action|block and delay"):
        faults.parse(spec)


def test_settings_read_faults_outside_production() -> None:
    settings = Settings.from_env({"MESH_TEST_FAULTS": "database.statement=delay:10"})
    assert settings.test_faults == (faults.Fault("database.statement", "delay", 10),)


def test_production_refuses_to_start_with_faults() -> None:
    env = {"MESH_ENV": "production", "MESH_TEST_FAULTS": "relay.published=kill"}
    with pytest.raises(ConfigError, match="MESH_TEST_FAULTS is for tests"):
        Settings.from_env(env)


async def test_an_unarmed_point_does_nothing() -> None:
    await faults.hit("database.commit")


async def test_raise_raises_at_its_point_only() -> None:
    faults.install(faults.parse("database.commit=raise"))
    await faults.hit("rpc.start")
    with pytest.raises(faults.InjectedFault):
        await faults.hit("database.commit")


async def test_block_stops_the_event_loop_and_delay_does_not() -> None:
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.005)

    ticker = asyncio.create_task(tick())
    await asyncio.sleep(0)
    try:
        faults.install(faults.parse("rpc.start=block:100,database.statement=delay:100"))
        before, started = ticks, time.perf_counter()
        await faults.hit("rpc.start")
        assert (ticks, time.perf_counter() - started >= 0.1) == (before, True)
        before = ticks
        await faults.hit("database.statement")
        assert ticks > before
    finally:
        ticker.cancel()
        await asyncio.gather(ticker, return_exceptions=True)
