"""Every RPC of every hosted service, fuzzed with requests built from its descriptors.

A real server (admin, projects, events; on SQLite, and on PostgreSQL) gets, per method,
random and boundary-valued requests (`tests/fuzz/strategies.py`) and raw bodies that no
message serializes to, sent through a generic channel call with identity serializers. The
methods come from the hosted services' descriptors, so a new RPC or service is fuzzed
without a line changed here. Server streams get one request and are cancelled after
their first message or a short wait.

The only acceptable answers are OK and the codes the contracts document for a caller's
mistake. UNKNOWN, INTERNAL, UNAVAILABLE, a crash or a call that outlives its deadline
fail the test (DEADLINE_EXCEEDED passes only where the request itself asks the server to
wait that long, like Ping's delay); afterwards the server must still be healthy.

The run is derandomized, 100 examples per method, for CI. To fuzz longer (random, not
derandomized; a failure prints the `@reproduce_failure` line that replays it)::

    MESH_TEST_FUZZ_EXAMPLES=2000 .venv/bin/pytest -p no:cacheprovider tests/fuzz -k sqlite
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable, Iterator, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio
from google.protobuf import descriptor_pool
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.message import DecodeError, Message
from google.protobuf.message_factory import GetMessageClass
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, Phase, event, given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from core.testing.databases import fresh_database
from core.testing.services import Running, assemble, serving, settings_for
from mesh.admin.v1 import admin_pb2, admin_pb2_grpc
from mesh.events.v1 import events_pb2, events_pb2_grpc
from mesh.projects.v1 import projects_pb2, projects_pb2_grpc
from tests._services import ADMIN, EVENTS, PROJECTS
from tests.conftest import PG_ADMIN_DSN
from tests.fuzz.raw import raw_bodies
from tests.fuzz.strategies import messages, variants

pytestmark = pytest.mark.asyncio(loop_scope="module")

HOSTED = (ADMIN, PROJECTS, EVENTS)
EXAMPLES = int(os.environ.get("MESH_TEST_FUZZ_EXAMPLES", "0"))
FUZZ = settings(
    max_examples=EXAMPLES or 100,
    derandomize=not EXAMPLES,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
    # Without `explain`, which traces every line (slow before Python 3.12).
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink],
)
DEADLINE = 10.0  # seconds: of every call; nothing a fuzzer sends takes this long
FIRST_MESSAGE_WAIT = 0.5  # how long a server stream may take to send its first message

Code = grpc.StatusCode
# What a caller's own mistake may get back (the contracts' status comments).
ACCEPTABLE = {
    Code.OK,
    Code.INVALID_ARGUMENT,
    Code.NOT_FOUND,
    Code.ALREADY_EXISTS,
    Code.FAILED_PRECONDITION,
    Code.ABORTED,
    Code.OUT_OF_RANGE,
    Code.RESOURCE_EXHAUSTED,
    Code.PERMISSION_DENIED,
    Code.UNAUTHENTICATED,
}


def _ping_delay(request: Any) -> float:
    return float(request.delay.seconds + request.delay.nanos / 1e9)


# How long a request asks the server to hold it, by method. Such a call gets a short
# deadline, and may end DEADLINE_EXCEEDED when what it asked for reaches half of it.
WAITS: dict[str, tuple[float, Callable[[Any], float]]] = {
    "/mesh.admin.v1.AdminService/Ping": (1.0, _ping_delay),
}

# Values of the resources the fixture creates, mixed into the generic ones so that the
# fuzzer also gets past "not found".
PROJECT = "fuzz-demo"
EVENT_ID = "fuzz-event"
EVENT_TYPE = "mesh.fuzz.v1.thing.done"
GROUP = "fuzz-group"
HINTS = {
    "name": st.sampled_from([f"projects/{PROJECT}", "projects/fuzz-other", "projects/"]),
    "names": st.sampled_from([f"projects/{PROJECT}", "projects/fuzz-other"]),
    "project_id": st.one_of(
        st.sampled_from([PROJECT, "Bad_Id", "abc"]),
        st.from_regex(r"[a-z][a-z0-9-]{2,20}[a-z0-9]", fullmatch=True),  # new and valid
    ),
    "request_id": st.uuids().map(str),
    "id": st.sampled_from([EVENT_ID, "fuzz-new-event", ""]),
    "event_id": st.sampled_from([EVENT_ID, "no-such-event"]),
    "event_ids": st.sampled_from([EVENT_ID, "no-such-event"]),
    "type": st.sampled_from([EVENT_TYPE, "mesh.fuzz.v1.*"]),
    "types": st.sampled_from([EVENT_TYPE, "mesh.fuzz.v1.*", "*", "mesh.*.v1"]),
    "source": st.just("fuzz"),
    "group": st.sampled_from([GROUP, "fuzz-other-group"]),
    "display_name": st.just("Fuzzed"),
    "owner": st.just("users/fuzz"),
    "filter": st.sampled_from(
        [
            'display_name = "Fuzzed"',
            'create_time > "9999-12-31T23:59:59Z"',
            'create_time < "0001-01-01T00:00:00Z"',
            "labels.team:*",
            "project_type = 2147483647",
            "create_time > 99999999999999999999",
            "NOT NOT NOT (",
            'display_name = "a\x00b"',
            'labels.team = "\x00"',
            'labels.a\x00b = "x"',
            'owner:"\x00*"',
            'create_time > "10000-01-01T00:00:00Z"',
            'create_time > "0000-01-01T00:00:00Z"',
            'create_time > "2026-13-45T99:99:99Z"',
            "create_time > -99999999999999999999",
            "display_name = 1e999",
        ]
    ),
    "order_by": st.sampled_from(["display_name desc", "create_time,owner", "labels desc"]),
}


def _valid_project() -> projects_pb2.Project:
    return projects_pb2.Project(
        name=f"projects/{PROJECT}",
        display_name="Fuzzed",
        owner="users/fuzz",
        project_type=projects_pb2.Project.PROJECT_TYPE_CUSTOM,
        labels={"team": "core"},
    )


def _valid_event() -> events_pb2.Event:
    return events_pb2.Event(type=EVENT_TYPE, source="fuzz", subject="things/1")


P, E, A = projects_pb2, events_pb2, admin_pb2
# A valid request per method, where an empty one is not: the fuzzer varies a few of its
# fields, so that a value out of range gets past the checks of the others.
SEEDS: dict[str, Message] = {
    "/mesh.admin.v1.AdminService/Ping": A.PingRequest(message="hi"),
    "/mesh.projects.v1.ProjectService/CreateProject": P.CreateProjectRequest(
        project=_valid_project()  # no project_id: the server picks a new one each time
    ),
    "/mesh.projects.v1.ProjectService/UpdateProject": P.UpdateProjectRequest(
        project=_valid_project(), allow_missing=True
    ),
    "/mesh.projects.v1.ProjectService/ListProjects": P.ListProjectsRequest(
        filter='display_name = "Fuzzed"', order_by="display_name desc", page_size=10
    ),
    "/mesh.projects.v1.ProjectService/CountProjects": P.CountProjectsRequest(
        filter='create_time > "2020-01-01T00:00:00Z"'
    ),
    "/mesh.projects.v1.ProjectService/GetProject": P.GetProjectRequest(name=f"projects/{PROJECT}"),
    "/mesh.events.v1.EventService/Publish": E.PublishRequest(event=_valid_event()),
    "/mesh.events.v1.EventService/PublishBatch": E.PublishBatchRequest(
        events=[_valid_event(), _valid_event()]
    ),
    "/mesh.events.v1.EventService/Subscribe": E.SubscribeRequest(
        selector=E.Selector(types=["mesh.fuzz.v1.*"]),
        start=E.StartPosition(beginning=True),
        group=GROUP,
    ),
    "/mesh.events.v1.EventService/Nack": E.NackRequest(group=GROUP, event_id=EVENT_ID),
    "/mesh.events.v1.EventService/ListEvents": E.ListEventsRequest(
        selector=E.Selector(types=[EVENT_TYPE]), page_size=5
    ),
}


@dataclass(frozen=True)
class Method:
    """One RPC as the fuzzer calls it."""

    path: str  # /package.Service/Method
    request: Any  # its request message's descriptor
    client_streaming: bool
    server_streaming: bool

    @classmethod
    def of(cls, method: MethodDescriptor) -> Method:
        return cls(
            f"/{method.containing_service.full_name}/{method.name}",
            method.input_type,
            method.client_streaming,
            method.server_streaming,
        )


def hosted_methods() -> list[Method]:
    """Every method of every service a server of HOSTED registers, from its descriptor."""
    _, server = assemble(HOSTED, settings_for("sqlite+aiosqlite:///:memory:"))
    pool = descriptor_pool.Default()
    return [
        Method.of(method)
        for name in server.service_names
        for method in pool.FindServiceByName(name).methods
    ]


METHODS = hosted_methods()


@pytest.fixture(scope="module")
def server_logs() -> Iterator[list[MutableMapping[str, Any]]]:
    """Every line the fuzzed servers log; an error among them fails the health test."""
    with capture_logs() as logs:
        yield logs


@pytest_asyncio.fixture(scope="module", loop_scope="module", params=["sqlite", "postgresql"])
async def server(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    server_logs: list[MutableMapping[str, Any]],
) -> AsyncIterator[Running]:
    """The hosted services on a fresh database, with a project and an event to aim at."""
    directory: Path = tmp_path_factory.mktemp("fuzz")
    async with (
        fresh_database(request.param, directory, server=PG_ADMIN_DSN) as url,
        serving(*HOSTED, settings=settings_for(url, data_dir=directory)) as running,
    ):
        await _seed(running.address)
        yield running


async def _seed(address: str) -> None:
    async with grpc.aio.insecure_channel(address) as channel:
        await projects_pb2_grpc.ProjectServiceStub(channel).CreateProject(
            projects_pb2.CreateProjectRequest(
                project_id=PROJECT,
                project=projects_pb2.Project(
                    display_name="Fuzzed",
                    owner="users/fuzz",
                    project_type=projects_pb2.Project.PROJECT_TYPE_CUSTOM,
                ),
            ),
            timeout=DEADLINE,
        )
        await events_pb2_grpc.EventServiceStub(channel).Publish(
            events_pb2.PublishRequest(
                event=events_pb2.Event(id=EVENT_ID, type=EVENT_TYPE, source="fuzz")
            ),
            timeout=DEADLINE,
        )


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def channel(server: Running) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(server.address) as opened:
        yield opened


def bodies(method: Method) -> st.SearchStrategy[bytes]:
    """Serialized requests of `method`'s type, and raw bytes that are none."""
    requests = [messages(method.request, hints=HINTS)]
    seed = SEEDS.get(method.path)
    if seed is not None:
        requests.append(variants(seed, hints=HINTS))
    return st.one_of(
        st.one_of(requests).map(lambda m: m.SerializeToString()),
        raw_bodies(method.request, hints=HINTS),
    )


