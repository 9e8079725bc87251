"""`mesh events ...` against a real `mesh serve events` process on its embedded SQLite file.

Every command prints JSON (`status` a table, and JSON with --json); errors go to stderr
as JSON with a non-zero exit; `subscribe` prints one JSON object per line until Ctrl-C,
then exits 0.
"""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from clients.events import EventsClient, make_event
from mesh.events.v1 import events_pb2 as pb
from tests.mesh._processes import (
    STARTUP,
    MeshProcess,
    mesh_env,
    run_mesh,
    serving,
    subscribing,
)


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[MeshProcess]:
    async with serving("events", env=mesh_env(MESH_DATA_DIR=str(tmp_path / "data"))) as process:
        yield process


async def mesh_json(server: MeshProcess, *args: str) -> Any:
    """Runs `mesh events ARGS --address ...`; returns its JSON output (it must succeed)."""
    code, out, err = await run_mesh("events", *args, "--address", server.address, env=mesh_env())
    assert code == 0, err
    return json.loads(out)


async def lines(proc: asyncio.subprocess.Process, count: int) -> list[dict[str, Any]]:
    """The next `count` JSON lines the process prints, within STARTUP seconds."""
    assert proc.stdout is not None
    found: list[dict[str, Any]] = []
    async with asyncio.timeout(STARTUP):
        while len(found) < count:
            line = await proc.stdout.readline()
            assert line, "the subscriber's output ended"
            found.append(json.loads(line))
    return found


async def interrupt(proc: asyncio.subprocess.Process) -> tuple[int, str]:
    """Ctrl-C; returns the exit code and whatever the process wrote to stderr."""
    proc.send_signal(signal.SIGINT)
    async with asyncio.timeout(STARTUP):
        _, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, err.decode()


async def acked_in(events: EventsClient, group: str, event_id: str) -> None:
    async with asyncio.timeout(STARTUP):
        while True:
            states = {g.group: g.state for g in (await events.status(event_id)).groups}
            if states.get(group) == pb.DELIVERY_STATE_ACKED:
                return
            await asyncio.sleep(0.05)


async def test_a_published_event_is_in_the_history_and_has_a_status(
    server: MeshProcess,
) -> None:
    sent = await mesh_json(
        server,
        *("publish", "--type", "mesh.demo.v1.thing.done", "--source", "mesh.demo.v1"),
        *("--subject", "things/1", "--data", '{"name": "one", "tags": ["a"]}'),
    )
    async with EventsClient(server.address) as events:
        await events.publish(make_event("mesh.other.v1.x", "other"))

    history = await mesh_json(server, "history", "--type", "mesh.demo.v1.*")
    status = await mesh_json(server, "status", sent["id"], "--json")

    [event] = history["events"]
    assert (event["id"], event["position"]) == (sent["id"], sent["position"])
    assert event["subject"] == "things/1"
    assert event["data"] == {
        "@type": "type.googleapis.com/google.protobuf.Struct",
        "value": {"name": "one", "tags": ["a"]},
    }
    assert status["event"] == event
    assert status["groups"] == []  # no group wants it


async def test_nack_retries_or_parks_an_event_and_prints_its_state(server: MeshProcess) -> None:
    async with EventsClient(server.address) as events:
        first = await events.publish(make_event("mesh.demo.v1.x", "demo"))
        second = await events.publish(make_event("mesh.demo.v1.x", "demo"))
        async with events.subscribe(group="n", beginning=True) as stream:
            async with asyncio.timeout(STARTUP):
                delivered = [(await anext(stream)).event.id for _ in range(2)]

            retried = await mesh_json(server, "nack", "n", first.id, "--delay", "60")
            parked = await mesh_json(server, "nack", "n", second.id, "--park", "--error", "bad")
            status = await events.status(second.id)

    assert delivered == [first.id, second.id]
    assert retried == {"state": "DELIVERY_STATE_RETRYING"}
    assert parked == {"state": "DELIVERY_STATE_DEAD_LETTERED"}
    assert status.groups[0].errors[-1].message == "bad"


async def test_an_empty_listing_prints_its_list_field_empty(server: MeshProcess) -> None:
    assert await mesh_json(server, "history") == {"events": []}


async def test_errors_are_json_on_stderr_with_a_non_zero_exit(server: MeshProcess) -> None:
    missing = await run_mesh(
        "events", "status", "nope", "--address", server.address, env=mesh_env()
    )
    bad_data = await run_mesh(
        *("events", "publish", "--type", "t", "--source", "s", "--data", "[1]"),
        *("--address", server.address),
        env=mesh_env(),
    )

    assert missing[0] == 1
    assert missing[1] == ""
    assert json.loads(missing[2])["reason"] == "EVENT_NOT_FOUND"
    assert bad_data[0] == 1
    assert json.loads(bad_data[2])["violations"][0]["field"] == "--data"


async def test_subscribe_prints_stored_then_live_events_and_exits_0_on_ctrl_c(
    server: MeshProcess,
) -> None:
    async with EventsClient(server.address) as events:
        stored = [await events.publish(make_event("mesh.demo.v1.x", "demo")) for _ in range(2)]
        async with subscribing(server, "--from-beginning") as proc:
            backlog = await lines(proc, 2)
            live = await events.publish(make_event("mesh.demo.v1.x", "demo"))
            [printed] = await lines(proc, 1)
            code, err = await interrupt(proc)

    assert [line["event"]["id"] for line in backlog] == [r.id for r in stored]
    assert printed["event"]["id"] == live.id
    assert (code, err) == (0, "")


