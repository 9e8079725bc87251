"""SQLite under mixed load: how long writes take while many reads run beside them.

`mesh serve projects` on its embedded default (a SQLite file, no configuration) gets a
fixed rate of writes (UpdateProject, each a transaction with its outbox row) from one
process, first alone (the baseline) and then beside readers running ListProjects (a SQL
query per call: lists are not cached) as fast as they can. The figure that matters is the
tail of write latency: writers that queue on SQLite's one write lock must not wait for
seconds. Each write rate is tried in turn; the highest at which every write completes
and p99 stays under a second is reported as the sustainable rate.

    .venv/bin/python tests/bench/sqlite_mixed.py [--seconds 5] [--readers 16]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from procs import Server, server_env

from clients.projects import ProjectsClient
from core.errors import DomainError
from mesh.projects.v1 import projects_pb2 as pb

RATES = (25, 50, 100, 200)  # writes per second offered
PROJECTS = 50  # updated round robin, so writers rarely touch the same row
SUSTAINABLE_P99_MS = 1000.0


@dataclass
class Phase:
    rate: int
    readers: int
    writes: int
    failed: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    reads_per_s: float


async def _seed(client: ProjectsClient) -> list[str]:
    names = []
    for i in range(PROJECTS):
        project = pb.Project(
            display_name=f"mixed {i}",
            owner="users/bench",
            project_type=pb.Project.PROJECT_TYPE_MUSIC_CLIP,
        )
        created = await client.create_project(project, project_id=f"mixed-{i}")
        names.append(created.name)
    return names


async def _writes(client: ProjectsClient, names: list[str], rate: int, seconds: float) -> Phase:
    """Offers `rate` updates a second for `seconds`, open loop: a slow write does not hold
    back the next one, so queueing shows up in the latencies."""
    latencies: list[float] = []
    failed = 0

    async def one(i: int) -> None:
        nonlocal failed
        name = names[i % len(names)]
        started = time.perf_counter()
        try:
            project = pb.Project(name=name, description=f"write {i}")
            await client.update_project(project, update_mask=["description"], timeout=10.0)
        except DomainError:
            failed += 1
            return
        latencies.append((time.perf_counter() - started) * 1000)

    async with asyncio.TaskGroup() as tg:
        start = time.perf_counter()
        for i in range(int(rate * seconds)):
            await asyncio.sleep(max(0.0, start + i / rate - time.perf_counter()))
            tg.create_task(one(i))
    latencies.sort()
    pick = lambda f: round(latencies[min(len(latencies) - 1, int(f * len(latencies)))], 1)  # noqa: E731
    return Phase(
        rate=rate,
        readers=0,
        writes=len(latencies),
        failed=failed,
        p50_ms=pick(0.5) if latencies else 0.0,
        p99_ms=pick(0.99) if latencies else 0.0,
        max_ms=round(latencies[-1], 1) if latencies else 0.0,
        reads_per_s=0.0,
    )


async def _read_until(client: ProjectsClient, stop: asyncio.Event, counter: list[int]) -> None:
    while not stop.is_set():
        try:
            await client.list_projects(page_size=50, timeout=10.0)
            counter[0] += 1
        except DomainError:
            pass


async def _mixed(address: str, names: list[str], rate: int, readers: int, seconds: float) -> Phase:
    stop = asyncio.Event()
    reads = [0]
    async with (
        ProjectsClient(address) as writer,
        ProjectsClient(address) as reader,
        asyncio.TaskGroup() as tg,
    ):
        for _ in range(readers):
            tg.create_task(_read_until(reader, stop, reads))
        phase = await _writes(writer, names, rate, seconds)
        stop.set()
    phase.readers = readers
    phase.reads_per_s = round(reads[0] / seconds, 1)
    return phase


async def measure(seconds: float, readers: int, logs: Path) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="mesh-sqlite-") as data:
        argv = [str(Path(sys.executable).with_name("mesh")), "serve", "projects"]
        env = server_env(MESH_DATA_DIR=data, MESH_LOG_LEVEL="warning")
        server = Server("sqlite projects", argv, env, logs)
        await server.start_on_free_port()
        try:
            async with ProjectsClient(server.address) as client:
                names = await _seed(client)
                phases = []
                for rate in RATES:
                    async with ProjectsClient(server.address) as writer:
                        alone = await _writes(writer, names, rate, seconds)
                    mixed = await _mixed(server.address, names, rate, readers, seconds)
                    phases.append({"alone": asdict(alone), "mixed": asdict(mixed)})
        finally:
            await server.stop()
    sustainable = [
        p["mixed"]["rate"]
        for p in phases
        if not p["mixed"]["failed"] and p["mixed"]["p99_ms"] <= SUSTAINABLE_P99_MS
    ]
    return {"phases": phases, "sustainable_writes_per_s": max(sustainable, default=0)}


def print_results(results: dict[str, object]) -> None:
    print("\nSQLite under mixed load (UpdateProject at a fixed rate; readers run ListProjects)")
    print(
        f"{'writes/s':>9} {'readers':>8} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} "
        f"{'failed':>7} {'reads/s':>8} {'p99 vs alone':>13}"
    )
    for phase in results["phases"]:  # type: ignore[attr-defined]
        alone, mixed = phase["alone"], phase["mixed"]
        for row, label in ((alone, "alone"), (mixed, "mixed")):
            ratio = ""
            if label == "mixed" and alone["p99_ms"]:
                ratio = f"{row['p99_ms'] / alone['p99_ms']:.2f}x"
            print(
                f"{row['rate']:>9} {row['readers']:>8} {row['p50_ms']:>8} {row['p99_ms']:>8} "
                f"{row['max_ms']:>8} {row['failed']:>7} {row['reads_per_s']:>8} {ratio:>13}"
            )
    print(
        f"sustainable write rate beside the readers (p99 <= {SUSTAINABLE_P99_MS:g} ms, "
        f"no failures): {results['sustainable_writes_per_s']} writes/s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--readers", type=int, default=16)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mesh-bench-logs-") as logs:
        results = asyncio.run(measure(args.seconds, args.readers, Path(logs)))
    print_results(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