@pytest.mark.timeout(300)  # a failure is shrunk to its smallest request, which takes calls
@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.path.rsplit(".", 1)[-1])
@FUZZ
@given(data=st.data())
async def test_rpc_answers_fuzzed_requests_with_documented_codes(
    channel: grpc.aio.Channel, method: Method, data: st.DataObject
) -> None:
    body = data.draw(bodies(method), label="body")
    deadline, waited = _deadline(method, body)
    code, details = await _call(channel, method, body, deadline)
    event(code.name if code else "cancelled by the fuzzer")  # --hypothesis-show-statistics
    if code is None:  # a stream that sent nothing within FIRST_MESSAGE_WAIT
        return
    if code == Code.DEADLINE_EXCEEDED and waited >= deadline / 2:
        return
    assert code in ACCEPTABLE, f"{method.path} answered {code.name}: {details}"


async def test_every_hosted_service_is_fuzzed(server: Running) -> None:
    fuzzed = {m.path.split("/")[1] for m in METHODS}
    assert fuzzed == set(server.server.service_names)
    assert len(METHODS) >= 20  # admin 3, projects 8, events 9 when this was written


async def test_server_is_healthy_after_fuzzing(
    server: Running, channel: grpc.aio.Channel, server_logs: list[MutableMapping[str, Any]]
) -> None:
    errors = [e for e in server_logs if e["log_level"] in ("error", "critical")]
    assert not errors, errors[:3]  # rpc.unexpected_error, task.failed, ...
    health = health_pb2_grpc.HealthStub(channel)
    checked = await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=DEADLINE)
    assert checked.status == health_pb2.HealthCheckResponse.SERVING
    admin = admin_pb2_grpc.AdminServiceStub(channel)
    summary = (
        await admin.GetServiceSummary(admin_pb2.GetServiceSummaryRequest(), timeout=DEADLINE)
    ).summary
    assert summary.health == admin_pb2.HEALTH_STATE_HEALTHY, summary.overall.reason
    projects = projects_pb2_grpc.ProjectServiceStub(channel)
    got = await projects.GetProject(
        projects_pb2.GetProjectRequest(name=f"projects/{PROJECT}"), timeout=DEADLINE
    )
    assert got.project.display_name == "Fuzzed"


