"""Server reflection, v1 and v1alpha, as grpcurl and buf curl use it."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import descriptor_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from tests.conftest import Running

EXPECTED = {
    "mesh.admin.v1.AdminService",
    "grpc.health.v1.Health",
    "grpc.reflection.v1alpha.ServerReflection",
    "grpc.reflection.v1.ServerReflection",
}


async def _ask(
    mesh: Running, request: reflection_pb2.ServerReflectionRequest, version: str
) -> reflection_pb2.ServerReflectionResponse:
    async with grpc.aio.insecure_channel(mesh.address) as channel:
        if version == "v1alpha":
            stub = reflection_pb2_grpc.ServerReflectionStub(channel)
            call = stub.ServerReflectionInfo(iter([request]))
        else:  # v1 has the same messages on the wire under another service name
            call = channel.stream_stream(
                "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
                request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
                response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
            )(iter([request]))
        responses = [r async for r in call]
    return responses[0]


@pytest.mark.parametrize("version", ["v1", "v1alpha"])
async def test_reflection_lists_every_service(mesh: Running, version: str) -> None:
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    response = await _ask(mesh, request, version)
    names = {s.name for s in response.list_services_response.service}
    assert names == EXPECTED


@pytest.mark.parametrize("symbol", sorted(EXPECTED))
async def test_reflection_describes_every_listed_service(mesh: Running, symbol: str) -> None:
    request = reflection_pb2.ServerReflectionRequest(file_containing_symbol=symbol)
    response = await _ask(mesh, request, "v1")
    files = [
        descriptor_pb2.FileDescriptorProto.FromString(raw)
        for raw in response.file_descriptor_response.file_descriptor_proto
    ]
    services = {f"{f.package}.{s.name}" for f in files for s in f.service}
    assert symbol in services
