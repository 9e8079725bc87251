"""A container run as a process: started, kept running until SIGTERM or SIGINT, then
stopped (the gRPC server, its first component, drains first); a second signal exits at
once. `mesh serve` ends with the exit code `serve` returns.

Usage::

    exit_code = await serve(container)
"""

from __future__ import annotations

import asyncio
import gc
import os
import signal

import structlog

from core.runtime.container import Container, StartError, StopError
from core.runtime.tasks import cancel_and_wait

log = structlog.get_logger()


async def serve(container: Container) -> int:
    """Runs the container until SIGTERM or SIGINT, then stops it; returns the exit code.

    A second signal exits at once. Returns 0 after a clean stop, 1 when the start or
    the stop failed.
    """
    loop = asyncio.get_running_loop()
    stop_requested = asyncio.Event()

    def on_signal(sig: signal.Signals) -> None:
        if stop_requested.is_set():
            log.warning("shutdown.forced", signal=sig.name)
            os._exit(128 + sig.value)
        log.info("shutdown.requested", signal=sig.name)
        stop_requested.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        return await _run(container, stop_requested)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


async def _run(container: Container, stop_requested: asyncio.Event) -> int:
    starting = asyncio.create_task(container.start(), name="container-start")
    waiting = asyncio.create_task(stop_requested.wait(), name="stop-signal")
    try:
        return await _until_stopped(container, starting, waiting)
    finally:  # whatever ended the run, neither task outlives it
        await cancel_and_wait(starting, waiting)


async def _until_stopped(
    container: Container, starting: asyncio.Task[None], waiting: asyncio.Task[bool]
) -> int:
    await asyncio.wait({starting, waiting}, return_when=asyncio.FIRST_COMPLETED)
    if not starting.done():  # a signal arrived while starting: undo the start and leave
        await cancel_and_wait(starting)
        log.info("shutdown.finished", during="start")
        return 0
    try:
        starting.result()
    except StartError as exc:
        log.error("service.start_failed", cause=str(exc))
        return 1
    # Everything allocated at start lives for the whole run: keep the garbage collector
    # from walking it again and again under load.
    gc.freeze()
    log.info("service.running")
    await waiting
    try:
        await container.stop("signal received")
    except StopError as exc:
        log.error("shutdown.failed", cause=str(exc))
        return 1
    log.info("shutdown.finished")
    return 0
