"""The standard `grpc.health.v1.Health` service, fed from the container.

Names served:
- `""` and `readiness`: SERVING once the container is RUNNING and no component is
  UNHEALTHY (DEGRADED still serves); NOT_SERVING before, and from the first moment of
  shutdown.
- `liveness`: SERVING while the process is up and not in ERROR, so an outage of a
  dependency never makes Kubernetes restart the pod.
- each hosted gRPC service's full name: like readiness, over the components it needs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from grpc_health.v1 import health, health_pb2

from core.errors import NotFoundError
from core.runtime.boundary import Context
from core.runtime.container import Container
from core.runtime.lifecycle import Status
from core.runtime.monitor import ChangeFeed

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICE_UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
READINESS = "readiness"
LIVENESS = "liveness"


class HealthServicer(health.aio.HealthServicer):  # type: ignore[misc]  # untyped base
    """grpcio-health-checking's aio servicer, changed in four ways:

    1. It starts NOT_SERVING for `""` (the stock one starts SERVING).
    4. Check on an unknown name says which name in its NOT_FOUND error.
    2. It implements the newer `List` RPC, which the stock aio servicer lacks.
    3. `close()` ends open Watch streams after they received NOT_SERVING; the stock
       Watch never returns and would hold the server's grace period.

    It reuses the stock status table (`_server_status`) and setter (`_set`); the
    grpcio family is pinned to one version, and the tests cover this behaviour.
    """

    def __init__(self) -> None:
        super().__init__()
        self._server_status[""] = NOT_SERVING
        self._changes = ChangeFeed()
        self._closing = False

    async def _set(self, service: str, status: int) -> None:
        await super()._set(service, status)
        self._changes.notify()

    async def Check(
        self, request: health_pb2.HealthCheckRequest, context: Context
    ) -> health_pb2.HealthCheckResponse:
        status = self._server_status.get(request.service)
        if status is None:  # the stock servicer aborts NOT_FOUND without saying why
            raise NotFoundError(
                f"no health status for service {request.service!r}",
                reason="HEALTH_SERVICE_NOT_FOUND",
                metadata={"service": request.service},
            )
        return health_pb2.HealthCheckResponse(status=status)

    async def Watch(self, request: health_pb2.HealthCheckRequest, context: Context) -> None:
        last = None
        while True:
            changed = self._changes.waiter()
            status = self._server_status.get(request.service, SERVICE_UNKNOWN)
            if status != last:
                await context.write(health_pb2.HealthCheckResponse(status=status))
                last = status
            if self._closing:
                return
            await changed.wait()

    async def List(
        self, request: health_pb2.HealthListRequest, context: Context
    ) -> health_pb2.HealthListResponse:
        statuses = {
            name: health_pb2.HealthCheckResponse(status=status)
            for name, status in self._server_status.items()
        }
        return health_pb2.HealthListResponse(statuses=statuses)

    async def close(self) -> None:
        """Sets every name NOT_SERVING for good; each Watch stream sends that, then ends."""
        self._closing = True
        await self.enter_graceful_shutdown()
        self._changes.notify()


class HealthPublisher:
    """Keeps a HealthServicer in step with a container's status and health; `on_change`
    runs first at each publication, so what it does is done once a watcher hears of it."""

    def __init__(
        self,
        servicer: HealthServicer,
        container: Container,
        services: Mapping[str, Iterable[str] | None],
        *,
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        self._servicer = servicer
        self._container = container
        self._on_change = on_change
        self._services = {
            name: None if needs is None else tuple(needs) for name, needs in services.items()
        }

    async def publish(self) -> None:
        self._on_change()
        container = self._container
        ready = _serving(container.ready())
        await self._servicer.set("", ready)
        await self._servicer.set(READINESS, ready)
        alive = container.lifecycle.status is not Status.ERROR
        await self._servicer.set(LIVENESS, _serving(alive))
        for name, needs in self._services.items():
            await self._servicer.set(name, _serving(container.ready(needs)))

    async def run(self) -> None:
        """Publishes now and after every change until cancelled."""
        while True:
            changed = self._container.changes.waiter()
            await self.publish()
            await changed.wait()


def _serving(ok: bool) -> int:
    return int(SERVING if ok else NOT_SERVING)
