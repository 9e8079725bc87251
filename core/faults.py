"""Fault injection for tests: named hook points that block, delay, fail or kill on request.

Off unless `MESH_TEST_FAULTS` names faults, and refused in production: with `MESH_ENV=
production` the variable is a configuration error and no server starts. `mesh serve`
installs what it names; in-process tests call `install` and `clear`. With nothing
installed a hook point costs one dictionary lookup.

`MESH_TEST_FAULTS` is a comma-separated list of `POINT=ACTION`:

| point | where |
| --- | --- |
| `rpc.start` | the RPC boundary, before a handler runs |
| `database.statement` | before database work: connect, transaction, fetch_one, execute_one |
| `database.commit` | a transaction whose work succeeded, before its commit |
| `relay.published` | the outbox relay, after a batch was published and before it is marked sent |

| action | effect |
| --- | --- |
| `block:MS` | blocks the event loop for MS milliseconds (CPU-bound work, a long GC pause) |
| `delay:MS` | waits MS milliseconds without blocking (a slow statement or dependency) |
| `raise` | raises `InjectedFault` (a handler aborted mid-work; a rolled-back commit) |
| `kill` | sends SIGKILL to its own process: no cleanup, no flush, as in a crash |

Usage::

    MESH_TEST_FAULTS="relay.published=kill" mesh serve            # dies at its first relay
    MESH_TEST_FAULTS="rpc.start=block:200,database.commit=raise" mesh serve

    await faults.hit("relay.published")  # a hook point, in the code under test
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterable
from dataclasses import dataclass

import structlog

log = structlog.get_logger()

POINTS = ("rpc.start", "database.statement", "database.commit", "relay.published")
ACTIONS = ("block", "delay", "raise", "kill")


class InjectedFault(RuntimeError):  # noqa: N818 (named for what it is, not as an error)
    """Raised at a hook point by a `raise` fault."""


@dataclass(frozen=True, slots=True)
class Fault:
    """One `POINT=ACTION[:MS]` of MESH_TEST_FAULTS."""

    point: str
    action: str
    millis: int = 0

    def __str__(self) -> str:
        return f"{self.point}={self.action}" + (f":{self.millis}" if self.millis else "")


_active: dict[str, Fault] = {}


def parse(raw: str) -> tuple[Fault, ...]:
    """The faults of a MESH_TEST_FAULTS value; ValueError names what is wrong."""
    found: list[Fault] = []
    for item in (part.strip() for part in raw.split(",")):
        if not item:
            continue
        point, _, action = item.partition("=")
        name, _, millis = action.partition(":")
        if point not in POINTS:
            raise ValueError(f"unknown point {point!r}; points: {', '.join(POINTS)}")
        if name not in ACTIONS:
            raise ValueError(f"unknown action {action!r}; actions: {', '.join(ACTIONS)}")
        timed = name in ("block", "delay")
        if timed != bool(millis) or (millis and not millis.isdigit()):
            raise ValueError(f"{item!r}: block and delay take :MS, raise and kill nothing")
        found.append(Fault(point, name, int(millis or 0)))
    return tuple(found)


def install(faults: Iterable[Fault]) -> None:
    """Arms `faults` (replacing those armed before); logs `fault.installed` for each."""
    _active.clear()
    for fault in faults:
        _active[fault.point] = fault
        log.warning("fault.installed", fault=str(fault))


def clear() -> None:
    """Disarms every fault."""
    _active.clear()


async def hit(point: str) -> None:
    """A hook point: does what the fault armed at `point` says, or nothing."""
    fault = _active.get(point)
    if fault is None:
        return
    log.warning("fault.injected", fault=str(fault))
    if fault.action == "block":
        time.sleep(fault.millis / 1000)  # noqa: TID251, ASYNC251 (blocking the loop is the point)
    elif fault.action == "delay":
        await asyncio.sleep(fault.millis / 1000)
    elif fault.action == "raise":
        raise InjectedFault(f"injected fault at {point}")
    else:
        os.kill(os.getpid(), signal.SIGKILL)
