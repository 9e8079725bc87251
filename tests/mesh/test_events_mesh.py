"""The events service as real `mesh serve` processes.

Two instances on one Redis (one namespace, MESH_EVENTS_BACKEND=redis) and one fresh
PostgreSQL database share every stream and group; a group member that dies unacked
hands its event to a member on the other instance; Redis killed and restarted without
persistence makes publishing fail fast with UNAVAILABLE, and the lost data is reported
until it is old news while publishing and subscribing work again; and on one embedded
`mesh serve`, project changes reach an EventsClient subscriber in order.
"""

from __future__ import annotations

import asyncio
import json
import signal
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from clients.events import EventsClient, Subscription, make_event
from clients.projects import Project, ProjectsClient
from core.errors import UnavailableError
from mesh.admin.v1 import admin_pb2
from mesh.events.v1 import events_pb2 as pb
from tests.mesh._processes import (
    STARTUP,
    MeshProcess,
    RedisServer,
    fresh_database,
    mesh_env,
    pg_url,
    private_redis,
    redis_client,
    run_mesh,
    serving,
    subscribing,
    wait_component,
    wait_health,
)

SHARED_REDIS = "redis://127.0.0.1:6379/0"
EVENT_SERVICE = "mesh.events.v1.EventService"
PROJECT_EVENTS = "mesh.projects.v1.project"
GROUP = "workers"
HEALTHY = admin_pb2.HEALTH_STATE_HEALTHY
DEGRADED = admin_pb2.HEALTH_STATE_DEGRADED
UNHEALTHY = admin_pb2.HEALTH_STATE_UNHEALTHY
WITHIN = 15.0  # seconds any one awaited message or condition may take


DEMO = "mesh.demo.v1.*"


def thing(n: int | str, **fields: Any) -> pb.Event:
    return make_event("mesh.demo.v1.thing.done", "mesh.demo.v1", subject=f"things/{n}", **fields)


async def next_message(stream: Subscription, kind: str = "event") -> pb.SubscribeResponse:
    """The next message of `kind` ("event", "caught_up", "checkpoint", "gap"), within WITHIN s."""
    async with asyncio.timeout(WITHIN):
        async for message in stream:
            if message.WhichOneof("kind") == kind:
                return message
    raise AssertionError("the subscription ended")


# -- two instances on one Redis and one database ---------------------------------------------


@pytest.fixture
def namespace() -> str:
    """A namespace of this test's own: its Redis keys never meet another run's."""
    return f"test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def shared_redis(namespace: str) -> AsyncIterator[str]:
    """The machine's Redis; this test's keys are deleted afterwards."""
    yield SHARED_REDIS
    async with redis_client(SHARED_REDIS) as client, asyncio.timeout(10):
        keys = [key async for key in client.scan_iter(match=f"{namespace}:*")]
        if keys:
            await client.delete(*keys)


@dataclass
class Pair:
    a: MeshProcess
    b: MeshProcess
    on_a: EventsClient
    on_b: EventsClient


@pytest.fixture
async def pair(shared_redis: str, namespace: str) -> AsyncIterator[Pair]:
    """`mesh serve` (every service) twice, on one PostgreSQL database and one Redis.

    A migrates, then B starts. The group visibility timeout is far longer than any wait
    here, so a redelivery seen in a test came from a member leaving, not from a timeout.
    """
    async with fresh_database() as database:
        env = mesh_env(
            MESH_DATABASE_URL=pg_url(database),
            MESH_REDIS_URL=shared_redis,
            MESH_CACHE_NAMESPACE=namespace,
            MESH_EVENTS_BACKEND="redis",
            MESH_EVENTS_VISIBILITY_SECONDS="300",
            MESH_HEALTH_INTERVAL_SECONDS="0.2",
        )
        async with (
            serving(env=env | {"MESH_MIGRATE_ON_START": "true"}) as a,
            serving(env=env | {"MESH_MIGRATE_ON_START": "false"}) as b,
            EventsClient(a.address) as on_a,
            EventsClient(b.address) as on_b,
        ):
            yield Pair(a, b, on_a, on_b)