async def test_a_group_follower_acks_and_dead_letters_can_be_replayed(
    server: MeshProcess,
) -> None:
    async with EventsClient(server.address) as events:
        acked = await events.publish(make_event("mesh.demo.v1.x", "demo"))
        async with subscribing(server, "--group", "g", "--from-beginning", "--ack") as proc:
            [line] = await lines(proc, 1)
            await acked_in(events, "g", acked.id)  # a Ctrl-C must not cut the ack short
            code, _ = await interrupt(proc)
        parked = await events.publish(make_event("mesh.demo.v1.x", "demo"))
        async with events.subscribe(group="g") as stream, asyncio.timeout(STARTUP):
            assert (await anext(stream)).event.id == parked.id
            await events.nack("g", parked.id, park=True, error="cannot handle it")

    assert (line["event"]["id"], line["attempt"], code) == (acked.id, 1, 0)
    letters = await mesh_json(server, "dead-letters", "g")
    [letter] = letters["dead_letters"]
    assert letter["event"]["id"] == parked.id
    assert letter["status"]["errors"][0]["message"] == "cannot handle it"
    replayed = await mesh_json(server, "dead-letters", "g", "--replay", parked.id)
    assert replayed == {"replayed_count": 1}
    assert await mesh_json(server, "dead-letters", "g") == {"dead_letters": []}
    async with EventsClient(server.address) as events:
        assert (await events.dead_letters("g")).dead_letters == []


async def test_status_shows_each_failed_attempt_as_a_table(tmp_path: Path) -> None:
    env = mesh_env(MESH_DATA_DIR=str(tmp_path / "data"), MESH_EVENTS_MAX_ATTEMPTS="2")
    async with serving("events", env=env) as server, EventsClient(server.address) as events:
        sent = await events.publish(make_event("mesh.demo.v1.x", "demo", subject="things/1"))
        async with events.subscribe(group="t", consumer="worker", beginning=True) as stream:
            for attempt in (1, 2):  # the second is the last: the event is dead-lettered
                async with asyncio.timeout(STARTUP):
                    assert (await anext(stream)).attempt == attempt
                try:
                    raise LookupError(f"no thing for try {attempt}")
                except LookupError as exc:
                    await events.nack("t", sent.id, error=exc)
        code, out, err = await run_mesh(
            "events", "status", sent.id, "--address", server.address, env=env
        )

    assert code == 0, err
    header, first, second = [
        line.split()
        for line in out.split("\nstack of")[0].splitlines()  # the stacks follow in development
        if "LookupError" in line or line.startswith("GROUP  ")
    ][-3:]
    assert header[:3] == ["GROUP", "ATTEMPT", "TIME"]
    assert first[:2] == ["t", "1"]
    assert first[3].startswith("worker.")
    assert first[4:6] == ["NACKED", "LookupError"]
    assert " ".join(first[6:]) == "LookupError: no thing for try 1"
    assert second[:2] == ["t", "2"]
    assert second[4] == "NACKED"
    assert "DEAD_LETTERED" in out
    assert "stack of t attempt 1:\nTraceback" in out  # the development profile returns them


async def stderr_line(proc: asyncio.subprocess.Process) -> str:
    """The next line the process writes to stderr, within STARTUP seconds."""
    assert proc.stderr is not None
    async with asyncio.timeout(STARTUP):
        return (await proc.stderr.readline()).decode()


async def test_a_new_group_from_the_beginning_gets_the_stored_events_once(
    server: MeshProcess,
) -> None:
    """The README's walkthrough: events published first, then a group member that acks."""
    async with EventsClient(server.address) as events:
        stored = [await events.publish(make_event("mesh.demo.v1.x", "demo")) for _ in range(2)]
        group = ("--group", "indexer", "--from-beginning", "--ack")
        async with subscribing(server, *group) as proc:
            printed = await lines(proc, 2)
            await acked_in(events, "indexer", stored[1].id)
            code, err = await interrupt(proc)
        async with subscribing(server, *group) as again:
            notice = await stderr_line(again)

    assert [line["event"]["id"] for line in printed] == [r.id for r in stored]
    assert (code, err) == (0, "")  # the group was new: its start applied, nothing to say
    assert notice == (
        "mesh: group 'indexer' exists: --from-beginning is ignored; "
        "its members continue where the group is\n"
    )


async def test_a_new_group_without_a_start_says_it_starts_now(server: MeshProcess) -> None:
    async with subscribing(server, "--group", "late") as proc:
        notice = await stderr_line(proc)

    assert notice.startswith("mesh: group 'late' is new: it starts with the events published")
    assert "--from-beginning" in notice


async def test_subscribe_help_says_how_group_positions_work() -> None:
    code, out, _ = await run_mesh("events", "subscribe", "--help", env=mesh_env())

    assert code == 0
    assert "creates the group" in out
    assert "a start given then is ignored" in " ".join(out.split())
