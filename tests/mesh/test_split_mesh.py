"""Projects and events as two `mesh serve` processes: the outbox relays through the events client.

`mesh serve events` listens on a fixed free port so it can come back on the same one;
`mesh serve projects` points at it with MESH_EVENTS_ADDRESS. Each has its own SQLite file,
so events held in the projects outbox are the only way a change reaches the events service.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from clients.events import EventsClient, Subscription
from clients.projects import Project, ProjectsClient
from mesh.admin.v1 import admin_pb2
from mesh.events.v1 import events_pb2 as pb
from tests.mesh._processes import (
    free_port,
    mesh_env,
    serving,
    split_mesh,
    wait_component,
    wait_health,
)

CREATED = "mesh.projects.v1.project.created"
HEALTHY = admin_pb2.HEALTH_STATE_HEALTHY
DEGRADED = admin_pb2.HEALTH_STATE_DEGRADED
WITHIN = 20.0  # seconds any awaited message or condition may take


def new_project(n: int) -> Project:
    return Project(
        display_name=f"Demo {n}", project_type=Project.PROJECT_TYPE_MUSIC_CLIP, owner="users/a"
    )


async def created_events(stream: Subscription, count: int) -> list[pb.Event]:
    """The first `count` events of the stream, within WITHIN seconds."""
    found: list[pb.Event] = []
    async with asyncio.timeout(WITHIN):
        async for message in stream:
            if message.WhichOneof("kind") == "event":
                found.append(message.event)
                if len(found) == count:
                    return found
    raise AssertionError(f"the subscription ended after {len(found)} of {count} events")


async def test_project_events_reach_the_events_service_and_wait_out_its_absence(
    tmp_path: Path,
) -> None:
    async with split_mesh(tmp_path) as mesh, ProjectsClient(mesh.projects.address) as projects:
        await wait_component(mesh.projects.address, "events-client", HEALTHY, within=WITHIN)
        names = [(await projects.create_project(new_project(0), project_id="proj-0")).name]
        async with (
            EventsClient(mesh.events.address) as events,
            events.subscribe(types=[CREATED], beginning=True) as stream,
        ):
            [first] = await created_events(stream, 1)
        assert first.subject == names[0]

        mesh.events.proc.kill()  # a crash; the outbox must hold what comes next
        await mesh.events.proc.wait()
        summary = await wait_component(
            mesh.projects.address, "events-client", DEGRADED, within=WITHIN
        )
        assert "unreachable" in summary.health.reason
        await wait_health(mesh.projects.address, "readiness", "SERVING")
        for n in range(1, 4):  # writes go on while the events service is away
            names.append(
                (await projects.create_project(new_project(n), project_id=f"proj-{n}")).name
            )

        async with serving("events", env=mesh.events_env) as events_again:
            assert events_again.address == mesh.events.address
            await wait_component(mesh.projects.address, "events-client", HEALTHY, within=WITHIN)
            async with (
                EventsClient(events_again.address) as events,
                events.subscribe(types=[CREATED], beginning=True) as stream,
            ):
                arrived = await created_events(stream, len(names))
                history = (await events.history(types=[CREATED])).events

    assert [e.subject for e in arrived] == names  # in order, none lost
    assert [e.id for e in history] == [e.id for e in arrived]  # each stored once
    assert len({e.id for e in arrived}) == len(names)


async def test_projects_starts_and_takes_writes_with_no_events_service(tmp_path: Path) -> None:
    env = mesh_env(
        MESH_DATA_DIR=str(tmp_path / "projects"),
        MESH_EVENTS_ADDRESS=f"127.0.0.1:{free_port()}",  # nothing listens there
        MESH_HEALTH_INTERVAL_SECONDS="0.2",
    )
    async with serving("projects", env=env) as alone, ProjectsClient(alone.address) as projects:
        await wait_health(alone.address, "readiness", "SERVING", within=WITHIN)
        summary = await wait_component(alone.address, "events-client", DEGRADED, within=WITHIN)
        created = await projects.create_project(new_project(9), project_id="alone")

    assert created.name == "projects/alone"
    assert "events wait in the outbox" in summary.health.reason
