"""The server runner: one grpc.aio server per process, the container's first component.

Usage::

    container = Container(settings.start_policy)
    container.register(Database(settings.database_url))
    server = GrpcServer.for_container(container, [admin_service(container)], settings)
    exit_code = await serve(container)   # core.runtime.process: until SIGTERM or SIGINT
"""

from __future__ import annotations

import asyncio
import functools
import weakref
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import structlog
from google.protobuf.descriptor import ServiceDescriptor
from grpc_health.v1 import health_pb2_grpc
from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation

from core.calls.channel import keepalive_timeout_options, server_credentials
from core.config import AuthSettings, LimitSettings, Settings, TlsSettings
from core.runtime.boundary import BoundaryServer
from core.runtime.container import Container
from core.runtime.health_service import HealthPublisher, HealthServicer
from core.runtime.lifecycle import Component, FatalStartError, Status
from core.runtime.limits import CallLimits, Readiness
from core.runtime.reflection import enable_reflection
from core.runtime.tasks import BackgroundTask
from core.security.access import access_rules
from core.security.guard import Guard

log = structlog.get_logger()

# The event loops that servers run on, for the tasks gauge; read from the metrics thread,
# where asyncio.all_tasks(loop) is safe (it copies the task set, retrying if it changes).
_LOOPS: weakref.WeakSet[asyncio.AbstractEventLoop] = weakref.WeakSet()


def _count_tasks(options: CallbackOptions) -> list[Observation]:
    loops = [loop for loop in list(_LOOPS) if not loop.is_closed()]
    return [Observation(sum(len(asyncio.all_tasks(loop)) for loop in loops))]


metrics.get_meter("core.runtime.server").create_observable_gauge(
    "mesh.runtime.tasks",
    [_count_tasks],
    unit="{task}",
    description="asyncio tasks alive on the serving event loop; steady growth is a leak.",
)


@dataclass(frozen=True, slots=True)
class Service:
    """One gRPC service a server hosts.

    Args:
        descriptor: The service's descriptor, e.g.
            `admin_pb2.DESCRIPTOR.services_by_name["AdminService"]`.
        servicer: The implementation.
        add_to_server: The generated `add_<Name>Servicer_to_server` function.
        needs: Components whose health decides this service's health status;
            None means all of them.
        closing: Called when the server stops, before it drains: ends the service's
            long-lived streams so the drain does not wait for them.
    """

    descriptor: ServiceDescriptor
    servicer: Any
    # Called with a core.runtime.boundary.BoundaryServer, which has the two methods that
    # generated code uses.
    add_to_server: Callable[[Any, Any], None]
    needs: tuple[str, ...] | None = None
    closing: Callable[[], None] | None = None

    @property
    def name(self) -> str:
        return self.descriptor.full_name


