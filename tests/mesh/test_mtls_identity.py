"""Services identified by their client certificates (mutual TLS), with no token at all.

Every process here requires client certificates signed by one test CA and MESH_AUTH=
required. Each service's certificate carries a SPIFFE URI, which becomes its principal
with MESH_AUTH_CERT_SCOPES (admin by default).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from structlog.testing import capture_logs

from clients.admin import AdminClient
from clients.health import HealthClient
from clients.projects import Project, ProjectsClient
from core.calls.channel import channel_credentials
from core.config import AuthSettings, ChannelSettings, Settings, TlsSettings
from core.errors import NotFoundError, PermissionDeniedError, UnavailableError
from core.runtime.server import GrpcServer, Service
from core.security.principal import current_principal
from core.testing.credentials import CertificateAuthority
from core.testing.services import running, serving, settings_for
from mesh.admin.v1 import admin_pb2, admin_pb2_grpc
from tests._services import ADMIN, EVENTS, PROJECTS
from tests.conftest import make_container

CREATED = "mesh.projects.v1.project.created"
MUSIC = Project.PROJECT_TYPE_MUSIC_CLIP
SPIFFE = "spiffe://mesh.test/ns/default/sa/{}"
SECRET = "test-secret-of-at-least-thirty-two-bytes"


@dataclass
class Pki:
    ca: CertificateAuthority
    directory: Path
    ca_file: Path

    def tls(self, name: str, *, serve: bool = True, spiffe: bool = True) -> TlsSettings:
        """The TLS settings of a service `name`: its certificate serves and dials."""
        issued = self.ca.issue(
            self.directory,
            name,
            dns=["localhost"],
            ips=["127.0.0.1"],
            uri=SPIFFE.format(name) if spiffe else "",
        )
        return TlsSettings(
            ca_file=str(self.ca_file),
            cert_file=str(issued.cert),
            key_file=str(issued.key),
            client_auth=serve,
        )


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    ca = CertificateAuthority()
    return Pki(ca, tmp_path, ca.write(tmp_path))


def secured(tmp_path: Path, name: str, tls: TlsSettings, **auth: Any) -> Settings:
    base = settings_for(f"sqlite+aiosqlite:///{tmp_path / name}.db")
    return replace(base, tls=tls, auth=AuthSettings(mode="required", **auth))


async def test_health_and_reflection_answer_without_a_token_when_mtls_and_tokens_are_required(
    pki: Pki, tmp_path: Path
) -> None:
    settings = secured(tmp_path, "p", pki.tls("projects"), jwt_secret=SECRET, cert_scopes=("x",))
    caller = ChannelSettings(tls=pki.tls("probe", serve=False, spiffe=False))
    async with serving(PROJECTS, settings=settings) as projects:
        async with HealthClient(projects.address, channel=caller) as health:
            assert await health.check("mesh.projects.v1.ProjectService") == "SERVING"
            assert await health.check("readiness") == "SERVING"
        credentials = channel_credentials(caller.tls)
        async with grpc.aio.secure_channel(projects.address, credentials) as channel:
            stub = reflection_pb2_grpc.ServerReflectionStub(channel)
            request = reflection_pb2.ServerReflectionRequest(list_services="")
            async for answer in stub.ServerReflectionInfo(iter([request])):
                names = {s.name for s in answer.list_services_response.service}
                break
        assert "mesh.projects.v1.ProjectService" in names
        # The data RPCs are guarded: a certificate with scope "x" may not read projects.
        async with ProjectsClient(projects.address, channel=caller) as client:
            with pytest.raises(PermissionDeniedError):
                await client.get_project("projects/absent")


async def test_a_certificate_is_the_principal_with_the_configured_scopes(
    pki: Pki, tmp_path: Path
) -> None:
    settings = secured(tmp_path, "p", pki.tls("projects"), cert_scopes=("projects.read",))
    caller = ChannelSettings(tls=pki.tls("reporting", serve=False))
    async with (
        serving(PROJECTS, settings=settings) as projects,
        ProjectsClient(projects.address, channel=caller) as client,
    ):
        with pytest.raises(NotFoundError):  # reads pass the guard
            await client.get_project("projects/absent")
        with capture_logs() as logs, pytest.raises(PermissionDeniedError) as denied:
            await client.create_project(
                Project(display_name="Demo", project_type=MUSIC, owner="users/a")
            )
    assert denied.value.reason == "MISSING_SCOPE"
    assert [e["subject"] for e in logs if e["event"] == "auth.denied"] == [
        SPIFFE.format("reporting")
    ]


async def test_without_a_client_certificate_a_call_does_not_connect(
    pki: Pki, tmp_path: Path
) -> None:
    settings = secured(tmp_path, "p", pki.tls("projects"))
    trusting_only = ChannelSettings(tls=TlsSettings(ca_file=str(pki.ca_file)))
    async with (
        serving(PROJECTS, settings=settings) as projects,
        ProjectsClient(projects.address, channel=trusting_only, attempts=1) as client,
    ):
        with pytest.raises(UnavailableError):
            await client.get_project("projects/absent", timeout=5)


class Whoami(admin_pb2_grpc.AdminServiceServicer):
    """Answers Ping with the principal the handler sees."""

    async def Ping(self, request: admin_pb2.PingRequest, context: Any) -> admin_pb2.PingResponse:
        principal = current_principal()
        return admin_pb2.PingResponse(message=f"{principal.subject} {principal.method}")


async def test_the_handler_sees_the_certificate_principal(pki: Pki, tmp_path: Path) -> None:
    container = make_container()
    service = Service(
        admin_pb2.DESCRIPTOR.services_by_name["AdminService"],
        Whoami(),
        admin_pb2_grpc.add_AdminServiceServicer_to_server,
    )
    tls = pki.tls("server")
    settings = Settings(address="127.0.0.1:0", tls=tls, auth=AuthSettings(mode="required"))
    server = GrpcServer.for_container(container, [service], settings)
    async with running(container, server):
        for name, spiffe, expected in (
            ("alpha", True, SPIFFE.format("alpha")),
            ("beta", False, "CN=beta"),
        ):
            caller = ChannelSettings(tls=pki.tls(name, serve=False, spiffe=spiffe))
            async with AdminClient(f"127.0.0.1:{server.port}", channel=caller) as admin:
                assert (await admin.ping("")).message == f"{expected} certificate"


async def test_projects_publish_to_events_with_their_certificate_alone(
    pki: Pki, tmp_path: Path
) -> None:
    events_settings = secured(tmp_path, "e", pki.tls("events"))
    async with serving(ADMIN, EVENTS, settings=events_settings) as events:
        projects_settings = secured(tmp_path, "p", pki.tls("projects"))
        projects_settings = replace(
            projects_settings,
            events=replace(projects_settings.events, address=events.address),
        )
        assert not projects_settings.token
        assert not projects_settings.token_file
        caller = ChannelSettings(tls=pki.tls("operator", serve=False))
        async with (
            serving(PROJECTS, settings=projects_settings) as projects,
            ProjectsClient(projects.address, channel=caller) as client,
        ):
            created = await client.create_project(
                Project(display_name="Demo", project_type=MUSIC, owner="users/a")
            )
            # The outbox relay published it to the events process over mutual TLS.
            event = await events.wait_for_event(CREATED, subject=created.name, timeout=20)
    assert event.subject == created.name
    # The relay's certificate (scopes `admin` by default) passes on who caused the event.
    assert event.attributes == {"owner": "users/a", "principal": SPIFFE.format("operator")}
