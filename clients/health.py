"""Typed client for the standard `grpc.health.v1.Health` service.

Usage::

    async with HealthClient("127.0.0.1:50051") as health:
        serving = await health.check("readiness") == "SERVING"

Its channel is not health-checked and it has no circuit breaker, so it reaches (and
reports on) a server that is not ready.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import ClassVar

from grpc_health.v1 import health_pb2, health_pb2_grpc

from clients.base import Client


def status_name(status: int) -> str:
    """SERVING, NOT_SERVING, SERVICE_UNKNOWN or UNKNOWN."""
    name: str = health_pb2.HealthCheckResponse.ServingStatus.Name(status)
    return name


class HealthClient(Client):
    """See the module docstring; the arguments are `clients.base.Client`'s."""

    service: ClassVar[str] = "grpc.health.v1.Health"
    idempotent: ClassVar[frozenset[str]] = frozenset({"Check", "List"})
    health_checked: ClassVar[bool] = False
    guarded: ClassVar[bool] = False

    @property
    def _stub(self) -> health_pb2_grpc.HealthStub:
        return health_pb2_grpc.HealthStub(self.channel)

    async def check(self, service: str = "", *, timeout: float = 5.0) -> str:
        """The status name of `service`; raises NotFoundError for an unknown name."""
        request = health_pb2.HealthCheckRequest(service=service)
        response = await self._unary("Check", self._stub.Check, request, timeout)
        return status_name(response.status)

    async def watch(self, service: str = "") -> AsyncIterator[str]:
        """Yields the status name now and after every change."""
        request = health_pb2.HealthCheckRequest(service=service)
        async with contextlib.aclosing(self._stream("Watch", self._stub.Watch, request)) as stream:
            async for response in stream:
                yield status_name(response.status)

    async def list(self, *, timeout: float = 5.0) -> dict[str, str]:
        """Every name the server knows, with its status name."""
        request = health_pb2.HealthListRequest()
        response = await self._unary("List", self._stub.List, request, timeout)
        return {name: status_name(r.status) for name, r in response.statuses.items()}
