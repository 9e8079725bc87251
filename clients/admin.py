"""Typed client for `mesh.admin.v1.AdminService`.

Usage::

    async with AdminClient("127.0.0.1:50051") as admin:
        summary = await admin.get_service_summary()
        print(summary.health_score)
        cleared = await admin.clear_cache("projects")   # every process sharing its Redis

AdminClient reaches a server whose readiness is NOT_SERVING (that is when its summary
is most useful), unless it is opened with `health_checked=True`, and has no circuit
breaker. The reads and `clear_cache` (clearing twice is harmless) are retried.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import ClassVar

from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from clients.base import Client
from mesh.admin.v1 import admin_pb2, admin_pb2_grpc


class AdminClient(Client):
    """See the module docstring; the arguments are `clients.base.Client`'s."""

    service: ClassVar[str] = "mesh.admin.v1.AdminService"
    idempotent: ClassVar[frozenset[str]] = frozenset(
        {"GetServiceSummary", "Ping", "ClearCache", "ListAuditRecords"}
    )
    health_checked: ClassVar[bool] = False
    guarded: ClassVar[bool] = False

    @property
    def _stub(self) -> admin_pb2_grpc.AdminServiceAsyncStub:
        return admin_pb2_grpc.AdminServiceStub(self.channel)

    async def get_service_summary(self, *, timeout: float | None = 5.0) -> admin_pb2.ServiceSummary:
        request = admin_pb2.GetServiceSummaryRequest()
        stub = self._stub
        response = await self._unary("GetServiceSummary", stub.GetServiceSummary, request, timeout)
        return response.summary

    async def watch_service_status(self) -> AsyncIterator[admin_pb2.ServiceSummary]:
        """Yields a summary now and after every change until the server stops."""
        request = admin_pb2.WatchServiceStatusRequest()
        stream = self._stream("WatchServiceStatus", self._stub.WatchServiceStatus, request)
        async with contextlib.aclosing(stream) as responses:
            async for response in responses:
                yield response.summary

    async def ping(
        self, message: str = "", *, delay: float = 0.0, timeout: float | None = None
    ) -> admin_pb2.PingResponse:
        wait = Duration()
        wait.FromTimedelta(timedelta(seconds=delay))
        request = admin_pb2.PingRequest(message=message, delay=wait)
        return await self._unary("Ping", self._stub.Ping, request, timeout)

    async def clear_cache(
        self, resource: str = "", *, timeout: float | None = 10.0
    ) -> admin_pb2.ClearCacheResponse:
        """Drops the cached reads of `resource` (e.g. "projects"; "" for all) in Redis and
        in every process sharing it.

        Raises:
            InvalidArgumentError: The server caches no such resource (UNKNOWN_RESOURCE).
            FailedPreconditionError: The server has no cache (NO_CACHE).
            UnavailableError: Its Redis did not answer (CACHE_UNAVAILABLE).
        """
        request = admin_pb2.ClearCacheRequest(resource=resource)
        return await self._unary("ClearCache", self._stub.ClearCache, request, timeout)

    async def list_audit_records(
        self,
        *,
        resource: str = "",
        principal: str = "",
        start: datetime | None = None,
        end: datetime | None = None,
        page_size: int = 0,
        page_token: str = "",
        timeout: float | None = None,
    ) -> admin_pb2.ListAuditRecordsResponse:
        """One page of the audit log, newest first; pass `next_page_token` back for the next.

        `start` and `end` are aware datetimes (records at or after `start`, before `end`).
        """
        request = admin_pb2.ListAuditRecordsRequest(
            resource=resource, principal=principal, page_size=page_size, page_token=page_token
        )
        if start is not None:
            request.start_time.CopyFrom(_timestamp(start))
        if end is not None:
            request.end_time.CopyFrom(_timestamp(end))
        stub = self._stub
        return await self._unary("ListAuditRecords", stub.ListAuditRecords, request, timeout)


def _timestamp(at: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(at)
    return stamp
