"""A TCP proxy for fault tests: put it between a client and a server (or a service and
PostgreSQL or Redis) and make the network misbehave on purpose.

- `freeze()` stops forwarding in both directions but keeps every socket open: the peer
  looks alive to the kernel and silent to the application, like a hung host or a
  partitioned network. `thaw()` resumes.
- `delay(seconds)` holds every chunk that long before forwarding it.
- `cut()` resets every open connection (a crash of the peer as seen over the wire).
- `refuse(True)` closes new connections as soon as they are accepted.

Written here rather than taken from Toxiproxy: that is a separate Go server, and these four
faults on loopback fit in a screen of asyncio.

Usage::

    async with FaultProxy(upstream_port) as proxy:
        client = connect(f"127.0.0.1:{proxy.port}")
        proxy.freeze()
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from types import TracebackType

CHUNK = 64 * 1024


class FaultProxy:
    def __init__(self, upstream_port: int, upstream_host: str = "127.0.0.1") -> None:
        self._upstream = (upstream_host, upstream_port)
        self._server: asyncio.Server | None = None
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._delay = 0.0
        self._refusing = False
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0
        self.accepted = 0

    async def __aenter__(self) -> FaultProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._server is not None
        self._server.close()
        self.cut()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def freeze(self) -> None:
        self._flowing.clear()

    def thaw(self) -> None:
        self._flowing.set()

    def delay(self, seconds: float) -> None:
        self._delay = seconds

    def refuse(self, refusing: bool = True) -> None:
        self._refusing = refusing

    def cut(self) -> None:
        """Resets every open connection: SO_LINGER 0 makes close() send RST, not FIN."""
        for writer in list(self._writers):
            sock = writer.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(
                        socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
                    )
            writer.transport.abort()
        self._writers.clear()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        if self._refusing:
            writer.transport.abort()
            return
        try:
            async with asyncio.timeout(5):
                up_reader, up_writer = await asyncio.open_connection(*self._upstream)
        except (OSError, TimeoutError):
            writer.transport.abort()
            return
        self._writers.update((writer, up_writer))
        for src, dst in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pump(src, dst))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pump(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        try:
            while True:
                await self._flowing.wait()
                data = await src.read(CHUNK)
                if not data:
                    break
                if self._delay:
                    await asyncio.sleep(self._delay)
                await self._flowing.wait()  # a freeze holds what was read mid-flight too
                dst.write(data)
                await dst.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            self._writers.discard(dst)
            dst.transport.abort()
