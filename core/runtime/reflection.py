"""Server reflection under both names, so grpcurl and `buf curl` need no proto files.

grpcio-reflection only ships `grpc.reflection.v1alpha`. The `v1` service is the same
contract under a new package name with identical messages on the wire, so we register
a renamed copy of the v1alpha descriptor and serve v1 with the same servicer.
"""

from __future__ import annotations

from collections.abc import Iterable

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_health.v1 import health
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

from core.runtime.boundary import BoundaryServer

V1_SERVICE = "grpc.reflection.v1.ServerReflection"
_V1ALPHA = "grpc.reflection.v1alpha"
_V1 = "grpc.reflection.v1"


def enable_reflection(server: BoundaryServer, service_names: Iterable[str]) -> None:
    """Adds reflection v1 and v1alpha listing `service_names`, health and reflection itself."""
    _register_v1_descriptor()
    names = [*service_names, health.SERVICE_NAME, reflection.SERVICE_NAME, V1_SERVICE]
    servicer = reflection.aio.ReflectionServicer(names)
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, server)
    v1_handler = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(V1_SERVICE, {"ServerReflectionInfo": v1_handler}),)
    )


def _register_v1_descriptor() -> None:
    """Adds `grpc/reflection/v1/reflection.proto` to the default pool, once."""
    pool = descriptor_pool.Default()
    try:
        pool.FindServiceByName(V1_SERVICE)
        return
    except KeyError:
        pass
    proto = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(proto)
    proto.name = "grpc/reflection/v1/reflection.proto"
    proto.package = _V1
    proto.options.Clear()

    def rename(type_name: str) -> str:
        return type_name.replace(f".{_V1ALPHA}.", f".{_V1}.")

    for message in proto.message_type:
        for field in message.field:
            if field.type_name:
                field.type_name = rename(field.type_name)
    for service in proto.service:
        for method in service.method:
            method.input_type = rename(method.input_type)
            method.output_type = rename(method.output_type)
    pool.Add(proto)
