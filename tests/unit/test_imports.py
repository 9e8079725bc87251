"""What a module loads when it is imported on its own, in a fresh interpreter."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _loaded_by(module: str, candidates: tuple[str, ...]) -> list[str]:
    code = (
        f"import sys; import {module}; "
        f"print(' '.join(m for m in {candidates!r} if m in sys.modules))"
    )
    env = {"PYTHONPATH": f"{ROOT}:{ROOT / 'generated'}"}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
    )
    return out.stdout.split()


def test_a_domain_module_loads_neither_sqlalchemy_nor_grpc() -> None:
    assert _loaded_by("servers.projects.domain", ("sqlalchemy", "grpc")) == []


def test_domain_errors_load_no_grpc_until_a_code_is_read() -> None:
    assert _loaded_by("core.errors", ("grpc", "google.protobuf")) == []
