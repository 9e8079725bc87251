"""Targets, service configs and channel options built from configuration."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.calls.channel import Resilience, channel_options, channel_target, service_config
from core.config import ChannelSettings, Settings
from core.errors import ConfigError


@pytest.mark.parametrize(
    ("address", "target"),
    [
        ("127.0.0.1:50051", "127.0.0.1:50051"),
        ("projects:50051", "projects:50051"),
        (" dns:///projects.internal:50051 ", "dns:///projects.internal:50051"),
        ("10.0.0.1:1, 10.0.0.2:2", "ipv4:10.0.0.1:1,10.0.0.2:2"),
        ("[::1]:1,[::2]:2", "ipv6:[::1]:1,[::2]:2"),
    ],
)
def test_an_address_becomes_a_grpc_target(address: str, target: str) -> None:
    assert channel_target(address) == target


def test_a_list_with_a_hostname_is_refused_pointing_to_dns() -> None:
    with pytest.raises(ConfigError, match=r"use dns:///events:2"):
        channel_target("10.0.0.1:1,events:2")


@pytest.mark.parametrize("address", ["10.0.0.1:1,10.0.0.2", "10.0.0.1:1,[::1]:2", ","])
def test_a_malformed_list_is_refused(address: str) -> None:
    with pytest.raises(ConfigError):
        channel_target(address)


def test_only_idempotent_methods_get_a_retry_policy() -> None:
    resilience = Resilience(attempts=4, initial_backoff=0.05, max_backoff=0.5)

    config = service_config(["pkg.Service/Get", "pkg.Service/Put"], resilience)

    assert config["loadBalancingConfig"] == [{"round_robin": {}}]
    assert config["healthCheckConfig"] == {"serviceName": "readiness"}
    [method] = config["methodConfig"]
    assert method["name"] == [
        {"service": "pkg.Service", "method": "Get"},
        {"service": "pkg.Service", "method": "Put"},
    ]
    assert method["retryPolicy"] == {
        "maxAttempts": 4,
        "initialBackoff": "0.050s",
        "maxBackoff": "0.500s",
        "backoffMultiplier": 2,
        "retryableStatusCodes": ["UNAVAILABLE"],
    }


def test_one_attempt_or_no_idempotent_method_means_no_retry_policy() -> None:
    assert "methodConfig" not in service_config(["p.S/Get"], Resilience(attempts=1))
    assert "methodConfig" not in service_config([], Resilience())
    assert "healthCheckConfig" not in service_config([], Resilience(), health_checked=False)


@pytest.mark.parametrize(
    "values",
    [
        {"attempts": 0},
        {"attempts": 6},
        {"deadline": 0},
        {"breaker_failures": 0},
        {"ready_wait": -1},
    ],
)
def test_impossible_resilience_is_refused(values: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="must be"):
        Resilience(**values)  # type: ignore[arg-type]


def test_options_carry_keepalive_sizes_and_the_service_config() -> None:
    settings = ChannelSettings(keepalive=2.0, keepalive_timeout=1.0, max_message_bytes=1024)

    options = dict(channel_options(settings, {"loadBalancingConfig": []}))

    assert options["grpc.keepalive_time_ms"] == 2000
    assert options["grpc.keepalive_timeout_ms"] == 1000
    assert options["grpc.keepalive_permit_without_calls"] == 1
    assert options["grpc.max_receive_message_length"] == 1024
    assert json.loads(str(options["grpc.service_config"])) == {"loadBalancingConfig": []}


def test_tls_and_keepalive_settings_are_read_from_the_environment(tmp_path: Path) -> None:
    for name in ("ca.pem", "cert.pem", "key.pem"):
        (tmp_path / name).write_text("x")
    settings = Settings.from_env(
        {
            "MESH_KEEPALIVE_SECONDS": "15",
            "MESH_TLS_CA_FILE": str(tmp_path / "ca.pem"),
            "MESH_TLS_CERT_FILE": str(tmp_path / "cert.pem"),
            "MESH_TLS_KEY_FILE": str(tmp_path / "key.pem"),
            "MESH_TLS_CLIENT_AUTH": "true",
        }
    )
    channel = settings.channel()
    assert (channel.keepalive, channel.tls.client_auth) == (15.0, True)
    assert channel.tls.serves_tls
    assert channel.tls.dials_tls


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"MESH_TLS_CA_FILE": "/no/such.pem"}, "MESH_TLS_CA_FILE"),
        ({"MESH_TLS_CERT_FILE": __file__}, "MESH_TLS_KEY_FILE"),
        ({"MESH_TLS_CLIENT_AUTH": "true"}, "MESH_TLS_CLIENT_AUTH"),
        ({"MESH_KEEPALIVE_SECONDS": "0"}, "MESH_KEEPALIVE_SECONDS"),
    ],
)
def test_bad_tls_or_keepalive_settings_name_the_variable(env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        Settings.from_env(env)