async def test_an_event_published_on_one_instance_reaches_a_subscriber_on_the_other(
    pair: Pair,
) -> None:
    async with pair.on_b.subscribe(markers=True) as on_b:
        await next_message(on_b, "caught_up")
        sent = await pair.on_a.publish(thing(1, id="across"))
        received = await next_message(on_b)

    assert (received.event.id, received.event.position) == ("across", sent.position)
    assert received.event.subject == "things/1"
    [stored] = (await pair.on_b.history()).events
    assert stored.id == "across"


@dataclass
class Members:
    """Group members that ack each delivery, then record it (event id -> member names)."""

    deliveries: dict[str, list[str]] = field(default_factory=dict)
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def work(self, name: str, client: EventsClient, stream: Subscription) -> None:
        async for message in stream:
            if message.HasField("event"):
                await client.ack(GROUP, [message.event.id])
                await self.record(message.event.id, name)

    async def record(self, event_id: str, name: str) -> None:
        async with self.changed:
            self.deliveries.setdefault(event_id, []).append(name)
            self.changed.notify_all()

    async def wait_for(self, count: int) -> None:
        try:
            async with asyncio.timeout(WITHIN), self.changed:
                await self.changed.wait_for(lambda: len(self.deliveries) >= count)
        except TimeoutError:
            raise AssertionError(f"{len(self.deliveries)} of {count} events delivered") from None


async def group_states(pair: Pair, event_ids: list[str]) -> dict[str, set[str]]:
    """The group state of each event, as each of the two instances reports it."""
    states: dict[str, set[str]] = {}
    for client in (pair.on_a, pair.on_b):
        for event_id in event_ids:
            [group] = (await client.status(event_id)).groups
            states.setdefault(event_id, set()).add(pb.DeliveryState.Name(group.state))
    return states


async def test_a_group_with_a_member_on_each_instance_shares_the_events(pair: Pair) -> None:
    members = Members()
    async with (
        pair.on_a.subscribe(group=GROUP, consumer="a", max_unacked=1, markers=True) as on_a,
        pair.on_b.subscribe(group=GROUP, consumer="b", max_unacked=1, markers=True) as on_b,
    ):
        await next_message(on_a, "caught_up")
        await next_message(on_b, "caught_up")
        # Each member may hold one unacked event: two events go one to each.
        first = [await pair.on_a.publish(thing(0)), await pair.on_b.publish(thing(1))]
        held = {"a": (await next_message(on_a)).event.id, "b": (await next_message(on_b)).event.id}
        assert sorted(held.values()) == sorted(r.id for r in first)
        for name, event_id in held.items():
            await members.record(event_id, name)
            await (pair.on_a if name == "a" else pair.on_b).ack(GROUP, [event_id])

        sent = [r.id for r in first]
        async with asyncio.TaskGroup() as tasks:
            workers = [
                tasks.create_task(members.work("a", pair.on_a, on_a)),
                tasks.create_task(members.work("b", pair.on_b, on_b)),
            ]
            for n in range(2, 22):
                sent.append((await (pair.on_a, pair.on_b)[n % 2].publish(thing(n))).id)
            await members.wait_for(len(sent))
            for worker in workers:
                worker.cancel()

    twice = {i: names for i, names in members.deliveries.items() if len(names) > 1}
    assert twice == {}
    assert sorted(members.deliveries) == sorted(sent)
    assert await group_states(pair, sent) == {i: {"DELIVERY_STATE_ACKED"} for i in sent}


@asynccontextmanager
async def cli_member(
    server: MeshProcess, consumer: str
) -> AsyncIterator[asyncio.subprocess.Process]:
    """`mesh events subscribe --group` in a process of its own, never acking."""
    args = ("--group", GROUP, "--consumer", consumer, "--markers")
    async with subscribing(server, *args, stderr=asyncio.subprocess.DEVNULL) as proc:
        yield proc


