"""Overload from a separate process, far past what the server can carry: the excess is
refused at once with RESOURCE_EXHAUSTED and a RetryInfo instead of queueing until every
deadline expires, nothing else goes wrong, and health keeps answering."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

from clients.health import HealthClient
from tests.mesh._processes import mesh_env, serving

LIMIT = 16  # MESH_MAX_CONCURRENT_CALLS for this server
CALLERS = 16 * LIMIT  # calls the load process keeps in flight
SECONDS = 6.0


async def test_overload_is_shed_at_once_and_health_keeps_answering(tmp_path: Path) -> None:
    env = mesh_env(MESH_DATA_DIR=str(tmp_path / "data"), MESH_MAX_CONCURRENT_CALLS=str(LIMIT))
    env.pop("PYTHONASYNCIODEBUG", None)  # the server at full speed: what it can carry
    async with serving("projects", env=env) as server, HealthClient(server.address) as health:
        load = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.mesh._overload",
            server.address,
            str(SECONDS),
            str(CALLERS),
            env=env,
            stdout=asyncio.subprocess.PIPE,
        )
        checks: list[tuple[float, str]] = []
        try:
            async with asyncio.timeout(SECONDS + 30):
                await asyncio.sleep(1.0)  # the load has ramped up
                while load.returncode is None and len(checks) < 4 * SECONDS:
                    started = time.perf_counter()
                    status = await health.check("", timeout=5.0)
                    checks.append((time.perf_counter() - started, status))
                    await asyncio.sleep(0.2)
                out, _ = await load.communicate()
        finally:
            if load.returncode is None:
                load.kill()
                await load.wait()
    result = json.loads(out)
    slowest = max(seconds for seconds, _ in checks)
    print(f"\n{CALLERS} callers against a limit of {LIMIT}: {json.dumps(result)}")
    print(f"health: {len(checks)} checks while shedding, slowest {slowest * 1000:.0f} ms")

    codes = result["codes"]
    assert set(codes) <= {"OK", "RESOURCE_EXHAUSTED"}  # no DEADLINE_EXCEEDED, nothing else
    assert codes.get("OK", 0) > 0
    assert codes.get("RESOURCE_EXHAUSTED", 0) > 0
    assert result["with_retry_info"] == codes["RESOURCE_EXHAUSTED"]
    # Refused at once: far from the 5 s deadline a queued call would have waited out.
    assert result["p99_ms"]["RESOURCE_EXHAUSTED"] < 2500
    assert {status for _, status in checks} == {"SERVING"}
    assert slowest < 2.5  # generous on a shared machine; the figure is printed above
