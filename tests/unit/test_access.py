"""Access rules from the contracts, the certificate principal, auth settings and the
client's token source."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.descriptor import ServiceDescriptor

from core.calls.tokens import BearerToken
from core.config import AuthSettings, Settings
from core.errors import ConfigError
from core.runtime.container import Container
from core.runtime.server import GrpcServer, Service
from core.security.access import UNDECLARED, AccessRule, access_rules, is_exempt
from core.security.guard import certificate_principal
from core.security.principal import ADMIN_SCOPE, Principal
from mesh.access.v1 import access_pb2
from mesh.admin.v1 import admin_pb2
from mesh.events.v1 import events_pb2
from mesh.projects.v1 import projects_pb2

OURS = [
    projects_pb2.DESCRIPTOR.services_by_name["ProjectService"],
    events_pb2.DESCRIPTOR.services_by_name["EventService"],
    admin_pb2.DESCRIPTOR.services_by_name["AdminService"],
]


def _service(package: str, declared: dict[str, list[str] | None]) -> ServiceDescriptor:
    """A service added to the default pool whose methods declare `declared` scopes."""
    file = descriptor_pb2.FileDescriptorProto(
        name=f"{package.replace('.', '/')}/test.proto", package=package, syntax="proto3"
    )
    file.dependency.append("mesh/access/v1/access.proto")
    file.message_type.add(name="Empty")
    service = file.service.add(name="TestService")
    for name, scopes in declared.items():
        method = service.method.add(
            name=name, input_type=f".{package}.Empty", output_type=f".{package}.Empty"
        )
        if scopes is not None:
            method.options.Extensions[access_pb2.access].scopes.extend(scopes)
    pool = descriptor_pool.Default()
    pool.Add(file)
    return pool.FindServiceByName(f"{package}.TestService")


def test_every_rpc_of_our_services_declares_its_access() -> None:
    rules = access_rules(OURS)
    assert len(rules) == sum(len(s.methods) for s in OURS)
    assert rules["/mesh.projects.v1.ProjectService/GetProject"] == AccessRule(
        scopes=("projects.read",)
    )
    assert rules["/mesh.events.v1.EventService/Publish"].scopes == ("events.publish",)


def test_a_server_refuses_to_start_while_a_method_declares_no_access() -> None:
    descriptor = _service("test.undeclared.v1", {"Fine": ["x.read"], "Open": None, "Bare": []})
    service = Service(descriptor, object(), lambda servicer, server: None)

    with pytest.raises(ConfigError) as refused:
        GrpcServer.for_container(Container(), [service], Settings(address="127.0.0.1:0"))

    message = str(refused.value)
    assert "test.undeclared.v1.TestService.Open" in message
    assert "test.undeclared.v1.TestService.Bare" in message
    assert "Fine" not in message


def test_health_and_reflection_are_exempt_and_unknown_methods_are_undeclared() -> None:
    assert is_exempt("/grpc.health.v1.Health/Check")
    assert is_exempt("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo")
    assert not is_exempt("/mesh.projects.v1.ProjectService/GetProject")
    assert not Principal("x", frozenset({"projects.read"})).holds(UNDECLARED.scopes[0])
    assert Principal("root", frozenset({ADMIN_SCOPE})).holds(UNDECLARED.scopes[0])


@pytest.mark.parametrize(
    ("context", "subject"),
    [
        (
            {
                "peer_spiffe_id": [b"spiffe://m/sa/a"],
                "peer_uri": [b"spiffe://m/sa/a"],
                "x509_subject": [b"CN=a"],
            },
            "spiffe://m/sa/a",
        ),
        ({"peer_uri": [b"urn:svc:b"], "x509_subject": [b"CN=b"]}, "urn:svc:b"),
        ({"x509_subject": [b"CN=c,O=Mesh"], "x509_common_name": [b"c"]}, "CN=c,O=Mesh"),
    ],
)
def test_a_certificate_principal_is_its_spiffe_id_uri_or_subject(
    context: dict[str, Any], subject: str
) -> None:
    principal = certificate_principal(context, frozenset({"admin"}))
    assert principal == Principal(subject, frozenset({"admin"}), "certificate")


def test_no_certificate_is_no_principal() -> None:
    assert certificate_principal({"transport_security_type": [b"ssl"]}, frozenset()) is None


def test_auth_settings_are_read_and_checked() -> None:
    secret = "s" * 32
    settings = Settings.from_env(
        {
            "MESH_AUTH": "required",
            "MESH_AUTH_JWT_SECRET": secret,
            "MESH_AUTH_CERT_SCOPES": "projects.read, events.publish",
        }
    )
    assert settings.auth.cert_scopes == ("projects.read", "events.publish")
    assert secret not in repr(settings)
    assert Settings.from_env({}).auth.cert_scopes == ("admin",)
    with pytest.raises(ConfigError, match="MESH_AUTH=required needs"):
        Settings.from_env({"MESH_AUTH": "required"}).check_serving()
    with pytest.raises(ConfigError, match="at least 32 bytes"):
        Settings.from_env({"MESH_AUTH_JWT_SECRET": "short"})
    with pytest.raises(ConfigError, match="MESH_AUTH_JWKS_URL"):
        Settings.from_env({"MESH_AUTH_JWKS_URL": "file:///etc/keys"})


def test_the_token_file_is_read_again_when_it_changes(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("first\n")
    token = BearerToken(token_file=str(path))
    assert token.metadata() == (("authorization", "Bearer first"),)
    path.write_text("second\n")
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))  # a later mtime
    assert token.metadata() == (("authorization", "Bearer second"),)
    path.unlink()
    assert token.metadata() == (("authorization", "Bearer second"),)  # keeps the last one


def test_a_token_wins_over_a_token_file_and_none_sends_nothing(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("from-file")
    assert BearerToken("direct", str(path)).metadata() == (("authorization", "Bearer direct"),)
    assert BearerToken().metadata() == ()


def test_required_auth_without_a_way_to_identify_callers_is_refused() -> None:
    service = Service(OURS[0], object(), lambda servicer, server: None)
    settings = Settings(address="127.0.0.1:0", auth=AuthSettings(mode="required"))
    with pytest.raises(ConfigError, match="MESH_AUTH=required needs"):
        GrpcServer.for_container(Container(), [service], settings)
