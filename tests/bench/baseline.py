"""Hand-written grpc.aio baselines for `make bench`: what the projects service is measured against.

Each mode is the least a ProjectService handler can do for the same answer, with no
framework: the generated stubs, plain grpc.aio and, for the database modes, asyncpg.

    python tests/bench/baseline.py canned RESPONSE_HEX    # GetProject -> a prebuilt response
    python tests/bench/baseline.py select DSN             # GetProject -> one SELECT by key
    python tests/bench/baseline.py insert DSN TABLE       # CreateProject -> one INSERT

The server binds 127.0.0.1:0, prints `PORT <n>` on stdout and runs until SIGTERM.
It imports nothing of ours but the generated code.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import secrets
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import asyncpg
import grpc

from mesh.projects.v1 import projects_pb2 as pb
from mesh.projects.v1 import projects_pb2_grpc

Project = pb.Project
POOL_SIZE = 20  # as many connections as the service's pool may open (10 + 10 overflow)
TYPE_PREFIX = "PROJECT_TYPE_"


class Connections:
    """A fixed set of connections handed out in turn.

    Deliberately not asyncpg's Pool: its release runs a reset query (RESET ALL, UNLISTEN,
    ...), one more round trip per call. The baseline is exactly one statement per call.
    """

    def __init__(self, dsn: str, size: int) -> None:
        self._dsn, self._size = dsn, size
        self._idle: asyncio.Queue[asyncpg.Connection] = asyncio.Queue()

    async def open(self) -> None:
        for _ in range(self._size):
            self._idle.put_nowait(await asyncpg.connect(self._dsn))

    async def close(self) -> None:
        while not self._idle.empty():
            await self._idle.get_nowait().close()

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[asyncpg.Connection]:
        conn = await self._idle.get()
        try:
            yield conn
        finally:
            self._idle.put_nowait(conn)


def etag(resource_id: str, revision: int) -> str:
    return 'W/"' + hashlib.sha256(f"{resource_id}:{revision}".encode()).hexdigest()[:16] + '"'


def to_proto(row: Any) -> Project:
    """The same message the service returns for this row."""
    project = Project(
        name="projects/" + row["id"],
        display_name=row["display_name"],
        description=row["description"],
        project_type=Project.ProjectType.Value(TYPE_PREFIX + row["project_type"]),
        owner=row["owner"],
        labels=json.loads(row["labels"]) if isinstance(row["labels"], str) else row["labels"],
        state=Project.STATE_DELETED if row["delete_time"] else Project.STATE_ACTIVE,
        etag=etag(row["id"], row["revision"]),
    )
    for name in ("create_time", "update_time", "delete_time", "purge_time"):
        if row[name] is not None:
            getattr(project, name).FromDatetime(row[name])
    return project


class Canned(projects_pb2_grpc.ProjectServiceServicer):
    def __init__(self, response: pb.GetProjectResponse) -> None:
        self._response = response

    async def GetProject(self, request: pb.GetProjectRequest, context: Any) -> Any:
        return self._response


class Select(projects_pb2_grpc.ProjectServiceServicer):
    SQL = "SELECT * FROM projects WHERE id = $1"

    def __init__(self, connections: Connections) -> None:
        self._connections = connections

    async def GetProject(self, request: pb.GetProjectRequest, context: Any) -> Any:
        async with self._connections.connection() as conn:
            row = await conn.fetchrow(self.SQL, request.name.removeprefix("projects/"))
        if row is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"{request.name} does not exist")
        return pb.GetProjectResponse(project=to_proto(row))


class Insert(projects_pb2_grpc.ProjectServiceServicer):
    def __init__(self, connections: Connections, table: str) -> None:
        self._connections = connections
        self._sql = (
            f'INSERT INTO "{table}" (id, revision, create_time, update_time, display_name, '
            "description, project_type, owner, labels) VALUES ($1, 1, $2, $2, $3, $4, $5, $6, $7)"
        )

    async def CreateProject(self, request: pb.CreateProjectRequest, context: Any) -> Any:
        p = request.project
        resource_id = request.project_id or f"p{secrets.token_hex(8)}"
        kind = Project.ProjectType.Name(p.project_type).removeprefix(TYPE_PREFIX)
        labels = dict(p.labels)
        now = datetime.now(UTC)
        async with self._connections.connection() as conn:
            await conn.execute(
                self._sql,
                resource_id,
                now,
                p.display_name,
                p.description,
                kind,
                p.owner,
                json.dumps(labels),
            )
        row = {
            "id": resource_id,
            "revision": 1,
            "display_name": p.display_name,
            "description": p.description,
            "project_type": kind,
            "owner": p.owner,
            "labels": labels,
            "create_time": now,
            "update_time": now,
            "delete_time": None,
            "purge_time": None,
        }
        return pb.CreateProjectResponse(project=to_proto(row))


async def serve(args: argparse.Namespace) -> None:
    connections = None
    if args.mode == "canned":
        raw = bytes.fromhex(args.target)
        servicer: Any = Canned(pb.GetProjectResponse.FromString(raw))
    else:
        connections = Connections(args.target, POOL_SIZE)
        await connections.open()
        servicer = Select(connections) if args.mode == "select" else Insert(connections, args.table)
    server = grpc.aio.server()
    projects_pb2_grpc.add_ProjectServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    print(f"PORT {port}", flush=True)
    await stop.wait()
    await server.stop(1.0)
    if connections is not None:
        await connections.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["canned", "select", "insert"])
    parser.add_argument("target", help="serialized response in hex (canned) or asyncpg DSN")
    parser.add_argument("table", nargs="?", default="projects", help="insert: the table")
    asyncio.run(serve(parser.parse_args()))


if __name__ == "__main__":
    main()