class GrpcServer(Component):
    """Serves the given services plus health and (unless turned off) reflection through the
    error boundary, and health alone on a plaintext probe port when one is given.

    Every method of `services` must declare its access rule in its contract
    (`mesh.access.v1.access`): building the server raises ConfigError naming the methods
    that do not. Unless `auth.mode` is "off", a `Guard` checks every call against them.

    The probe port answers the same `grpc.health.v1.Health` (one HealthServicer, so the
    same statuses) and nothing else: for kubelet gRPC probes, which can neither use TLS
    nor send credentials, when the main port requires them.
    """

    name = "grpc-server"
    faces_callers = True  # the port opens first; calls wait for readiness (see start)

    def __init__(
        self,
        container: Container,
        services: Sequence[Service],
        *,
        address: str,
        grace: float,
        drain_delay: float = 0.0,
        max_message_bytes: int,
        keepalive: float = 30.0,
        keepalive_timeout: float = 10.0,
        tls: TlsSettings | None = None,
        reflection: bool = True,
        probe_address: str = "",
        warn_plaintext: bool = False,
        auth: AuthSettings | None = None,
        limits: LimitSettings | None = None,
    ) -> None:
        self.services = list(services)
        rules = access_rules(s.descriptor for s in self.services)  # deny by default
        auth = auth or AuthSettings()
        self.address = address
        self.grace = grace
        self.drain_delay = drain_delay
        # The drain must never be cut off by the stop bound.
        self.stop_timeout = drain_delay + grace + 5.0
        self._container = container
        self.port = 0
        self.probe_address = probe_address
        self.probe_port = 0
        self.reflection = reflection
        self._warn_plaintext = warn_plaintext
        self.health = HealthServicer()
        # Calls of a service that needs components wait for the container to run them all,
        # and are refused while one of them is UNHEALTHY.
        self._gates = {
            s.name: (s.needs, Readiness(functools.partial(_not_ready, container, s.needs)))
            for s in self.services
            if s.needs != ()
        }
        self._publisher = HealthPublisher(
            self.health,
            container,
            {s.name: s.needs for s in self.services},
            on_change=self._open_gates,
        )
        container.lifecycle.observe(lambda _: self._open_gates())
        limits = limits or LimitSettings()
        self._limits = CallLimits.of(
            max_calls=limits.max_calls,
            max_streams=limits.max_streams,
            default_deadline=limits.default_deadline,
            max_response_bytes=max_message_bytes,
            rate=limits.rate_per_principal,
            burst=limits.rate_burst,
        )
        self._options = [
            ("grpc.so_reuseport", 0),  # a taken port must fail, not be shared
            ("grpc.max_concurrent_streams", limits.streams_per_connection),
            # Soft and hard limit alike: between the two gRPC refuses only some requests.
            ("grpc.max_metadata_size", limits.max_metadata_bytes),
            ("grpc.absolute_max_metadata_size", limits.max_metadata_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes),
            # Clients configured alike ping every `keepalive` seconds, also while idle
            # (core.calls.channel); allowing twice that rate keeps a ping that comes a little
            # early from counting as abuse and closing the connection (too_many_pings).
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_ping_interval_without_data_ms", int(keepalive * 500)),
            # And the server pings its clients as often, to find a vanished one (and end
            # its Watch and Subscribe streams) within keepalive + the ping timeout.
            ("grpc.keepalive_time_ms", int(keepalive * 1000)),
            *keepalive_timeout_options(keepalive_timeout),
        ]
        self._tls = tls or TlsSettings()
        self._guard = (
            None
            if auth.mode == "off"
            else Guard(auth, rules, certificates=self._tls.serves_tls and self._tls.client_auth)
        )
        self._auth_mode = auth.mode
        self._server: grpc.aio.Server | None = None
        self._probe: grpc.aio.Server | None = None
        self._publishing = BackgroundTask("health-publisher")

    @classmethod
    def for_container(
        cls, container: Container, services: Sequence[Service], settings: Settings
    ) -> GrpcServer:
        """Builds the server, registers it last (after every component so far) and returns it."""
        server = cls(
            container,
            services,
            address=settings.address,
            grace=settings.grace_seconds,
            drain_delay=settings.drain_delay,
            max_message_bytes=settings.max_message_bytes,
            keepalive=settings.keepalive,
            keepalive_timeout=settings.keepalive_timeout,
            tls=settings.tls,
            reflection=settings.reflection,
            probe_address=settings.probe_address,
            warn_plaintext=settings.production,
            auth=settings.auth,
            limits=settings.limits,
        )
        container.register(server)
        return server

    @property
    def service_names(self) -> list[str]:
        return [s.name for s in self.services]

    async def start(self) -> None:
        _LOOPS.add(asyncio.get_running_loop())
        server = grpc.aio.server(options=self._options)
        # Every handler passes through the RPC boundary (core.runtime.boundary) and its guard.
        gates = {name: gate for name, (_, gate) in self._gates.items()}
        bounded = BoundaryServer(server, self._guard, self._limits, gates)
        for service in self.services:
            service.add_to_server(service.servicer, bounded)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, bounded)
        if self.reflection:
            enable_reflection(bounded, self.service_names)
        if self._tls.serves_tls:
            self.port = _listen(server, self.address, server_credentials(self._tls))
        else:
            self.port = _listen(server, self.address, None)
        await server.start()
        self._server = server
        try:
            if self.probe_address:
                self._probe = await self._start_probe()
            await self._publisher.publish()
        except BaseException:
            await self._close_servers()  # free the ports, or a retry would find them taken
            raise
        self._publishing.start(self._publisher.run())
        self._log_listening()

    async def _start_probe(self) -> grpc.aio.Server:
        """The plaintext port that serves health alone, from the same HealthServicer."""
        probe = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        health_pb2_grpc.add_HealthServicer_to_server(self.health, BoundaryServer(probe))
        try:
            self.probe_port = _listen(probe, self.probe_address, None)
        except FatalStartError:
            await probe.stop(None)
            raise
        await probe.start()
        return probe

    def _log_listening(self) -> None:
        host = self.address.rpartition(":")[0]
        address = f"{host}:{self.port}"
        probe = ""
        if self._probe is not None:
            probe = f"{self.probe_address.rpartition(':')[0]}:{self.probe_port}"
        log.info(
            "server.listening",
            address=address,
            services=self.service_names,
            tls=self._tls.serves_tls,
            reflection=self.reflection,
            probe_address=probe or None,
            auth=self._auth_mode,
        )
        if self._warn_plaintext and not self._tls.serves_tls:
            log.warning(
                "server.plaintext",
                address=address,
                hint="calls and credentials cross the network unencrypted; set "
                "MESH_TLS_CERT_FILE and MESH_TLS_KEY_FILE unless a proxy or mesh terminates TLS",
            )

    async def _close_servers(self) -> None:
        for server in (self._server, self._probe):
            if server is not None:
                await server.stop(None)
        self._server = self._probe = None

    async def stop(self) -> None:
        """Readiness NOT_SERVING first; new calls still served for the drain delay, while
        load balancers and Kubernetes take the endpoint out; then long-lived streams end
        and the calls in flight get the grace period."""
        await self._publishing.stop()
        await self.health.close()
        if self.drain_delay and self._container.lifecycle.status is Status.STOPPING:
            log.info("server.drain_delay", seconds=self.drain_delay)
            await asyncio.sleep(self.drain_delay)
        for service in self.services:
            if service.closing is not None:
                service.closing()
        if self._server is not None:
            log.info("server.draining", grace_s=self.grace)
            await self._server.stop(self.grace)
            self._server = None
        if self._probe is not None:  # answered NOT_SERVING throughout the drain
            await self._probe.stop(None)
            self._probe = None

    def _open_gates(self) -> None:
        """Opens the gate of each service whose needs serve, from RUNNING through STOPPING."""
        container = self._container
        serving = container.lifecycle.status in (Status.RUNNING, Status.STOPPING)
        for needs, gate in self._gates.values():
            gate.open = serving and container.serving(needs)