def _deadline(method: Method, body: bytes) -> tuple[float, float]:
    """The call's deadline, and how long its request asks the server to wait."""
    short = WAITS.get(method.path)
    if short is None:
        return DEADLINE, 0.0
    deadline, wait_of = short
    try:
        request = GetMessageClass(method.request).FromString(body)
    except DecodeError:
        return deadline, 0.0
    return deadline, wait_of(request)


async def _call(
    channel: grpc.aio.Channel, method: Method, body: bytes, deadline: float
) -> tuple[grpc.StatusCode | None, str]:
    """The status a call of `method` with `body` ends with; a server stream is cancelled
    after its first message (OK) or after FIRST_MESSAGE_WAIT without one (None)."""
    path = method.path
    try:
        if not method.server_streaming:
            if method.client_streaming:
                await channel.stream_unary(path)(iter([body]), timeout=deadline)
            else:
                await channel.unary_unary(path)(body, timeout=deadline)
            return Code.OK, ""
        if method.client_streaming:
            call: Any = channel.stream_stream(path)(iter([body]), timeout=deadline)
        else:
            call = channel.unary_stream(path)(body, timeout=deadline)
        return await _first_message(call)
    except grpc.aio.AioRpcError as exc:
        return exc.code(), exc.details() or ""


async def _first_message(call: Any) -> tuple[grpc.StatusCode | None, str]:
    try:
        async with asyncio.timeout(FIRST_MESSAGE_WAIT):
            message = await call.read()
    except TimeoutError:
        call.cancel()
        return None, ""
    if message is grpc.aio.EOF:
        return await call.code(), await call.details()
    call.cancel()
    return Code.OK, ""
