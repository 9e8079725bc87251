"""The events part of `make bench`: EventService delivery, fan-out, latency and memory.

`run(args)` starts `mesh serve events` once per backend (the embedded SQLite file, and
Redis Streams when MESH_BENCH_REDIS_URL, default redis://127.0.0.1:6379/0, answers) plus
the bare grpc.aio stream of tests/bench/events_baseline.py, each in a process of its own.
Consumers and publishers run in processes of their own too (`python tests/bench/events.py
ROLE ...`), started together, released together, and the server's CPU is read from /proc
around them.

1. replay, 1 stream: N events are published once (PublishBatch); each run subscribes
   after them again and again (start.after = a marker before them) and counts events
   until `--seconds` are up. The bare server streams the service's own SubscribeResponse
   bytes. Both sides use the same consumer code, which counts raw messages by their
   first byte and parses nothing. Targets: >= 10k events/s and >= 0.6x bare.
2. fan-out: the same with 10 streams, on 10 connections, in 2 consumer processes.
   Target: >= 20k events/s in all.
3. latency: a publisher calls Publish at a steady 1k/s with its send time (time.time_ns)
   in an attribute; a live subscriber records receive - send. Target: p99 <= 20 ms. The
   bare server takes the same Publish calls and hands each event to its live streams: the
   share of the latency and CPU that is grpc's own.
4. memory: 1000 idle subscriptions (start now) on 10 connections, opened 100 at a time
   (each 100 live before the next: clients arrive over time); the server's VmRSS
   before and after, and its CPU while they sit idle. Target: < 100 MB for the process.
   Each server is restarted first, on the store the run filled: a process that has just
   served the replay, fan-out and latency runs keeps the heap they grew (120 MB at rest
   instead of 85, once), which is not what a server holding idle subscriptions shows.

The sides of 1 and 2 are interleaved round by round, in a rotating order; the best run
of each side counts, as in the projects bench.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import grpc
import procs
from google.protobuf import wrappers_pb2

from mesh.events.v1 import events_pb2 as pb

SERVICE = "/mesh.events.v1.EventService/"
EVENT_TAG = 0x0A  # a SubscribeResponse carrying an event starts with field 1's tag
OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]  # one TCP connection per channel
IDLE_WAVE = 100  # idle subscriptions opened at once
IN_FLIGHT = 64  # Publish calls a latency publisher may have outstanding
REDIS_URL = os.environ.get("MESH_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
TARGETS = {"replay_events_per_s": 10_000, "replay_ratio": 0.6, "fanout_events_per_s": 20_000}
TARGETS |= {"latency_p99_ms": 20.0, "idle_rss_mb": 100.0}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("events suite")
    group.add_argument("--events-n", type=int, default=10_000, help="events per subscription")
    group.add_argument("--events-fanout", type=int, default=10, help="fan-out subscribers")
    group.add_argument("--events-rate", type=float, default=1000.0, help="latency: publishes/s")
    group.add_argument("--events-idle", type=int, default=1000, help="idle subscriptions")
    group.add_argument(
        "--events-backends", default="sqlite,redis", help="comma-separated: sqlite, redis"
    )
    group.add_argument(
        "--events-json",
        type=Path,
        default=Path(tempfile.gettempdir()) / "mesh-bench-events-results.json",
    )


def sample_event(i: int) -> pb.Event:
    """About the size of a real event: a 200-character payload and a trace context."""
    event = pb.Event(
        type="mesh.bench.v1.thing.happened",
        source="mesh.bench.v1",
        subject=f"things/{i % 100}",
        attributes={"traceparent": f"00-{uuid.uuid4().hex}-{uuid.uuid4().hex[:16]}-01"},
    )
    event.data.Pack(wrappers_pb2.StringValue(value="x" * 200))
    return event


def percentile(values: list[float], fraction: float) -> float | None:
    ordered = sorted(values)
    return (
        round(ordered[min(len(ordered) - 1, int(fraction * len(ordered)))], 3) if values else None
    )


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


# == the bench process ===================================================================


class Workers:
    """Client processes of this file: started, all READY, released at once, then their JSON."""

    def __init__(self, logs: Path, argvs: list[list[str]]) -> None:
        self._logs, self._argvs = logs, argvs
        self._procs: list[asyncio.subprocess.Process] = []

    async def __aenter__(self) -> Workers:
        for i, argv in enumerate(self._argvs):
            with (self._logs / f"worker-{argv[0]}-{i}.stderr").open("ab") as err:
                self._procs.append(
                    await asyncio.create_subprocess_exec(
                        *procs.script("events.py", *argv),
                        env=procs.server_env(),
                        stdin=asyncio.subprocess.PIPE,
                        stdout=asyncio.subprocess.PIPE,
                        stderr=err,
                    )
                )
        async with asyncio.timeout(120):
            for p in self._procs:
                assert p.stdout is not None
                line = await p.stdout.readline()
                if not line.startswith(b"READY"):
                    raise procs.StartFailedError(f"a worker did not get ready: {line!r}")
        return self

    async def __aexit__(self, *exc: object) -> None:
        for p in self._procs:
            if p.returncode is None:
                p.kill()
                await p.wait()

    def release(self, line: str = "GO") -> None:
        for p in self._procs:
            assert p.stdin is not None
            p.stdin.write(f"{line}\n".encode())

    async def results(self) -> list[dict[str, Any]]:
        out = []
        for p in self._procs:
            assert p.stdout is not None
            raw = await p.stdout.read()
            await p.wait()
            out.append(
                json.loads(raw) if p.returncode == 0 else {"problem": f"exit {p.returncode}"}
            )
        return out


async def unary(address: str, method: str, request: Any, response_type: Any) -> Any:
    async with grpc.aio.insecure_channel(address) as channel:
        call = channel.unary_unary(
            SERVICE + method,
            request_serializer=type(request).SerializeToString,
            response_deserializer=response_type.FromString,
        )
        return await call(request, timeout=30)


async def prepublish(address: str, n: int) -> str:
    """A marker, then `n` events; returns the marker's position (replays start after it)."""
    first = await unary(
        address, "Publish", pb.PublishRequest(event=sample_event(0)), pb.PublishResponse
    )
    for start in range(0, n, 500):
        batch = [sample_event(i) for i in range(start, min(n, start + 500))]
        await unary(
            address, "PublishBatch", pb.PublishBatchRequest(events=batch), pb.PublishBatchResponse
        )
    return str(first.position)


