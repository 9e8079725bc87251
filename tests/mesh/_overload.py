"""A load generator in a process of its own: `python -m tests.mesh._overload ADDRESS SECONDS
CONCURRENCY` keeps CONCURRENCY calls in flight against ADDRESS (ListProjects and
CreateProject, half each, 5 s deadlines) for SECONDS, then prints one JSON line: how many
calls ended with each code, their latencies, and how many refusals carried a RetryInfo.

A process apart so that its CPU is not the test's: the test measures the server's health
answers while this one overloads it.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import uuid
from collections import Counter

import grpc

from core.calls.status import from_rpc_error
from mesh.projects.v1 import projects_pb2, projects_pb2_grpc

DEADLINE = 5.0


def _percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * share))] if ordered else 0.0


async def overload(address: str, seconds: float, concurrency: int) -> dict[str, object]:
    codes: Counter[str] = Counter()
    ms: dict[str, list[float]] = {}
    with_retry_info = 0
    stop = time.monotonic() + seconds
    async with grpc.aio.insecure_channel(address) as channel:
        projects = projects_pb2_grpc.ProjectServiceStub(channel)

        async def caller(n: int) -> None:
            nonlocal with_retry_info
            i = 0
            while time.monotonic() < stop:
                i += 1
                started = time.perf_counter()
                try:
                    if (n + i) % 2:
                        await projects.ListProjects(
                            projects_pb2.ListProjectsRequest(page_size=10), timeout=DEADLINE
                        )
                    else:
                        project = projects_pb2.Project(
                            display_name=f"load {n}-{i}",
                            project_type=projects_pb2.Project.PROJECT_TYPE_CUSTOM,
                        )
                        await projects.CreateProject(
                            projects_pb2.CreateProjectRequest(
                                project=project, request_id=str(uuid.uuid4())
                            ),
                            timeout=DEADLINE,
                        )
                    code, retry_after = "OK", None
                except grpc.aio.AioRpcError as exc:
                    code, retry_after = exc.code().name, from_rpc_error(exc).retry_after
                codes[code] += 1
                ms.setdefault(code, []).append((time.perf_counter() - started) * 1000)
                if retry_after:
                    with_retry_info += 1
                    await asyncio.sleep(0.05)  # backs off a little, as RetryInfo asks

        await asyncio.gather(*(caller(n) for n in range(concurrency)))
    return {
        "codes": dict(codes),
        "p50_ms": {code: round(_percentile(v, 0.5), 1) for code, v in ms.items()},
        "p99_ms": {code: round(_percentile(v, 0.99), 1) for code, v in ms.items()},
        "with_retry_info": with_retry_info,
        "per_second": round(sum(codes.values()) / seconds),
    }


if __name__ == "__main__":
    target, duration, width = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
    print(json.dumps(asyncio.run(overload(target, duration, width))), flush=True)