async def printed(proc: asyncio.subprocess.Process, kind: str) -> dict[str, Any]:
    """The next JSON line of `kind` the CLI prints, within STARTUP seconds."""
    assert proc.stdout is not None
    async with asyncio.timeout(STARTUP):
        while True:
            line = await proc.stdout.readline()
            assert line, "the subscriber's output ended"
            message: dict[str, Any] = json.loads(line)
            if kind in message:
                return message


async def test_an_event_held_by_a_killed_member_goes_to_the_member_on_the_other_instance(
    pair: Pair,
) -> None:
    async with cli_member(pair.a, "doomed") as doomed:
        await printed(doomed, "caught_up")
        sent = await pair.on_b.publish(thing("work"))
        assert (await printed(doomed, "event"))["event"]["id"] == sent.id
        [held] = (await pair.on_b.status(sent.id)).groups
        assert held.state == pb.DELIVERY_STATE_DELIVERED
        assert held.consumer.startswith("doomed")

        async with pair.on_b.subscribe(group=GROUP, consumer="survivor", markers=True) as survivor:
            await next_message(survivor, "caught_up")  # the event is held: nothing for it
            doomed.kill()  # SIGKILL: no goodbye, no ack
            await doomed.wait()
            again = await next_message(survivor)
            await pair.on_b.ack(GROUP, [sent.id])

    assert (again.event.id, again.attempt) == (sent.id, 2)
    [done] = (await pair.on_a.status(sent.id)).groups
    assert done.state == pb.DELIVERY_STATE_ACKED
    assert done.attempts == 2
    assert done.consumer.startswith("survivor")


async def test_a_project_change_on_either_instance_is_one_event_seen_on_both(pair: Pair) -> None:
    """Both instances run an outbox relay on the one database; one of them relays."""
    async with (
        ProjectsClient(pair.a.address) as projects_a,
        ProjectsClient(pair.b.address) as projects_b,
        pair.on_a.subscribe(types=[f"{PROJECT_EVENTS}.*"], markers=True) as on_a,
        pair.on_b.subscribe(types=[f"{PROJECT_EVENTS}.*"], markers=True) as on_b,
    ):
        await next_message(on_a, "caught_up")
        await next_message(on_b, "caught_up")
        created = await projects_a.create_project(new_project(), project_id="shared")
        updated = await projects_b.update_project(
            Project(name=created.name, description="from b"), update_mask=["description"]
        )
        seen = {
            name: [(await next_message(stream)).event for _ in range(2)]
            for name, stream in (("a", on_a), ("b", on_b))
        }

    for events in seen.values():
        assert [e.type for e in events] == [
            f"{PROJECT_EVENTS}.created",
            f"{PROJECT_EVENTS}.updated",
        ]
        assert [unpacked(e).etag for e in events] == [created.etag, updated.etag]
    assert [e.id for e in seen["a"]] == [e.id for e in seen["b"]]
    history = (await pair.on_a.history(types=[f"{PROJECT_EVENTS}.*"])).events
    assert [e.id for e in history] == [e.id for e in seen["a"]]  # stored once each


# -- Redis dies and returns without its data -------------------------------------------------


@dataclass
class OnPrivateRedis:
    redis: RedisServer
    server: MeshProcess
    events: EventsClient

    async def lose_data(self) -> None:
        """Kills Redis, starts it empty on the same port, waits until the gap is reported."""
        await self.redis.kill()
        await wait_component(self.server.address, "event-bus", UNHEALTHY)
        await self.redis.start()  # it had no persistence
        await wait_component(self.server.address, "event-bus", DEGRADED, within=WITHIN)
        # The client balances over ready servers only: wait until it has seen this one
        # ready again (a DEGRADED bus still serves).
        await self.events.wait_ready(WITHIN)