async def first_event_message(address: str, after: str) -> bytes:
    """The raw SubscribeResponse the service sends for the first event after `after`."""
    request = pb.SubscribeRequest(start=pb.StartPosition(after=after))
    async with grpc.aio.insecure_channel(address) as channel:
        call = channel.unary_stream(SERVICE + "Subscribe")(request.SerializeToString(), timeout=30)
        async for raw in call:
            if raw[0] == EVENT_TAG:
                call.cancel()
                return bytes(raw)
    raise procs.StartFailedError("the service streamed no event")


class Side:
    """One server under test, and where its replays start."""

    def __init__(self, label: str, server: procs.Server, after: str) -> None:
        self.label, self.server, self.after = label, server, after
        self.message_bytes = 0
        self.runs: dict[str, list[dict[str, Any]]] = {"replay": [], "fanout": []}

    def best(self, kind: str) -> dict[str, Any] | None:
        good = [r for r in self.runs[kind] if not r.get("problem")]
        return max(good, key=lambda r: r["events_per_s"]) if good else None


async def measure_replay(
    side: Side, streams: int, processes: int, seconds: float, n: int, logs: Path
) -> dict[str, Any]:
    """`streams` subscriptions replaying `n` events over and over for `seconds`."""
    per = [streams // processes + (i < streams % processes) for i in range(processes)]
    argvs = [["replay", side.server.address, side.after, str(n), str(k), str(seconds)] for k in per]
    async with Workers(logs, argvs) as workers:
        cpu = side.server.cpu()
        workers.release()
        results = await workers.results()
        cpu = side.server.cpu() - cpu
    problems = [r["problem"] for r in results if r.get("problem")]
    if problems:
        return {"problem": problems[0]}
    events = sum(r["events"] for r in results)
    wall = max(r["seconds"] for r in results)
    return {
        "events_per_s": round(events / wall, 1),
        "events": events,
        "seconds": round(wall, 3),
        "server_cpu_us_per_event": round(cpu / events * 1e6, 2),
        "consumer_cpu_us_per_event": round(sum(r["cpu_s"] for r in results) / events * 1e6, 2),
        "consumer_busy": round(max(r["cpu_s"] / r["seconds"] for r in results), 2),
    }


async def measure_latency(side: Side, args: argparse.Namespace, logs: Path) -> dict[str, Any]:
    """A steady publisher and one live subscriber; receive - send of each event."""
    total = int(args.events_rate * (args.warmup + args.seconds))
    address = side.server.address
    sub = ["latency", address, str(total), str(args.warmup), str(total / args.events_rate + 30)]
    pub = ["publish", address, str(args.events_rate), str(total)]
    async with Workers(logs, [sub]) as subscriber, Workers(logs, [pub]) as publisher:
        start_ns = time.time_ns() + 200_000_000
        cpu = side.server.cpu()
        subscriber.release(f"GO {start_ns}")
        publisher.release(f"GO {start_ns}")
        [sent] = await publisher.results()
        [got] = await subscriber.results()
        cpu = side.server.cpu() - cpu
    problem = sent.get("problem") or got.get("problem") or ""
    if not problem and got["received"] != total:
        problem = f"published {total}, received {got['received']}"
    return {
        "rate_asked": args.events_rate,
        "rate_sent": round(total / sent["seconds"], 1) if "seconds" in sent else None,
        "events": total,
        "p50_ms": got.get("p50_ms"),
        "p99_ms": got.get("p99_ms"),
        "max_ms": got.get("max_ms"),
        "publish_p50_ms": sent.get("p50_ms"),
        "publish_p99_ms": sent.get("p99_ms"),
        "server_cpu_us_per_event": round(cpu / total * 1e6, 1),
        "problem": problem,
    }


async def measure_idle(side: Side, args: argparse.Namespace, logs: Path) -> dict[str, Any]:
    """`--events-idle` open subscriptions with nothing to deliver: RSS and idle CPU."""
    pid, count = side.server.pid, args.events_idle
    before = rss_mb(pid)
    async with Workers(logs, [["idle", side.server.address, str(count), "10"]]) as workers:
        await asyncio.sleep(1.0)  # let the handlers settle into their wait
        rss = rss_mb(pid)
        cpu = side.server.cpu()
        await asyncio.sleep(args.seconds)
        cpu = side.server.cpu() - cpu
        workers.release("STOP")
        [result] = await workers.results()
    await asyncio.sleep(1.0)
    return {
        "subscriptions": result.get("open", 0),
        "rss_before_mb": before,
        "rss_mb": rss,
        "kb_per_subscription": round((rss - before) * 1024 / max(1, count), 1),
        "rss_after_close_mb": rss_mb(pid),
        "idle_cpu_percent": round(cpu / args.seconds * 100, 1),
        "problem": result.get("problem", ""),
    }


# -- servers ------------------------------------------------------------------------------


async def redis_namespace_drop(namespace: str) -> None:
    import redis.asyncio as redis  # only when the Redis backend was measured

    client = redis.Redis.from_url(REDIS_URL)
    try:
        keys = [k async for k in client.scan_iter(match=f"{namespace}*", count=1000)]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


async def redis_skip_reason() -> str:
    import redis.asyncio as redis

    client = redis.Redis.from_url(REDIS_URL, socket_timeout=2)
    try:
        await client.ping()
    except (OSError, redis.RedisError) as exc:
        return f"{REDIS_URL} does not answer ({type(exc).__name__})"
    finally:
        await client.aclose()
    return ""


async def start_sides(
    stack: AsyncExitStack, args: argparse.Namespace, logs: Path, notes: list[str]
) -> list[Side]:
    """Each backend's `mesh serve events`, its events published, then the bare stream."""
    mesh = str(Path(sys.executable).with_name("mesh"))
    quiet = {"MESH_LOG_LEVEL": "warning", "MESH_LOG_FORMAT": "json"}
    envs: dict[str, dict[str, str]] = {}
    wanted = args.events_backends.split(",")
    if "sqlite" in wanted:
        data = str(logs / "sqlite-data")
        envs["sqlite"] = quiet | {"MESH_EVENTS_BACKEND": "sql", "MESH_DATA_DIR": data}
    if "redis" in wanted:
        if skip := await redis_skip_reason():
            notes.append(f"redis backend not measured: {skip}")
        else:
            namespace = f"bench-{uuid.uuid4().hex[:8]}"
            stack.push_async_callback(redis_namespace_drop, namespace)
            envs["redis"] = quiet | {
                "MESH_EVENTS_BACKEND": "redis",
                "MESH_REDIS_URL": REDIS_URL,
                "MESH_CACHE_NAMESPACE": namespace,
                "MESH_DATA_DIR": str(logs / "redis-data"),
            }
    sides = []
    for label, env in envs.items():
        server = procs.Server(label, [mesh, "serve", "events"], procs.server_env(**env), logs)
        stack.push_async_callback(server.stop)
        await server.start_on_free_port()
        after = await prepublish(server.address, args.events_n)
        sides.append(Side(label, server, after))
        sides[-1].message_bytes = len(await first_event_message(server.address, after))
    if not sides:
        raise procs.StartFailedError("no events backend to measure")
    message = await first_event_message(sides[0].server.address, sides[0].after)
    bare = procs.Server(
        "bare", procs.script("events_baseline.py", message.hex()), procs.server_env(), logs
    )
    stack.push_async_callback(bare.stop)
    await bare.start_reporting_port()
    sides.append(Side("bare", bare, sides[0].after))
    sides[-1].message_bytes = len(await first_event_message(bare.address, sides[0].after))
    return sides


# -- the run ------------------------------------------------------------------------------


async def run(args: argparse.Namespace) -> int:
    """The events suite; 1 if a server did not start or a run failed, else 0."""
    logs = Path(tempfile.mkdtemp(prefix="mesh-bench-events-"))
    notes: list[str] = []
    problems: list[str] = []
    started = time.monotonic()
    kinds = {"replay": (1, 1), "fanout": (args.events_fanout, 2)}  # streams, processes
    async with AsyncExitStack() as stack:
        try:
            sides = await start_sides(stack, args, logs, notes)
            for side in sides:  # warm-up: connections, caches, the interpreter
                await measure_replay(side, 1, 1, args.warmup, args.events_n, logs)
        except (procs.StartFailedError, grpc.RpcError, TimeoutError) as exc:
            print(f"bench events: {exc}\n(logs in {logs})", file=sys.stderr)
            return 1
        print(f"events: {', '.join(notes) or 'every backend measured'}", flush=True)
        for round_ in range(args.rounds):
            order = sides[round_ % len(sides) :] + sides[: round_ % len(sides)]
            for kind, (streams, processes) in kinds.items():
                for side in order:
                    r = await measure_replay(
                        side, streams, processes, args.seconds, args.events_n, logs
                    )
                    side.runs[kind].append(r)
                    _print_run(round_, args.rounds, f"{kind} x{streams}", side.label, r)
                    if r.get("problem"):
                        problems.append(f"{kind} {side.label}: {r['problem']}")
        latency, idle = {}, {}
        for side in sides:
            latency[side.label] = r = await measure_latency(side, args, logs)
            _print_run(0, 1, "latency", side.label, r)
        for side in sides:  # last, each on a fresh process (see 4. above)
            await side.server.stop()
            if side.label == "bare":
                await side.server.start_reporting_port()
            else:
                await side.server.start_on_free_port()
            idle[side.label] = r = await measure_idle(side, args, logs)
            _print_run(0, 1, "idle", side.label, r)
        problems += [
            f"{k} {s}: {r['problem']}"
            for k, d in (("latency", latency), ("idle", idle))
            for s, r in d.items()
            if r.get("problem")
        ]
        report = build_report(args, sides, latency, idle, notes, time.monotonic() - started)
        complaints = [s.server for s in sides if s.server.complaints()]
    for server in complaints:
        print(f"note: {server.label} logged errors, see {server.log_path}")
    print_report(report)
    args.events_json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nevents results written to {args.events_json}")
    for problem in problems:
        print(f"bench events: ERROR: {problem}", file=sys.stderr)
    return 1 if problems else 0


def _print_run(round_: int, rounds: int, what: str, label: str, r: dict[str, Any]) -> None:
    if r.get("problem"):
        detail = f"PROBLEM: {r['problem']}"
    elif "events_per_s" in r:
        detail = (
            f"{r['events_per_s']:9.1f} events/s  server {r['server_cpu_us_per_event']:6.1f}"
            f" us/event  consumers {r['consumer_cpu_us_per_event']:6.1f} us/event"
            f" (busiest {r['consumer_busy']:.0%})"
        )
    elif "p99_ms" in r:
        detail = f"p50 {r['p50_ms']} ms  p99 {r['p99_ms']} ms  sent {r['rate_sent']}/s"
    else:
        detail = f"RSS {r['rss_before_mb']} -> {r['rss_mb']} MB, idle CPU {r['idle_cpu_percent']}%"
    print(f"  round {round_ + 1}/{rounds}  {what:<11} {label:<7} {detail}", flush=True)


def build_report(
    args: argparse.Namespace,
    sides: list[Side],
    latency: dict[str, Any],
    idle: dict[str, Any],
    notes: list[str],
    elapsed: float,
) -> dict[str, Any]:
    bare = sides[-1]
    throughput: dict[str, Any] = {}
    for kind in ("replay", "fanout"):
        floor = TARGETS["replay_events_per_s" if kind == "replay" else "fanout_events_per_s"]
        entry: dict[str, Any] = {}
        for side in sides:
            best = side.best(kind)
            entry[side.label] = {"best": best, "runs": side.runs[kind]}
            if side is bare or best is None:
                continue
            base = bare.best(kind)
            ratio = best["events_per_s"] / base["events_per_s"] if base else None
            cpu = (
                base["server_cpu_us_per_event"] / best["server_cpu_us_per_event"] if base else None
            )
            entry[side.label] |= {
                "ratio": None if ratio is None else round(ratio, 3),
                "cpu_ratio": None if cpu is None else round(cpu, 3),
                "meets_rate": best["events_per_s"] >= floor,
                "meets_ratio": None
                if ratio is None or kind != "replay"
                else ratio >= TARGETS["replay_ratio"],
            }
        throughput[kind] = entry
    for label, r in latency.items():
        p99 = r["p99_ms"]
        met = p99 is not None and p99 <= TARGETS["latency_p99_ms"]
        r["meets_target"] = None if label == "bare" else met
    for label, r in idle.items():
        r["meets_target"] = r["rss_mb"] < TARGETS["idle_rss_mb"] if label != "bare" else None
    return {
        "suite": "events",
        "targets": TARGETS,
        "events_per_subscription": args.events_n,
        "fanout_subscribers": args.events_fanout,
        "rounds": args.rounds,
        "seconds_per_run": args.seconds,
        "message_bytes": {s.label: s.message_bytes for s in sides},
        "notes": notes,
        "machine": {"cpus": os.cpu_count(), "load_avg_1m": os.getloadavg()[0]},
        "grpcio": grpc.__version__,
        "elapsed_s": round(elapsed, 1),
        "throughput": throughput,
        "latency": latency,
        "idle": idle,
    }


def print_report(report: dict[str, Any]) -> None:
    def num(value: float | None, width: int, digits: int = 1) -> str:
        return f"{'-':>{width}}" if value is None else f"{value:>{width}.{digits}f}"

    def met(ok: bool | None) -> str:
        return {True: "met", False: "MISSED", None: "-"}[ok]

    targets = report["targets"]
    print(
        f"\nmeshkit events bench: best of {report['rounds']} runs of {report['seconds_per_run']}"
        f" s, sides interleaved; {report['events_per_subscription']} events per subscription;"
        f" message bytes {report['message_bytes']}\nsrv = utime+stime of the server process per"
        " event; 1-core = 1e6/srv, what one full core would deliver; cons = all consumer\n"
        "processes per event; busy = the busiest consumer process's CPU over wall time\n"
    )
    header = (
        f"{'benchmark':<18}{'side':<8}{'events/s':>10}{'srv us/ev':>11}{'1-core/s':>10}"
        f"{'cons us/ev':>12}{'busy':>6}"
    )
    print(header + "\n" + "-" * len(header))
    for kind, title in (("replay", "replay, 1 stream"), ("fanout", "fan-out")):
        title += "" if kind == "replay" else f" x{report['fanout_subscribers']}"
        entry = report["throughput"][kind]
        for i, (label, side) in enumerate(entry.items()):
            best = side["best"] or {}
            srv = best.get("server_cpu_us_per_event")
            print(
                f"{title if i == 0 else '':<18}{label:<8}{num(best.get('events_per_s'), 10)}"
                f"{num(srv, 11)}{num(1e6 / srv if srv else None, 10, 0)}"
                f"{num(best.get('consumer_cpu_us_per_event'), 12)}"
                f"{num(best.get('consumer_busy'), 6, 2)}"
            )
        floor = targets["replay_events_per_s" if kind == "replay" else "fanout_events_per_s"]
        for label, side in entry.items():
            if "ratio" not in side:
                continue
            line = (
                f"{'':<18}{label:<8}>= {floor}/s: {met(side['meets_rate'])}; {side['ratio']}x bare"
            )
            if side["meets_ratio"] is not None:
                line += f" (>= {targets['replay_ratio']}x: {met(side['meets_ratio'])})"
            print(f"{line}; CPU/event bare/service {side['cpu_ratio']}x")
        print()
    for label, r in report["latency"].items():
        verdict = f" (p99 <= {targets['latency_p99_ms']} ms: {met(r['meets_target'])})"
        print(
            f"latency {label:<7} asked {r['rate_asked']:.0f}/s, sent {r['rate_sent']}/s: p50"
            f" {r['p50_ms']} ms, p99 {r['p99_ms']} ms, max {r['max_ms']} ms"
            + (verdict if label != "bare" else "")
            + f"\n{'':<16}Publish RPC p50 {r['publish_p50_ms']} ms, p99 {r['publish_p99_ms']} ms;"
            f" server {r['server_cpu_us_per_event']} us CPU per event published and delivered"
        )
    for label, r in report["idle"].items():
        verdict = f" (< {targets['idle_rss_mb']:.0f} MB: {met(r['meets_target'])})"
        print(
            f"idle x{r['subscriptions']} {label:<7} RSS {r['rss_before_mb']} -> {r['rss_mb']} MB"
            f" ({r['kb_per_subscription']} KB each, {r['rss_after_close_mb']} MB after closing),"
            f" idle CPU {r['idle_cpu_percent']}%" + (verdict if label != "bare" else "")
        )
    for note in report["notes"]:
        print(f"note: {note}")


# == the client processes: python tests/bench/events.py ROLE ... ==========================


async def released() -> str:
    """Says READY, then waits for the bench's word (GO [start_ns] or STOP)."""
    print("READY", flush=True)
    return (await asyncio.to_thread(sys.stdin.readline)).strip()


async def replay_worker(
    address: str, after: str, n: str, streams: str, seconds: str
) -> dict[str, Any]:
    """`streams` connections, each subscribing after `after` and reading `n` events, again
    and again until `seconds` are up. Raw bytes: an event is a message starting with 0x0A."""
    request = pb.SubscribeRequest(start=pb.StartPosition(after=after)).SerializeToString()
    count = int(n)
    channels = [
        grpc.aio.insecure_channel(address, options=OWN_CONNECTION) for _ in range(int(streams))
    ]

    async def stream(channel: grpc.aio.Channel, deadline: float) -> int:
        subscribe = channel.unary_stream(SERVICE + "Subscribe")
        events = 0
        while True:
            call = subscribe(request)
            got = 0
            while got < count:
                raw = await call.read()
                if raw is grpc.aio.EOF:
                    raise RuntimeError(f"the stream ended after {got} of {count} events")
                if raw[0] == EVENT_TAG:
                    got += 1
            call.cancel()
            events += got
            if time.perf_counter() >= deadline:
                return events

    try:
        for channel in channels:
            await asyncio.wait_for(channel.channel_ready(), 30)
        await released()
        started, cpu = time.perf_counter(), time.process_time()
        counts = await asyncio.gather(*(stream(c, started + float(seconds)) for c in channels))
        return {
            "events": sum(counts),
            "seconds": time.perf_counter() - started,
            "cpu_s": time.process_time() - cpu,
        }
    except (grpc.RpcError, RuntimeError, TimeoutError) as exc:
        return {"problem": _why(exc)}
    finally:
        for channel in channels:
            await channel.close()


async def publish_worker(address: str, rate: str, total: str) -> dict[str, Any]:
    """Publish calls at a steady `rate` from the start time the bench gives, send time in
    the attribute sent_ns. A slow call does not hold the next one back, up to IN_FLIGHT
    calls; past that the publisher falls behind and reports the rate it reached."""
    latencies: list[float] = []
    errors: list[str] = []
    template = sample_event(0)
    async with grpc.aio.insecure_channel(address) as channel:
        publish = channel.unary_unary(
            SERVICE + "Publish",
            request_serializer=pb.PublishRequest.SerializeToString,
            response_deserializer=pb.PublishResponse.FromString,
        )
        await asyncio.wait_for(channel.channel_ready(), 30)
        start = int((await released()).split()[1]) / 1e9

        slots = asyncio.Semaphore(IN_FLIGHT)

        async def one() -> None:
            request = pb.PublishRequest(event=template)
            request.event.attributes["sent_ns"] = str(time.time_ns())
            t0 = time.perf_counter()
            try:
                await publish(request, timeout=10)
                latencies.append((time.perf_counter() - t0) * 1000)
            except grpc.RpcError as exc:
                errors.append(str(exc.code()))
            finally:
                slots.release()

        async with asyncio.TaskGroup() as tasks:
            for i in range(int(total)):
                delay = start + i / float(rate) - time.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                await slots.acquire()  # wait here rather than queue calls without bound
                tasks.create_task(one())
        seconds = time.time() - start
    result: dict[str, Any] = {
        "seconds": seconds,
        "p50_ms": percentile(latencies, 0.5),
        "p99_ms": percentile(latencies, 0.99),
    }
    if errors:
        result["problem"] = f"{len(errors)} publishes failed, first: {errors[0]}"
    return result


async def latency_worker(address: str, total: str, warmup: str, timeout: str) -> dict[str, Any]:
    """A live subscription: receive time - sent_ns of each event sent after the warm-up."""
    request = pb.SubscribeRequest(start=pb.StartPosition(now=True)).SerializeToString()
    latencies: list[float] = []
    received = 0
    async with grpc.aio.insecure_channel(address) as channel:
        call = channel.unary_stream(SERVICE + "Subscribe")(request)
        first = await asyncio.wait_for(call.read(), 30)  # caught_up: the subscription is live
        if first is grpc.aio.EOF or first[0] == EVENT_TAG:
            return {"problem": f"expected caught_up first, got {first!r}"}
        counted_from = int((await released()).split()[1]) + int(float(warmup) * 1e9)
        try:
            async with asyncio.timeout(float(timeout)):
                while received < int(total):
                    raw = await call.read()
                    if raw is grpc.aio.EOF:
                        break
                    if raw[0] != EVENT_TAG:
                        continue
                    now = time.time_ns()
                    sent = int(pb.SubscribeResponse.FromString(raw).event.attributes["sent_ns"])
                    received += 1
                    if sent >= counted_from:
                        latencies.append((now - sent) / 1e6)
        except TimeoutError:
            pass
        call.cancel()
    return {
        "received": received,
        "p50_ms": percentile(latencies, 0.5),
        "p99_ms": percentile(latencies, 0.99),
        "max_ms": percentile(latencies, 1.0),
    }


async def idle_worker(address: str, count: str, connections: str) -> dict[str, Any]:
    """`count` live subscriptions on `connections` connections, opened IDLE_WAVE at a time
    (each wave live before the next), held until the bench says STOP."""
    request = pb.SubscribeRequest(start=pb.StartPosition(now=True)).SerializeToString()
    channels = [
        grpc.aio.insecure_channel(address, options=OWN_CONNECTION) for _ in range(int(connections))
    ]
    calls: list[Any] = []
    live, problem = 0, ""
    try:
        for start in range(0, int(count), IDLE_WAVE):
            wave = [
                channels[i % len(channels)].unary_stream(SERVICE + "Subscribe")(request)
                for i in range(start, min(int(count), start + IDLE_WAVE))
            ]
            calls += wave
            async with asyncio.timeout(60):
                firsts = await asyncio.gather(*(c.read() for c in wave), return_exceptions=True)
            for first in firsts:
                if isinstance(first, BaseException):
                    problem = problem or _why(first)
                elif first is not grpc.aio.EOF and first[0] != EVENT_TAG:
                    live += 1
        if live < len(calls):
            problem = f"{len(calls) - live} of {len(calls)} did not go live; first: {problem}"
    except TimeoutError:
        problem = f"only {live} of {count} went live within a minute per wave"
    try:
        await released()
        return {"open": live, "problem": problem}
    finally:
        for call in calls:
            call.cancel()
        for channel in channels:
            await channel.close()


def _why(exc: BaseException) -> str:
    if isinstance(exc, grpc.aio.AioRpcError):
        return f"{exc.code().name}: {exc.details()}"
    return f"{type(exc).__name__}: {exc}"


ROLES: dict[str, Callable[..., Awaitable[dict[str, Any]]]] = {
    "replay": replay_worker,
    "publish": publish_worker,
    "latency": latency_worker,
    "idle": idle_worker,
}


if __name__ == "__main__":
    print(json.dumps(asyncio.run(ROLES[sys.argv[1]](*sys.argv[2:]))), flush=True)
