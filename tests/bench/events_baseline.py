"""A bare grpc.aio EventService for the events bench: what a Subscribe stream costs without us.

Only Subscribe is served, with the generated stubs and plain grpc.aio (no boundary, no
bus, no store):

- with `start.now` (an idle subscription): one caught_up message, then nothing until
  the caller cancels, as the service does when no event arrives;
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

    async def Subscribe(
        self, request: pb.SubscribeRequest, context: Any
    ) -> AsyncIterator[pb.SubscribeResponse]:
        if request.start.WhichOneof("start") in (None, "now"):
            yield self._caught_up
            await asyncio.Event().wait()  # idle until cancelled
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
