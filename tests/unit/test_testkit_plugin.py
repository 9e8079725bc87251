"""The test kit's pytest plugin is loaded by every pytest run: it must cost nothing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("grpc", "sqlalchemy", "google.protobuf", "core.runtime", "core.config", "core.errors")


def test_the_plugin_and_its_fixtures_load_nothing_of_meshkit_or_grpc() -> None:
    code = (
        "import sys; import core.testing.plugin, core.testing.fixtures; "
        f"print(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    )
    env = {"PYTHONPATH": f"{ROOT}:{ROOT / 'generated'}"}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
    )
    assert out.stdout.split() == []
