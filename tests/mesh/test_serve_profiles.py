"""MESH_ENV through real `mesh serve` processes: production's refusal to start unsafe, its
plaintext warning, and `mesh status` showing the server's profile and overrides."""

from __future__ import annotations

import json
from pathlib import Path

from tests.mesh._processes import mesh_env, run_mesh, serving


async def test_production_refuses_to_start_without_an_identity_configuration(
    tmp_path: Path,
) -> None:
    env = mesh_env(MESH_ENV="production", MESH_DATA_DIR=str(tmp_path))
    code, out, err = await run_mesh("serve", "admin", env=env)

    assert code == 2
    assert out == ""
    assert err.startswith(
        "mesh: MESH_AUTH=required (the production default) needs an identity configuration: "
    )
    assert "set MESH_AUTH=off to serve without authentication on purpose" in err


async def test_production_with_authentication_off_warns_of_plaintext_and_shows_overrides(
    tmp_path: Path,
) -> None:
    env = mesh_env(
        MESH_ENV="production",
        MESH_AUTH="off",
        MESH_DATA_DIR=str(tmp_path),
        MESH_TOKEN="tok-hunter2",  # a secret: named, never shown
    )
    async with serving("admin", env=env) as server:
        code, out, err = await run_mesh("status", "--address", server.address, env=mesh_env())
        json_code, json_out, _ = await run_mesh(
            "status", "--json", "--address", server.address, env=mesh_env()
        )

    assert server.events("server.listening")[0]["reflection"] is False
    [warning] = server.events("server.plaintext")
    assert warning["level"] == "warning"
    assert code == 0, err
    line = next(x for x in out.splitlines() if x.startswith("profile:"))
    assert line == (
        "profile: production, set otherwise: MESH_ADDRESS=127.0.0.1:0, MESH_AUTH=off, "
        f"MESH_DATA_DIR={tmp_path}, MESH_TOKEN (secret)"
    )
    assert json_code == 0
    summary = json.loads(json_out)
    assert summary["profile"] == "production"
    assert {"name": "MESH_TOKEN", "secret": True} in summary["overrides"]
    assert "hunter2" not in out + json_out


async def test_development_is_the_default_and_does_not_warn(tmp_path: Path) -> None:
    env = mesh_env(MESH_DATA_DIR=str(tmp_path))
    async with serving("admin", env=env) as server:
        code, out, _ = await run_mesh("status", "--address", server.address, env=mesh_env())

    assert server.events("server.listening")[0]["reflection"] is True
    assert server.events("server.plaintext") == []
    assert code == 0
    line = next(x for x in out.splitlines() if x.startswith("profile:"))
    assert line == (  # JSON logs are development's choice off a terminal, but set here
        "profile: development, set otherwise: MESH_ADDRESS=127.0.0.1:0, "
        f"MESH_DATA_DIR={tmp_path}, MESH_LOG_FORMAT=json"
    )