@asynccontextmanager
async def on_private_redis(tmp_path: Path) -> AsyncIterator[OnPrivateRedis]:
    """`mesh serve events` on a redis-server of its own; its client makes one attempt."""
    async with (
        private_redis(tmp_path / "redis") as redis,
        serving(
            "events",
            env=mesh_env(
                MESH_DATA_DIR=str(tmp_path / "data"),
                MESH_REDIS_URL=redis.url,
                MESH_EVENTS_BACKEND="redis",
                MESH_HEALTH_INTERVAL_SECONDS="0.2",
                MESH_HEALTH_TIMEOUT_SECONDS="1",
            ),
        ) as server,
        EventsClient(server.address, attempts=1, deadline=5) as events,
    ):
        await wait_component(server.address, "event-bus", HEALTHY)
        yield OnPrivateRedis(redis, server, events)


async def bus_in_status(address: str) -> dict[str, Any]:
    """The event-bus component's health as `mesh status --json` shows it."""
    code, out, err = await run_mesh("status", "--json", "--address", address, env=mesh_env())
    assert code == 0, err
    [bus] = [c for c in json.loads(out)["components"] if c["name"] == "event-bus"]
    health: dict[str, Any] = bus["health"]
    return health


async def test_redis_lost_and_restarted_fails_publishes_fast_then_reports_the_gap(
    tmp_path: Path,
) -> None:
    async with (
        on_private_redis(tmp_path) as mesh,
        # Only its own events: the bus's recovery is announced as a mesh.system.v1 event.
        mesh.events.subscribe(types=[DEMO], markers=True) as follower,
    ):
        address, events = mesh.server.address, mesh.events
        await next_message(follower, "caught_up")
        before = [await events.publish(thing(n)) for n in range(3)]
        for sent in before:
            assert (await next_message(follower)).event.id == sent.id

        await mesh.redis.kill()
        outcomes = []
        for n in range(3):
            try:
                async with asyncio.timeout(10):  # a hang fails the test here
                    await events.publish(thing(f"down-{n}"))
            except UnavailableError as exc:
                outcomes.append(exc.reason)
            else:
                outcomes.append("OK")
        assert outcomes == ["EVENTS_UNAVAILABLE"] * 3
        await wait_component(address, "event-bus", UNHEALTHY)
        await wait_health(address, EVENT_SERVICE, "NOT_SERVING")

        await mesh.redis.start()  # same port, empty: it had no persistence
        bus = await wait_component(address, "event-bus", DEGRADED, within=WITHIN)
        assert "redis lost the event stream" in bus.health.reason
        shown = await bus_in_status(address)
        assert shown["state"] == "HEALTH_STATE_DEGRADED"
        assert "redis lost the event stream" in shown["reason"]
        [gap] = mesh.server.events("event.gap")
        assert gap["last_position"] == before[-1].position
        await wait_health(address, EVENT_SERVICE, "SERVING")  # degraded still serves

        async with events.subscribe(types=[DEMO], markers=True) as fresh:
            await next_message(fresh, "caught_up")
            after = await events.publish(thing("after"))
            assert (await next_message(fresh)).event.id == after.id
        gap = (await next_message(follower, "gap")).gap  # said in its stream, not only logged
        assert gap.cause == pb.GAP_CAUSE_STORE_LOST
        assert gap.resume_after == before[-1].position
        assert (await next_message(follower)).event.id == after.id  # it reconnected
        assert [e.id for e in (await events.history(types=[DEMO])).events] == [after.id]


async def test_after_lost_data_a_subscription_from_the_beginning_matches_the_history(
    tmp_path: Path,
) -> None:
    async with on_private_redis(tmp_path) as mesh:
        lost = [await mesh.events.publish(thing(n)) for n in range(3)]
        await mesh.lose_data()
        after = await mesh.events.publish(thing("after"))
        stored = [e.id for e in (await mesh.events.history()).events]
        async with mesh.events.subscribe(beginning=True, markers=True) as replay:
            delivered = []
            while (message := await next_message_of_any(replay)).HasField("event"):
                delivered.append(message.event.id)

    assert stored == [after.id]
    assert lost[0].id not in delivered
    assert delivered == stored


