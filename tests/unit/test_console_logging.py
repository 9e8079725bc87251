"""The console log format without rich: runtime installs lack it (only the dev extras
install it), and an exception logged on a terminal must still show its traceback."""

from __future__ import annotations

import subprocess
import sys

# Runs in a fresh interpreter where `import rich` fails, as in a runtime-only install.
WITHOUT_RICH = """
import sys
sys.modules["rich"] = None
import structlog
from core.logging import configure_logging
configure_logging(service="demo", version="1", log_format="console")
try:
    1 / 0
except ZeroDivisionError:
    structlog.get_logger().exception("thing.failed")
"""


def test_an_exception_logs_a_plain_traceback_without_rich() -> None:
    done = subprocess.run(
        [sys.executable, "-c", WITHOUT_RICH], capture_output=True, text=True, timeout=60
    )

    assert done.returncode == 0, done.stderr
    assert "thing.failed" in done.stderr
    assert "Traceback (most recent call last):" in done.stderr
    assert "ZeroDivisionError: division by zero" in done.stderr
    assert "During handling" not in done.stderr  # the logging itself did not fail
