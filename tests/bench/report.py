"""Results of `make bench`: runs, sides and pairs, the JSON report and the printed table."""

from __future__ import annotations

import argparse
import os
import platform
from dataclasses import asdict, dataclass, field
from typing import Any

import grpc
import load
import procs


@dataclass
class Run:
    calls_per_s: float
    ok: int
    seconds: float
    p50_ms: float | None
    p99_ms: float | None
    cpu_us_per_call: float | None
    pg_cpu_us_per_call: float | None
    problem: str = ""


@dataclass
class Side:
    label: str
    server: procs.Server
    target: load.Target
    runs: list[Run] = field(default_factory=list)
    total_ok: int = 0  # OK calls including warm-ups

    def best(self) -> Run | None:
        good = [r for r in self.runs if not r.problem]
        return max(good, key=lambda r: r.calls_per_s) if good else None


@dataclass
class Pair:
    name: str
    note: str
    target: float | None  # None: reported, not judged
    service: Side
    baseline: Side
    on_postgres: bool

    def ratio(self) -> float | None:
        s, b = self.service.best(), self.baseline.best()
        return s.calls_per_s / b.calls_per_s if s and b and b.calls_per_s else None

    def cpu_ratio(self) -> float | None:
        """Baseline CPU per call over the service's: 1.0 means just as cheap."""
        s, b = self.service.best(), self.baseline.best()
        if s and b and s.cpu_us_per_call and b.cpu_us_per_call:
            return b.cpu_us_per_call / s.cpu_us_per_call
        return None


def rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def build_report(
    args: argparse.Namespace,
    generator: load.H2Load | load.PythonDriver,
    pairs: list[Pair],
    cache: dict[str, str],
    elapsed: float,
) -> dict[str, Any]:
    def side(s: Side) -> dict[str, Any]:
        best = s.best()
        runs = [asdict(r) for r in s.runs]
        return {"label": s.label, "best": asdict(best) if best else None, "runs": runs}

    return {
        "load_generator": generator.name,
        "load_generator_detail": generator.describe(),
        "calls_in_flight": generator.concurrency,
        "rounds": args.rounds,
        "seconds_per_run": args.seconds,
        "warmup_seconds": args.warmup,
        "service_settings": "MESH_LOG_LEVEL=warning, in-process cache only (no Redis), metrics on",
        "machine": {"cpus": os.cpu_count(), "load_avg_1m": os.getloadavg()[0]},
        "python": platform.python_version(),
        "grpcio": grpc.__version__,
        "elapsed_s": round(elapsed, 1),
        "service_cache_stats": cache,
        "pairs": [
            {
                "name": p.name,
                "what": p.note,
                "target_ratio": p.target,
                "ratio": _round3(p.ratio()),
                "cpu_ratio": _round3(p.cpu_ratio()),
                "meets_target": _meets(p.ratio(), p.target),
                "service": side(p.service),
                "baseline": side(p.baseline),
            }
            for p in pairs
        ],
    }


def _meets(ratio: float | None, target: float | None) -> bool | None:
    return None if ratio is None or target is None else ratio >= target


def _round3(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def print_report(report: dict[str, Any]) -> None:
    def num(value: float | None, width: int, digits: int = 1) -> str:
        return f"{'-':>{width}}" if value is None else f"{value:>{width}.{digits}f}"

    print(
        f"\nmeshkit bench: {report['load_generator_detail']}; best of {report['rounds']} runs of "
        f"{report['seconds_per_run']} s (after {report['warmup_seconds']} s warm-up each), "
        f"sides interleaved\nservice: {report['service_settings']}; one process per server, "
        f"CPU = utime+stime of that process; PG CPU = all postgres processes\n"
    )
    header = (
        f"{'benchmark':<22}{'side':<10}{'calls/s':>10}{'p50 ms':>9}{'p99 ms':>9}"
        f"{'CPU us/call':>13}{'PG us/call':>12}"
    )
    print(header)
    print("-" * len(header))
    for p in report["pairs"]:
        for key in ("service", "baseline"):
            best = p[key]["best"] or {}
            print(
                f"{p['name'] if key == 'service' else '':<22}{p[key]['label']:<10}"
                f"{num(best.get('calls_per_s'), 10)}{num(best.get('p50_ms'), 9, 2)}"
                f"{num(best.get('p99_ms'), 9, 2)}{num(best.get('cpu_us_per_call'), 13)}"
                f"{num(best.get('pg_cpu_us_per_call'), 12)}"
            )
        verdict = {True: "met", False: "MISSED", None: "not measured"}[p["meets_target"]]
        ratio = "-" if p["ratio"] is None else f"{p['ratio']:.2f}x"
        cpu = "-" if p["cpu_ratio"] is None else f"{p['cpu_ratio']:.2f}x"
        target = p["target_ratio"]
        judged = "no target" if target is None else f"target >= {target:.2f}x: {verdict}"
        print(f"{'':<22}{'ratio':<10}{ratio:>10}   {judged}   (CPU/call, baseline/service: {cpu})")
        print()
    if "spans_exported" in report:
        print(f"spans the traced service exported over OTLP: {report['spans_exported']}")
    cache = report["service_cache_stats"]
    if cache:
        print(
            "service cache: "
            + ", ".join(f"{k}={cache[k]}" for k in ("hits_local", "misses", "loads") if k in cache)
        )
