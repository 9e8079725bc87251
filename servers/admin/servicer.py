"""AdminService: protobuf <-> the container's summary, the call statistics and breakers,
the clearing of the process's cache, and the audit log."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime

from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from core import telemetry
from core.errors import FailedPreconditionError, FieldViolation, InvalidArgumentError
from core.resources.cache import Cache
from core.runtime.boundary import Context
from core.runtime.container import ComponentSummary, Container, ContainerSummary
from core.runtime.health import Health, HealthState
from core.runtime.lifecycle import Status, Transition
from core.variables import Override
from mesh.admin.v1 import admin_pb2, admin_pb2_grpc
from servers.admin.audit import AuditRecords
from servers.admin.metrics import breakers, method_stats

MAX_PING_DELAY = 60.0
_ENDED = (Status.STOPPING, Status.STOPPED, Status.ERROR)


class AdminServicer(admin_pb2_grpc.AdminServiceServicer):
    def __init__(
        self,
        container: Container,
        *,
        service: str,
        version: str,
        grpc_services: Callable[[], list[str]],
    ) -> None:
        self._container = container
        self._service = service
        self._version = version
        self._grpc_services = grpc_services
        self._configuration = admin_pb2.ServiceSummary()
        self._audit = AuditRecords(container)

    def configured(self, profile: str, overrides: Sequence[Override]) -> None:
        """Sets the profile and overrides every summary shows; secrets' values stay out."""
        self._configuration = admin_pb2.ServiceSummary(
            profile=profile,
            overrides=[
                admin_pb2.SettingOverride(
                    name=o.name, value="" if o.secret else o.value, secret=o.secret
                )
                for o in overrides
            ],
        )

    async def GetServiceSummary(
        self, request: admin_pb2.GetServiceSummaryRequest, context: Context
    ) -> admin_pb2.GetServiceSummaryResponse:
        return admin_pb2.GetServiceSummaryResponse(summary=self._summary())

    async def WatchServiceStatus(
        self, request: admin_pb2.WatchServiceStatusRequest, context: Context
    ) -> AsyncIterator[admin_pb2.WatchServiceStatusResponse]:
        # Ends once the process stops, so an open watch never holds the shutdown grace.
        changes = self._container.changes
        while True:
            changed = changes.waiter()
            yield admin_pb2.WatchServiceStatusResponse(summary=self._summary())
            if self._container.lifecycle.status in _ENDED:
                return
            await changed.wait()

    async def Ping(
        self, request: admin_pb2.PingRequest, context: Context
    ) -> admin_pb2.PingResponse:
        # Not ToTimedelta(): it overflows (INTERNAL) on a Duration of billions of years.
        delay = request.delay.seconds + request.delay.nanos / 1e9
        if not 0 <= delay <= MAX_PING_DELAY:
            raise InvalidArgumentError(
                "delay must be between 0 and 60 seconds",
                violations=[FieldViolation("delay", f"{delay:g}s is outside 0..60s")],
            )
        await asyncio.sleep(delay)
        now = Timestamp()
        now.GetCurrentTime()
        return admin_pb2.PingResponse(message=request.message, server_time=now)

    async def ClearCache(
        self, request: admin_pb2.ClearCacheRequest, context: Context
    ) -> admin_pb2.ClearCacheResponse:
        cleared = await self._cache(request.resource).clear(request.resource)
        return admin_pb2.ClearCacheResponse(
            notified_instances=cleared.notified, confirmed_instances=cleared.confirmed
        )

    def _cache(self, resource: str) -> Cache:
        """This process's cache, if it caches `resource` (any resource when empty)."""
        try:
            cache = self._container.get(Cache)
        except LookupError:
            raise FailedPreconditionError(
                "this process has no cache; ask a process that serves a cached resource",
                reason="NO_CACHE",
            ) from None
        if resource and resource not in cache.resources:
            known = ", ".join(sorted(cache.resources)) or "none"
            raise InvalidArgumentError(
                f"this process caches no resource {resource!r} (it caches: {known})",
                reason="UNKNOWN_RESOURCE",
                violations=[FieldViolation("resource", f"not one of: {known}")],
                metadata={"resource": resource},
            )
        return cache

    async def ListAuditRecords(
        self, request: admin_pb2.ListAuditRecordsRequest, context: Context
    ) -> admin_pb2.ListAuditRecordsResponse:
        return await self._audit.list(request)

    def _summary(self) -> admin_pb2.ServiceSummary:
        summary = summary_to_proto(
            self._container.summary(), self._service, self._version, self._grpc_services()
        )
        metrics = telemetry.collect()  # None when metrics are off: then no methods at all
        summary.metrics_enabled = metrics is not None
        summary.methods.extend(method_stats(metrics))
        summary.circuit_breakers.extend(breakers())
        summary.MergeFrom(self._configuration)
        return summary


def summary_to_proto(
    summary: ContainerSummary, service: str, version: str, grpc_services: list[str]
) -> admin_pb2.ServiceSummary:
    return admin_pb2.ServiceSummary(
        service=service,
        version=version,
        status=_STATUS[summary.status],
        health=_HEALTH[summary.health.state],
        overall=_health(summary.health),
        health_score=summary.score,
        uptime=_duration(summary.uptime),
        components=[_component(c) for c in summary.components],
        total_components=len(summary.components),
        healthy_components=summary.healthy_components,
        grpc_services=grpc_services,
        transitions=[_transition(t) for t in summary.transitions],
        health_history=[_health(h) for h in summary.health_history],
    )


def _component(c: ComponentSummary) -> admin_pb2.ComponentSummary:
    return admin_pb2.ComponentSummary(
        name=c.name,
        version=c.version,
        status=_STATUS[c.status],
        health=_health(c.health),
        uptime=_duration(c.uptime),
        dependencies=c.depends_on,
        transitions=[_transition(t) for t in c.transitions],
        health_history=[_health(h) for h in c.health_history],
        groups=c.groups,
    )


def _health(h: Health) -> admin_pb2.HealthReport:
    return admin_pb2.HealthReport(
        state=_HEALTH[h.state], reason=h.reason, details=h.details, check_time=_time(h.checked_at)
    )


def _transition(t: Transition) -> admin_pb2.StatusTransition:
    return admin_pb2.StatusTransition(
        old_status=_STATUS[t.old], new_status=_STATUS[t.new], cause=t.cause, time=_time(t.at)
    )


def _duration(seconds: float) -> Duration:
    d = Duration()
    d.FromNanoseconds(int(seconds * 1e9))
    return d


def _time(at: datetime) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(at.astimezone(UTC))
    return ts


_STATUS = {s: admin_pb2.ComponentStatus.Value(f"COMPONENT_STATUS_{s.value}") for s in Status}
_HEALTH = {h: admin_pb2.HealthState.Value(f"HEALTH_STATE_{h.value}") for h in HealthState}
