"""Typed client for `mesh.admin.v1.AdminService`.

Usage::

    async with AdminClient("127.0.0.1:50051") as admin:
        summary = await admin.get_service_summary()
        print(summary.health_score)
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta

from google.protobuf.duration_pb2 import Duration

from clients._private import Client, call, translated
from mesh.admin.v1 import admin_pb2, admin_pb2_grpc


class AdminClient(Client):
    @property
    def _stub(self) -> admin_pb2_grpc.AdminServiceAsyncStub:
        return admin_pb2_grpc.AdminServiceStub(self.channel)

    async def get_service_summary(self, *, timeout: float = 5.0) -> admin_pb2.ServiceSummary:
        request = admin_pb2.GetServiceSummaryRequest()
        response = await call(lambda: self._stub.GetServiceSummary(request, timeout=timeout))
        return response.summary

    async def watch_service_status(self) -> AsyncIterator[admin_pb2.ServiceSummary]:
        """Yields a summary now and after every change until the server stops."""
        async with translated():
            async for response in self._stub.WatchServiceStatus(
                admin_pb2.WatchServiceStatusRequest()
            ):
                yield response.summary

    async def ping(
        self, message: str = "", *, delay: float = 0.0, timeout: float | None = None
    ) -> admin_pb2.PingResponse:
        wait = Duration()
        wait.FromTimedelta(timedelta(seconds=delay))
        request = admin_pb2.PingRequest(message=message, delay=wait)
        return await call(lambda: self._stub.Ping(request, timeout=timeout))
