"""A bare grpc.aio EventService for the events bench: what a Subscribe stream costs without us.

Only Subscribe and Publish are served, with the generated stubs and plain grpc.aio (no
boundary, no bus, no store):

- with `start.now` (a live subscription): one caught_up message, then each event
  Publish gives, until the caller cancels; idle while nobody publishes;
- Publish hands the event, with a position, to every live subscription's queue: the
  grpc work of the latency run without validation, storage or a bus;
- otherwise: the prebuilt SubscribeResponse given on the command line, again and again
  until the caller cancels. It is the message the service sent for a real event, so both
  sides put the same bytes on the wire, and grpc serializes it per message on both.

    python tests/bench/events_baseline.py RESPONSE_HEX

The server binds 127.0.0.1:0, prints `PORT <n>` on stdout and runs until SIGTERM.
It imports nothing of ours but the generated code.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import AsyncIterator
from typing import Any

import grpc

from mesh.events.v1 import events_pb2 as pb
from mesh.events.v1 import events_pb2_grpc


class Streamer(events_pb2_grpc.EventServiceServicer):
    def __init__(self, response: pb.SubscribeResponse) -> None:
        self._response = response
        self._caught_up = pb.SubscribeResponse(caught_up=pb.CaughtUp(position="0"))
        self._live: set[asyncio.Queue[pb.SubscribeResponse]] = set()
        self._position = 0

    async def Publish(self, request: pb.PublishRequest, context: Any) -> pb.PublishResponse:
        self._position += 1
        request.event.position = str(self._position)
        message = pb.SubscribeResponse(event=request.event)
        for queue in self._live:
            queue.put_nowait(message)
        return pb.PublishResponse(position=request.event.position)

    async def Subscribe(
        self, request: pb.SubscribeRequest, context: Any
    ) -> AsyncIterator[pb.SubscribeResponse]:
        if request.start.WhichOneof("start") in (None, "now"):
            queue: asyncio.Queue[pb.SubscribeResponse] = asyncio.Queue()
            self._live.add(queue)
            try:
                yield self._caught_up
                while True:
                    yield await queue.get()
            finally:
                self._live.discard(queue)
        response = self._response
        while True:
            yield response


async def serve(response_hex: str) -> None:
    server = grpc.aio.server()
    response = pb.SubscribeResponse.FromString(bytes.fromhex(response_hex))
    events_pb2_grpc.add_EventServiceServicer_to_server(Streamer(response), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    print(f"PORT {port}", flush=True)
    await stop.wait()
    await server.stop(0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("response", help="a serialized SubscribeResponse, in hex")
    asyncio.run(serve(parser.parse_args().response))


if __name__ == "__main__":
    main()
