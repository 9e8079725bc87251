"""`mesh audit` against a real `mesh serve projects` process on its embedded SQLite file."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.mesh._processes import MeshProcess, mesh_env, run_mesh, serving


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[MeshProcess]:
    env = mesh_env(MESH_DATA_DIR=str(tmp_path / "data"))
    async with serving("projects", env=env) as process:
        yield process


async def mesh(server: MeshProcess, *args: str) -> str:
    code, out, err = await run_mesh(*args, "--address", server.address, env=mesh_env())
    assert code == 0, err
    return out


async def writes(server: MeshProcess) -> None:
    create = ["projects", "create", "--id", "demo-clip", "--display-name", "Demo"]
    await mesh(server, *create, "--type", "MUSIC_CLIP")
    await mesh(server, "projects", "update", "demo-clip", "--display-name", "Final cut")
    await mesh(server, "projects", "delete", "demo-clip")


async def test_mesh_audit_prints_the_writes_newest_first(server: MeshProcess) -> None:
    await writes(server)

    table = (await mesh(server, "audit")).splitlines()

    assert table[0].split() == ["TIME", "PRINCIPAL", "ACTION", "RESOURCE", "CHANGES"]
    assert [line.split()[2] for line in table[1:]] == ["delete", "update", "create"]
    assert 'display_name: "Demo" -> "Final cut"' in table[2]
    assert 'owner: - -> "anonymous"' in table[3]  # no credentials: the unauthenticated caller


async def test_mesh_audit_ends_a_page_with_the_flag_of_the_next(server: MeshProcess) -> None:
    await writes(server)

    first = (await mesh(server, "audit", "--page-size", "2")).splitlines()
    flag = first[-1].removeprefix("more: ")
    rest = (await mesh(server, "audit", "--page-size", "2", flag)).splitlines()

    assert flag.startswith("--page-token=")
    assert [line.split()[2] for line in first[1:-1] + rest[1:]] == ["delete", "update", "create"]


async def test_mesh_audit_filters_and_pages_as_json(server: MeshProcess) -> None:
    await writes(server)

    first: dict[str, Any] = json.loads(
        await mesh(
            server, "audit", "--json", "--resource", "projects/demo-clip", "--page-size", "2"
        )
    )
    token = first["next_page_token"]
    rest = json.loads(
        await mesh(
            server,
            "audit",
            "--json",
            "--resource",
            "projects/demo-clip",
            "--page-size",
            "2",
            f"--page-token={token}",  # a token may start with "-"
        )
    )
    none = json.loads(await mesh(server, "audit", "--json", "--principal", "bob"))
    future = json.loads(await mesh(server, "audit", "--json", "--since", "2999-01-01T00:00:00"))

    assert [r["action"] for r in first["records"] + rest["records"]] == [
        "delete",
        "update",
        "create",
    ]
    assert (none["records"], future["records"]) == ([], [])


async def test_mesh_audit_reports_bad_input_with_its_reason(server: MeshProcess) -> None:
    args = ["audit", "--since", "2026-01-02T00:00:00", "--until", "2026-01-01T00:00:00"]
    code, out, err = await run_mesh(*args, "--address", server.address, env=mesh_env())

    assert (code, out) == (1, "")
    assert json.loads(err)["reason"] == "INVALID_TIME_RANGE"
