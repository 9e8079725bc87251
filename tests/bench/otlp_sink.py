"""An OTLP trace receiver for `make bench`: accepts every export and counts the spans.

The traced service exports to it as it would to a real collector, so the bench pays
for encoding and sending spans, not for a collector's work.

    python tests/bench/otlp_sink.py COUNT_FILE

The server binds 127.0.0.1:0, prints `PORT <n>` on stdout and runs until SIGTERM. After
each export it writes the number of spans received so far to COUNT_FILE.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path
from typing import Any

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc


class Sink(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, count_file: Path) -> None:
        self._count_file = count_file
        self._spans = 0

    async def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: Any
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        self._spans += sum(
            len(scope.spans)
            for resource in request.resource_spans
            for scope in resource.scope_spans
        )
        self._count_file.write_text(str(self._spans))
        return trace_service_pb2.ExportTraceServiceResponse()


async def main(count_file: Path) -> None:
    server = grpc.aio.server()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Sink(count_file), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(f"PORT {port}", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await server.stop(1)


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1])))