def _not_ready(container: Container, needs: Iterable[str] | None) -> str:
    """What a refused call is told: what is not running yet, or which needs are down."""
    if container.lifecycle.status not in (Status.RUNNING, Status.STOPPING):
        return _not_running(container)
    chosen = container.components if needs is None else [container.get(n) for n in needs]
    down = [(c.name, container.monitor.latest(c)) for c in chosen]
    return "; ".join(f"{n} {h.state.value} ({h.reason})" for n, h in down if not h.state.serving)


def _not_running(container: Container) -> str:
    """What a call that comes too early is told: the components not running yet, and why."""
    waiting = [
        f"{c.name} ({c.lifecycle.history[-1].cause})" if c.lifecycle.history else c.name
        for c in container.components
        if c.status is not Status.RUNNING and not c.faces_callers
    ]
    return "waiting for " + ", ".join(waiting) if waiting else "starting"


def _listen(
    server: grpc.aio.Server, address: str, credentials: grpc.ServerCredentials | None
) -> int:
    """Binds `address` (TLS with `credentials`) and returns the port; a clear error if taken."""
    try:
        if credentials is not None:
            return server.add_secure_port(address, credentials)
        return server.add_insecure_port(address)
    except RuntimeError:
        raise FatalStartError(
            f"cannot listen on {address}: the address is already in use or not "
            "available here; choose another HOST:PORT"
        ) from None
