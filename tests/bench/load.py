"""Load generators for `make bench`: h2load when installed, else a multi-process Python driver.

Both send one fixed serialized request to one gRPC method for a measured window and
report the calls that finished OK inside it, with latency percentiles. `measure` calls
`sample()` right before and right after the window, so the caller can read the CPU
time a server spent on exactly those calls.

h2load counts HTTP statuses only, and a gRPC error is an HTTP 200 too. Its error
responses carry no DATA frame, though (the status travels in trailers only), so a run
is checked by the response bytes it received: every OK call returns at least
`min_response` message bytes.

The Python driver runs as `python tests/bench/load.py worker ...` in WORKERS processes,
each with one grpc.aio channel; every call's status is checked.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import shutil
import struct
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

WORKERS = 2


@dataclass(frozen=True)
class Target:
    address: str  # HOST:PORT
    method: str  # /mesh.projects.v1.ProjectService/GetProject
    request: bytes  # a serialized request message
    min_response: int  # the smallest serialized response message an OK call returns
    headers: tuple[tuple[str, str], ...] = ()  # metadata sent with every call (a token)


@dataclass
class Result:
    ok: int  # calls that finished OK inside the window
    errors: int
    seconds: float
    p50_ms: float | None = None
    p99_ms: float | None = None
    total_ok: int = 0  # OK calls including the warm-up: what a create run must have written
    problem: str = ""  # why the run cannot be trusted; empty when it can

    @property
    def rate(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0


def grpc_frame(message: bytes) -> bytes:
    """The body of a unary gRPC request: not compressed, 4-byte length, message."""
    return b"\0" + struct.pack(">I", len(message)) + message


def percentile(sorted_values: list[float], fraction: float) -> float | None:
    if not sorted_values:
        return None
    return sorted_values[min(len(sorted_values) - 1, int(fraction * len(sorted_values)))]


class H2Load:
    """nghttp2's h2load over h2c: `connections` connections, `streams` calls in flight on each."""

    name = "h2load"

    def __init__(self, path: str, *, connections: int, streams: int, workdir: Path) -> None:
        self.path = path
        self.connections = connections
        self.streams = streams
        self._dir = workdir  # request bodies and per-request logs

    @property
    def concurrency(self) -> int:
        return self.connections * self.streams

    def describe(self) -> str:
        return f"h2load ({self.connections} connections x {self.streams} streams, 1 thread)"

    async def measure(
        self, target: Target, *, warmup: float, seconds: float, sample: Callable[[], T]
    ) -> tuple[Result, T, T]:
        body = self._dir / "body"
        body.write_bytes(grpc_frame(target.request))
        if warmup > 0:
            warm = await self._run(target, body, warmup)
            if warm.problem:
                return warm, sample(), sample()
        before = sample()
        result = await self._run(target, body, seconds, log=self._dir / "log")
        after = sample()
        result.total_ok += warm.total_ok if warmup > 0 else 0
        return result, before, after

    async def _run(
        self, target: Target, body: Path, seconds: float, log: Path | None = None
    ) -> Result:
        url = f"http://{target.address}{target.method}"
        args = [
            self.path, "-D", f"{round(seconds * 1000)}ms", "-c", str(self.connections),
            "-m", str(self.streams), "-t", "1", "-d", str(body),
            "-H", "content-type: application/grpc", "-H", "te: trailers",
            # A deadline, as the typed clients and the Python driver send (timeout=10):
            # a call without one runs under the server's default, an extra timer.
            "-H", "grpc-timeout: 10S",
        ]  # fmt: skip
        for key, value in target.headers:
            args += ["-H", f"{key}: {value}"]
        if log is not None:
            _remove(log)
            args.append(f"--log-file={log}")
        process = await asyncio.create_subprocess_exec(
            *args, url, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
        )
        out = (await process.communicate())[0].decode(errors="replace")
        result = _parse_h2load(out, target)
        if process.returncode != 0 and not result.problem:
            result.problem = f"h2load exited with {process.returncode}"
        if log is not None:
            latencies = _latencies(log)
            result.p50_ms = percentile(latencies, 0.50)
            result.p99_ms = percentile(latencies, 0.99)
        return result


def _remove(path: Path) -> None:
    path.unlink(missing_ok=True)


def _latencies(log: Path) -> list[float]:
    """Sorted milliseconds of the HTTP 200 responses in an h2load --log-file."""
    if not log.exists():
        return []
    rows = (line.split("\t") for line in log.read_text().splitlines())
    return sorted(int(r[2]) / 1000 for r in rows if len(r) == 3 and r[1] == "200")


