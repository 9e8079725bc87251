"""What `mesh serve` adds to every process: the admin service, which needs no component."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from importlib.metadata import version as package_version

from core.config import Settings
from core.runtime.container import Container
from core.runtime.server import GrpcServer, Service
from core.variables import Override
from mesh.admin.v1 import admin_pb2, admin_pb2_grpc
from servers.admin.servicer import AdminServicer

DESCRIPTOR = admin_pb2.DESCRIPTOR.services_by_name["AdminService"]


def register(container: Container, settings: Settings) -> list[Service]:
    """The admin service of `container`'s process, named by `settings.service_name`.

    The services it lists are those of the container's gRPC server, looked up when a
    summary is asked for (the server is registered after every service).
    """

    def hosted() -> list[str]:
        return container.get(GrpcServer).service_names

    version = package_version("meshkit")
    return [
        admin_service(
            container,
            service=settings.service_name,
            version=version,
            grpc_services=hosted,
            profile=settings.profile,
            overrides=settings.overrides,
        )
    ]


def admin_service(
    container: Container,
    *,
    service: str,
    version: str,
    grpc_services: Callable[[], list[str]],
    profile: str = "",
    overrides: Sequence[Override] = (),
) -> Service:
    """The AdminService for `container`; it needs no component of its own.

    `profile` and `overrides` are the process's configuration as its summary shows it.
    """
    servicer = AdminServicer(
        container, service=service, version=version, grpc_services=grpc_services
    )
    servicer.configured(profile, overrides)
    return Service(
        DESCRIPTOR, servicer, admin_pb2_grpc.add_AdminServiceServicer_to_server, needs=()
    )
