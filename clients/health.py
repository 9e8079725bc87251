"""Typed client for the standard `grpc.health.v1.Health` service.

Usage::

    async with HealthClient("127.0.0.1:50051") as health:
        serving = await health.check("readiness") == "SERVING"
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from grpc_health.v1 import health_pb2, health_pb2_grpc

from clients._private import Client, call, translated


def status_name(status: int) -> str:
    """SERVING, NOT_SERVING, SERVICE_UNKNOWN or UNKNOWN."""
    name: str = health_pb2.HealthCheckResponse.ServingStatus.Name(status)
    return name


class HealthClient(Client):
    @property
    def _stub(self) -> health_pb2_grpc.HealthStub:
        return health_pb2_grpc.HealthStub(self.channel)

    async def check(self, service: str = "", *, timeout: float = 5.0) -> str:
        """The status name of `service`; raises NotFoundError for an unknown name."""
        request = health_pb2.HealthCheckRequest(service=service)
        response = await call(lambda: self._stub.Check(request, timeout=timeout))
        return status_name(response.status)

    async def watch(self, service: str = "") -> AsyncIterator[str]:
        """Yields the status name now and after every change."""
        request = health_pb2.HealthCheckRequest(service=service)
        async with translated():
            async for response in self._stub.Watch(request):
                yield status_name(response.status)

    async def list(self, *, timeout: float = 5.0) -> dict[str, str]:
        """Every name the server knows, with its status name."""
        response = await call(
            lambda: self._stub.List(health_pb2.HealthListRequest(), timeout=timeout)
        )
        return {name: status_name(r.status) for name, r in response.statuses.items()}