def _parse_h2load(out: str, target: Target) -> Result:
    finished = re.search(r"finished in ([\d.]+)(s|ms)", out)
    requests = re.search(
        r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
        r"(\d+) errored, (\d+) timeout",
        out,
    )
    codes = re.search(r"status codes: (\d+) 2xx", out)
    data = re.search(r"traffic: .*\((\d+)\) data", out)
    if not (finished and requests and codes and data):
        return Result(0, 0, 0.0, problem="unreadable h2load output:\n" + out[-2000:])
    seconds = float(finished[1]) / (1000 if finished[2] == "ms" else 1)
    _, _, _, succeeded, failed, errored, timeouts = (int(g) for g in requests.groups())
    ok_http = int(codes[1])
    # An OK gRPC response has a DATA frame (5-byte prefix + message); an error has none.
    ok_grpc = min(ok_http, int(data[1]) // (5 + target.min_response))
    errors = failed + errored + timeouts + (succeeded - ok_http) + (ok_http - ok_grpc)
    result = Result(ok_grpc, errors, seconds, total_ok=ok_grpc)
    if errors:
        result.problem = (
            f"{errors} of {succeeded + failed + errored + timeouts} calls failed "
            f"(HTTP 2xx {ok_http}, with a gRPC response body {ok_grpc})"
        )
    return result


class PythonDriver:
    """WORKERS processes of grpc.aio clients, `concurrency` calls in flight in all."""

    name = "python"

    def __init__(self, *, concurrency: int) -> None:
        self.concurrency = concurrency

    def describe(self) -> str:
        return f"python grpc.aio driver ({WORKERS} processes, {self.concurrency} calls in flight)"

    async def measure(
        self, target: Target, *, warmup: float, seconds: float, sample: Callable[[], T]
    ) -> tuple[Result, T, T]:
        start = time.time() + 1.0 + warmup  # workers need about a second to start
        end = start + seconds
        each = max(1, self.concurrency // WORKERS)
        workers = [
            await asyncio.create_subprocess_exec(
                sys.executable,
                __file__,
                "worker",
                target.address,
                target.method,
                target.request.hex(),
                str(each),
                str(start),
                str(end),
                json.dumps(target.headers),
                stdout=asyncio.subprocess.PIPE,
            )
            for _ in range(WORKERS)
        ]
        await asyncio.sleep(max(0.0, start - time.time()))
        before = sample()
        await asyncio.sleep(max(0.0, end - time.time()))
        after = sample()
        outputs = [(await w.communicate())[0] for w in workers]
        result = Result(0, 0, seconds)
        latencies: list[float] = []
        for worker, out in zip(workers, outputs, strict=True):
            if worker.returncode != 0:
                result.problem = f"a driver process exited with {worker.returncode}"
                continue
            report = json.loads(out)
            result.ok += report["ok"]
            result.errors += report["errors"]
            result.total_ok += report["total_ok"]
            latencies += report["latencies_ms"]
            if report["errors"] and not result.problem:
                result.problem = f"calls failed: {report['first_error']}"
        latencies.sort()
        result.p50_ms = percentile(latencies, 0.50)
        result.p99_ms = percentile(latencies, 0.99)
        return result, before, after


async def _worker(args: argparse.Namespace) -> dict[str, Any]:
    import grpc  # only the worker processes need grpc

    request = bytes.fromhex(args.request)
    start, end = float(args.start), float(args.end)
    metadata = tuple((key, value) for key, value in json.loads(args.headers)) or None
    report: dict[str, Any] = {"ok": 0, "total_ok": 0, "errors": 0, "first_error": ""}
    latencies: list[float] = []
    async with grpc.aio.insecure_channel(args.address) as channel:
        call = channel.unary_unary(args.method)  # bytes in, bytes out: no (de)serializing

        async def loop() -> None:
            while time.time() < end:
                t0 = time.perf_counter()
                try:
                    await call(request, timeout=10, metadata=metadata)
                except grpc.RpcError as exc:
                    report["errors"] += 1
                    report["first_error"] = report["first_error"] or str(exc.code())
                    continue
                report["total_ok"] += 1
                if start <= time.time() <= end:  # a call counts in the window it ends in
                    report["ok"] += 1
                    latencies.append((time.perf_counter() - t0) * 1000)

        await asyncio.gather(*(loop() for _ in range(int(args.concurrency))))
    report["latencies_ms"] = [round(x, 3) for x in latencies]
    return report


def generator(
    prefer: str, *, connections: int, streams: int, workdir: Path
) -> H2Load | PythonDriver:
    """h2load if it is on PATH (unless `prefer` is "python"), else the Python driver."""
    path = shutil.which("h2load")
    if prefer == "h2load" and path is None:
        raise SystemExit("bench: --driver h2load, but h2load is not installed")
    if path is not None and prefer != "python":
        return H2Load(path, connections=connections, streams=streams, workdir=workdir)
    return PythonDriver(concurrency=connections * streams)


def main() -> None:
    parser = argparse.ArgumentParser(description="one process of the Python load driver")
    parser.add_argument("role", choices=["worker"])
    for name in ("address", "method", "request", "concurrency", "start", "end", "headers"):
        parser.add_argument(name)
    print(json.dumps(asyncio.run(_worker(parser.parse_args()))))


if __name__ == "__main__":
    main()
