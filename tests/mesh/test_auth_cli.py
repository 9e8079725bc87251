"""`mesh` commands send the token of MESH_TOKEN or MESH_TOKEN_FILE to a server that
requires one; `mesh health` needs none."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from core.testing.credentials import hs256_token
from tests.mesh._processes import MeshProcess, mesh_env, run_mesh, serving

SECRET = "test-secret-of-at-least-thirty-two-bytes"


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[MeshProcess]:
    env = mesh_env(
        MESH_DATA_DIR=str(tmp_path / "data"), MESH_AUTH="required", MESH_AUTH_JWT_SECRET=SECRET
    )
    async with serving("projects", env=env) as process:
        yield process


async def test_mesh_sends_the_configured_token(server: MeshProcess, tmp_path: Path) -> None:
    get = ("projects", "get", "absent", "--address", server.address)
    token = hs256_token(SECRET, sub="cli", scope="projects.read")
    token_file = tmp_path / "token"
    token_file.write_text(token + "\n")

    code, _, without = await run_mesh(*get, env=mesh_env())
    assert code != 0
    assert "UNAUTHENTICATED" in without or "missing or invalid credentials" in without

    for env in (mesh_env(MESH_TOKEN=token), mesh_env(MESH_TOKEN_FILE=str(token_file))):
        code, _, err = await run_mesh(*get, env=env)
        assert code != 0
        assert "NOT_FOUND" in err or "does not exist" in err, err  # past the guard

    code, out, _ = await run_mesh("health", "--address", server.address, env=mesh_env())
    assert code == 0
    assert "SERVING" in out
