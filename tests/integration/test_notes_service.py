"""Building a service on core/: notes, a service of its own installed beside meshkit.

The example is tests/notes_service/, written as a user would write it:

    pyproject.toml                  names the declaration under `meshkit.services`
    proto/notes/v1/notes.proto      the contract: NoteService, CreateNote and GetNote
    notes/__init__.py               the declaration: name, register, migrations, client
    notes/migrations/0001_notes.py  its table, as an Alembic revision
    notes/resource.py               the table, the rules and the mapping for the CRUD engine
    notes/server.py                 the servicer, and register(): what `mesh serve notes` runs
    notes/client.py                 the typed client

The fixture below takes the user's steps: generate the stubs, install the package. The
first test shows meshkit finding, serving, migrating, health-checking and reflecting it;
the last ones are what a test of the service looks like with the test kit.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import asyncpg
import grpc
import pytest
import sqlalchemy as sa
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from clients.health import HealthClient
from core.data.database import Database
from core.errors import InvalidArgumentError, NotFoundError
from core.runtime.declaration import discover
from core.testing.services import StartService
from tests.mesh._processes import fresh_database, mesh_env, pg_url, run_mesh, serving, wait_health

if TYPE_CHECKING:
    from notes.client import NotesClient

EXAMPLE = Path(__file__).parents[1] / "notes_service"
MESHKIT_PROTO = Path(__file__).parents[2] / "proto"


@pytest.fixture(scope="module")
def notes_installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The notes package with its stubs generated, installed into a folder on sys.path."""
    package = tmp_path_factory.mktemp("src") / "notes_service"
    shutil.copytree(EXAMPLE, package)
    # 1. Generate the stubs of the contract into the package (notes/v1/notes_pb2*.py).
    # Its contract imports meshkit's mesh/access/v1/access.proto (each RPC's access rule).
    protoc = ["-I", "proto", "-I", str(MESHKIT_PROTO), "--python_out=.", "--grpc_python_out=."]
    protoc.append("notes/v1/notes.proto")
    _run([sys.executable, "-m", "grpc_tools.protoc", *protoc], cwd=package)
    # 2. Install it beside meshkit (offline: the build uses this environment's setuptools).
    site = tmp_path_factory.mktemp("site")
    pip = ["install", "--no-build-isolation", "--no-deps", "--no-index", "--target", str(site)]
    _run(
        [sys.executable, "-m", "pip", *pip, "--quiet", "--disable-pip-version-check", "."], package
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(site))
        yield site


async def test_an_installed_service_is_found_served_migrated_and_reflected(
    notes_installed: Path, start_service: StartService
) -> None:
    # 3. meshkit finds it through its entry point, with nothing changed in meshkit.
    assert discover()["notes"].client == "notes.client:NotesClient"
    # 4. Serve it as `mesh serve notes` does: its components, on its own port.
    notes = await start_service("notes")
    # 5. Its table was created at start (the embedded SQLite database upgrades itself).
    async with notes.container.get(Database).connect() as conn:
        revisions = (await conn.execute(sa.text("select version_num from alembic_version"))).all()
    assert ("notes_0001",) in revisions
    # 6. Health: a probe of its service name is SERVING.
    async with HealthClient(notes.address) as health:
        assert await health.check("notes.v1.NoteService") == "SERVING"
    # 7. Reflection lists it, so grpcurl and `buf curl` need no proto files.
    assert "notes.v1.NoteService" in await _reflected_services(notes.address)
    # 8. Its typed client creates and reads a note.
    client: NotesClient = await notes.client()
    note = await client.create_note(title="Groceries", body="milk, bread")
    assert await client.get_note(note.name) == note


async def test_mesh_upgrades_and_serves_the_installed_service(notes_installed: Path) -> None:
    # 9. The `mesh` command knows it too: `mesh serve --help` lists it, `mesh db upgrade`
    #    creates its table in a shared database, and `mesh serve notes` serves it there.
    env = mesh_env(PYTHONPATH=str(notes_installed))
    code, out, err = await run_mesh("serve", "--help", env=env)
    assert code == 0, err
    assert "notes     short texts, on the CRUD engine" in out
    async with fresh_database() as name:
        env["MESH_DATABASE_URL"] = pg_url(name)
        code, out, err = await run_mesh("db", "upgrade", env=env)
        assert code == 0, err
        conn = await asyncpg.connect(pg_url(name).replace("+asyncpg", ""))
        try:
            revisions = {r[0] for r in await conn.fetch("select version_num from alembic_version")}
        finally:
            await conn.close()
        assert "notes_0001" in revisions
        async with serving("notes", env=env) as process:
            await wait_health(process.address, "notes.v1.NoteService", "SERVING")


# -- a service's tests with the test kit -----------------------------------------------------


@pytest.fixture
async def notes(notes_installed: Path, start_service: StartService) -> NotesClient:
    service = await start_service("notes")
    client: NotesClient = await service.client()
    return client


async def test_a_created_note_can_be_read_back(notes: NotesClient) -> None:
    note = await notes.create_note(title="Groceries", body="milk")
    assert await notes.get_note(note.name) == note


async def test_a_note_needs_a_title(notes: NotesClient) -> None:
    with pytest.raises(InvalidArgumentError):
        await notes.create_note(title="")


async def test_a_missing_note_is_not_found(notes: NotesClient) -> None:
    with pytest.raises(NotFoundError):
        await notes.get_note("notes/missing")


async def test_creating_a_note_publishes_an_event(
    notes_installed: Path, start_service: StartService
) -> None:
    service = await start_service("notes")
    note = await (await service.client()).create_note(title="Groceries")
    event = await service.wait_for_event("notes.v1.note.created")
    assert (event.source, event.subject) == ("notes.v1.NoteService", note.name)


def _run(command: list[str], cwd: Path) -> None:
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


async def _reflected_services(address: str) -> set[str]:
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    async with grpc.aio.insecure_channel(address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        responses = [r async for r in stub.ServerReflectionInfo(iter([request]))]
    return {s.name for s in responses[0].list_services_response.service}
