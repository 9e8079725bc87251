"""Channels from configuration: addresses, load balancing, health, retries, keepalive and TLS.

An address is one of:

- `host:port`: one server (a hostname may resolve to several addresses);
- `10.0.0.1:50051,10.0.0.2:50051`: a fixed list of IP addresses;
- `dns:///events.internal:50051`: every address the name resolves to, re-resolved when
  connections fail.

Every channel balances calls round-robin over the addresses it has and watches each
server's `readiness` through `grpc.health.v1` (client-side health checking, built into
grpcio's core; it needs only the service config below and round_robin, since pick_first
ignores it), so a replica that reports NOT_SERVING gets no calls until it is SERVING
again. A server without the health service counts as healthy.

Retries are gRPC's own (the service config's `retryPolicy`): only for the methods a
client names as idempotent, only on UNAVAILABLE, all within the call's one deadline.
Riding out a restart (no ready server for a second or two) is the typed clients' part,
`Resilience.ready_wait` (see `clients.base`).

Usage::

    config = service_config(["mesh.projects.v1.ProjectService/GetProject"], Resilience())
    channel = open_channel("dns:///projects:50051", ChannelSettings(), config)
    ...
    await channel.close()
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from core.config import ChannelSettings, TlsSettings
from core.errors import ConfigError

READINESS = "readiness"  # the health name clients watch; see core.runtime.server
MAX_ATTEMPTS = 5  # gRPC caps a retry policy's maxAttempts at 5
RECONNECT_BACKOFF_MS = (100, 1000)  # first and longest pause between connection attempts


@dataclass(frozen=True, slots=True)
class Resilience:
    """How a client's calls behave when the server is slow or down.

    Args:
        deadline: Seconds a call may take by default, all its retries included.
        attempts: Tries of an idempotent call that fails with UNAVAILABLE (1 to 5).
        initial_backoff: Seconds before the first retry; each next pause may double,
            up to `max_backoff` (gRPC picks a random pause up to that bound).
        max_backoff: Longest pause between two tries.
        ready_wait: Seconds a call may wait, unsent, for a ready server while the client
            has none (the server restarts, is deployed, is still starting), in all and
            never more than half of the call's deadline; then it is sent and fails
            UNAVAILABLE as it would have at once. An idempotent call that no server took
            (UNAVAILABLE without a server's answer) is tried again once one is ready,
            within `attempts` and the deadline. 0: fail at once, as gRPC does.
        breaker_failures: Consecutive failures that open the target's circuit breaker.
        breaker_reset: Seconds an open breaker fails calls fast before it lets trials in.
        breaker_trials: Calls a half-open breaker lets through at once.
    """

    deadline: float = 10.0
    attempts: int = 3
    initial_backoff: float = 0.1
    max_backoff: float = 1.0
    ready_wait: float = 5.0
    breaker_failures: int = 5
    breaker_reset: float = 5.0
    breaker_trials: int = 1

    def __post_init__(self) -> None:
        if not 1 <= self.attempts <= MAX_ATTEMPTS:
            raise ValueError(f"attempts must be between 1 and {MAX_ATTEMPTS}")
        if min(self.deadline, self.initial_backoff, self.max_backoff, self.breaker_reset) <= 0:
            raise ValueError("deadline, backoffs and breaker_reset must be greater than 0")
        if self.ready_wait < 0:
            raise ValueError("ready_wait must be 0 or more")
        if self.breaker_failures < 1 or self.breaker_trials < 1:
            raise ValueError("breaker_failures and breaker_trials must be 1 or more")


def channel_target(address: str) -> str:
    """The gRPC target for an address (see the module docstring).

    Raises:
        ConfigError: A list holds a hostname, mixes IPv4 and IPv6, or an entry has no port.
    """
    address = address.strip()
    if address.startswith(("dns:", "ipv4:", "ipv6:", "unix:")):
        return address
    parts = [part.strip() for part in address.split(",") if part.strip()]
    if len(parts) == 1:
        return parts[0]
    if not parts:
        raise ConfigError("an address is empty: give HOST:PORT, a list or dns:///NAME:PORT")
    hosts = []
    for part in parts:
        host, sep, port = part.rpartition(":")
        if not sep or not port.isdigit():
            raise ConfigError(f"address {part!r} in list {address!r} is not HOST:PORT")
        try:
            hosts.append((ipaddress.ip_address(host.strip("[]")), port))
        except ValueError:
            raise ConfigError(
                f"address list {address!r} holds the hostname {host!r}: a list takes IP "
                f"addresses only; for a name that resolves to several, use dns:///{part}"
            ) from None
    versions = {ip.version for ip, _ in hosts}
    if versions == {4}:
        return "ipv4:" + ",".join(f"{ip}:{port}" for ip, port in hosts)
    if versions == {6}:
        return "ipv6:" + ",".join(f"[{ip}]:{port}" for ip, port in hosts)
    raise ConfigError(f"address list {address!r} mixes IPv4 and IPv6 addresses")


def service_config(
    idempotent: Iterable[str], resilience: Resilience, *, health_checked: bool = True
) -> dict[str, Any]:
    """The service config of a client's channel.

    Args:
        idempotent: `package.Service/Method` names that may be retried on UNAVAILABLE.
        resilience: Attempts and backoff of those retries.
        health_checked: Skip servers whose `readiness` is not SERVING. Off for clients
            that must reach a server that is not ready (health probes, admin).
    """
    config: dict[str, Any] = {"loadBalancingConfig": [{"round_robin": {}}]}
    if health_checked:
        config["healthCheckConfig"] = {"serviceName": READINESS}
    names = []
    for full in idempotent:
        service, _, method = full.partition("/")
        names.append({"service": service, "method": method})
    if names and resilience.attempts > 1:
        config["methodConfig"] = [
            {
                "name": names,
                "retryPolicy": {
                    "maxAttempts": resilience.attempts,
                    "initialBackoff": f"{resilience.initial_backoff:.3f}s",
                    "maxBackoff": f"{resilience.max_backoff:.3f}s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ]
    return config


def keepalive_timeout_options(timeout: float) -> list[tuple[str, int]]:
    """How long a keepalive ping may go unanswered before the connection is dropped.

    gRPC core ends a silent connection on `ping_timeout_ms` (60 s by default), not on
    `keepalive_timeout_ms` alone: both are set, so a frozen peer (a hung host, a network
    that drops instead of refusing) is found within keepalive + timeout and its streams
    end UNAVAILABLE. Pings continue while no data flows (the default stops after two).
    """
    ms = int(timeout * 1000)
    return [
        ("grpc.keepalive_timeout_ms", ms),
        ("grpc.http2.ping_timeout_ms", ms),
        ("grpc.http2.max_pings_without_data", 0),
    ]


def channel_options(
    settings: ChannelSettings, config: dict[str, Any]
) -> list[tuple[str, str | int]]:
    """The channel arguments for `settings` and a service config."""
    return [
        ("grpc.service_config", json.dumps(config)),
        # Our config, not one a DNS TXT record might carry.
        ("grpc.service_config_disable_resolution", 1),
        ("grpc.enable_retries", 1),
        ("grpc.max_send_message_length", settings.max_message_bytes),
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.keepalive_time_ms", int(settings.keepalive * 1000)),
        *keepalive_timeout_options(settings.keepalive_timeout),
        ("grpc.keepalive_permit_without_calls", 1),
        # round_robin reconnects a lost connection at once and then backs off (by default
        # up to 120 s); calls fail fast meanwhile. Short pauses let a restarted server
        # get calls again within a second, at the cost of a refused connect per second
        # per channel while it is down.
        ("grpc.initial_reconnect_backoff_ms", RECONNECT_BACKOFF_MS[0]),
        ("grpc.max_reconnect_backoff_ms", RECONNECT_BACKOFF_MS[1]),
    ]


def open_channel(
    address: str, settings: ChannelSettings, config: dict[str, Any]
) -> grpc.aio.Channel:
    """A `grpc.aio` channel to `address`, on the running event loop; close it when done."""
    target = channel_target(address)
    options = channel_options(settings, config)
    if settings.tls.dials_tls:
        return grpc.aio.secure_channel(target, channel_credentials(settings.tls), options)
    return grpc.aio.insecure_channel(target, options)


def channel_credentials(tls: TlsSettings) -> grpc.ChannelCredentials:
    """Trusts `ca_file` (or the system roots); presents our certificate when configured."""
    return grpc.ssl_channel_credentials(
        root_certificates=_read(tls.ca_file),
        private_key=_read(tls.key_file),
        certificate_chain=_read(tls.cert_file),
    )


def server_credentials(tls: TlsSettings) -> grpc.ServerCredentials:
    """The server's certificate; asks clients for one signed by `ca_file` if `client_auth`."""
    return grpc.ssl_server_credentials(
        [(Path(tls.key_file).read_bytes(), Path(tls.cert_file).read_bytes())],
        root_certificates=_read(tls.ca_file),
        require_client_auth=tls.client_auth,
    )


def _read(path: str) -> bytes | None:
    return Path(path).read_bytes() if path else None
