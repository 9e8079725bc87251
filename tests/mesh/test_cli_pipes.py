"""`mesh ... | head`: a command whose reader goes away ends quietly with status 141.

Each command runs with stdout on a pipe whose read end is already closed, so its first
write fails (EPIPE) as when `head` has read enough and exited.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from clients.events import EventsClient, make_event
from tests.mesh._processes import MESH, STARTUP, MeshProcess, mesh_env, serving

SIGPIPE_STATUS = 128 + signal.SIGPIPE  # what a shell reports for `cat big | head`


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[MeshProcess]:
    async with serving("events", env=mesh_env(MESH_DATA_DIR=str(tmp_path / "data"))) as process:
        yield process


async def into_closed_pipe(*args: str) -> tuple[int, str]:
    """Runs `mesh ARGS` writing into a pipe nobody reads; returns its exit code and stderr."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        proc = await asyncio.create_subprocess_exec(
            MESH, *args, env=mesh_env(), stdout=write_end, stderr=asyncio.subprocess.PIPE
        )
    finally:
        os.close(write_end)
    try:
        async with asyncio.timeout(STARTUP):
            _, err = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, err.decode()


async def test_a_listing_into_a_closed_pipe_ends_quietly(server: MeshProcess) -> None:
    async with EventsClient(server.address) as events:
        await events.publish(make_event("mesh.demo.v1.x", "demo"))
        async with events.subscribe(group="g", beginning=True) as stream:
            async with asyncio.timeout(STARTUP):
                await anext(stream)  # the group exists now

    history = await into_closed_pipe("events", "history", "--address", server.address)
    letters = await into_closed_pipe("events", "dead-letters", "g", "--address", server.address)

    assert history == (SIGPIPE_STATUS, "")
    assert letters == (SIGPIPE_STATUS, "")


async def test_a_follower_into_a_closed_pipe_ends_quietly(server: MeshProcess) -> None:
    async with EventsClient(server.address) as events:
        await events.publish(make_event("mesh.demo.v1.x", "demo"))

    code, err = await into_closed_pipe(
        "events", "subscribe", "--from-beginning", "--address", server.address
    )

    assert (code, err) == (SIGPIPE_STATUS, "")
