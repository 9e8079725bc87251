"""What every process hosts beside its own services: the admin service."""

from __future__ import annotations

from collections.abc import Callable

from core.runtime.container import Container
from core.runtime.server import Service
from mesh.admin.v1 import admin_pb2, admin_pb2_grpc
from servers.admin.servicer import AdminServicer

DESCRIPTOR = admin_pb2.DESCRIPTOR.services_by_name["AdminService"]


def admin_service(
    container: Container, *, service: str, version: str, grpc_services: Callable[[], list[str]]
) -> Service:
    """The AdminService for `container`; it needs no component of its own."""
    servicer = AdminServicer(
        container, service=service, version=version, grpc_services=grpc_services
    )
    return Service(
        DESCRIPTOR, servicer, admin_pb2_grpc.add_AdminServiceServicer_to_server, needs=()
    )