async def test_mesh_events_subscribe_prints_the_gap_when_redis_lost_its_data(
    tmp_path: Path,
) -> None:
    async with on_private_redis(tmp_path) as mesh, subscribing(mesh.server, "--type", DEMO) as cli:
        # Published until the subscriber prints one: it is live (it starts "now").
        async with asyncio.timeout(WITHIN):
            while not (line := await next_line(cli, 0.5)):
                await mesh.events.publish(thing("before"))
        last = (await mesh.events.history(types=[DEMO])).events[-1].position
        while line.get("event", {}).get("position") != last:
            line = await next_line(cli, WITHIN)
        await mesh.lose_data()
        printed = await next_line(cli, WITHIN)
        code, err = await interrupt_cli(cli)

    assert printed["gap"]["cause"] == "GAP_CAUSE_STORE_LOST"
    assert printed["gap"]["after"] == printed["gap"]["resume_after"] == last
    assert code == 0
    assert "mesh: events lost: " in err
    assert "lost its data" in err


async def next_line(cli: asyncio.subprocess.Process, within: float) -> dict[str, Any]:
    """The next JSON line `mesh events subscribe` prints; {} if none within `within` s."""
    assert cli.stdout is not None
    try:
        async with asyncio.timeout(within):
            line = await cli.stdout.readline()
    except TimeoutError:
        return {}
    assert line, "the subscriber's output ended"
    found: dict[str, Any] = json.loads(line)
    return found


async def interrupt_cli(cli: asyncio.subprocess.Process) -> tuple[int, str]:
    """Ctrl-C; the exit code and what it wrote to stderr."""
    cli.send_signal(signal.SIGINT)
    async with asyncio.timeout(WITHIN):
        _, err = await cli.communicate()
    assert cli.returncode is not None
    return cli.returncode, err.decode()


async def next_message_of_any(stream: Subscription) -> pb.SubscribeResponse:
    async with asyncio.timeout(WITHIN):
        return await anext(stream)


# -- one process, every service, embedded SQLite ---------------------------------------------


def new_project(display_name: str = "Demo") -> Project:
    return Project(
        display_name=display_name,
        project_type=Project.PROJECT_TYPE_MUSIC_CLIP,
        owner="users/alice",
    )


def unpacked(event: pb.Event) -> Project:
    project = Project()
    assert event.data.Unpack(project), event.data.type_url
    return project


async def test_project_changes_reach_an_events_subscriber_in_order(tmp_path: Path) -> None:
    env = mesh_env(MESH_DATA_DIR=str(tmp_path / "data"))
    async with (
        serving(env=env) as server,
        ProjectsClient(server.address) as projects,
        EventsClient(server.address) as events,
        events.subscribe(types=[f"{PROJECT_EVENTS}.*"], markers=True) as stream,
    ):
        await next_message(stream, "caught_up")
        created = await projects.create_project(new_project(), project_id="demo")
        updated = await projects.update_project(
            Project(name=created.name, display_name="Renamed"), update_mask=["display_name"]
        )
        deleted = await projects.delete_project(created.name)
        received = [(await next_message(stream)).event for _ in range(3)]
        history = (await events.history(types=[f"{PROJECT_EVENTS}.*"])).events

    assert [e.type for e in received] == [
        f"{PROJECT_EVENTS}.created",
        f"{PROJECT_EVENTS}.updated",
        f"{PROJECT_EVENTS}.deleted",
    ]
    assert [unpacked(e).etag for e in received] == [p.etag for p in (created, updated, deleted)]
    assert unpacked(received[1]).display_name == "Renamed"
    assert unpacked(received[2]).state == Project.STATE_DELETED
    assert {e.subject for e in received} == {created.name}
    assert {e.source for e in received} == {"mesh.projects.v1.ProjectService"}
    assert [e.id for e in history] == [e.id for e in received]
