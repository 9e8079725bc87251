"""Settings read once from `MESH_*` environment variables and validated at start.

Usage::

    settings = Settings.from_env()          # in __main__ only
    container = Container(settings.start_policy)
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from core.errors import ConfigError


def sqlite_url(data_dir: Path) -> str:
    """The embedded default: one SQLite file in the data folder."""
    return f"sqlite+aiosqlite:///{(data_dir / 'mesh.db').resolve()}"


T = TypeVar("T")

DEFAULT_ADDRESS = "127.0.0.1:50051"


@dataclass(frozen=True, slots=True)
class StartPolicy:
    """How the container retries and bounds component starts and stops."""

    attempts: int = 3
    base_delay: float = 0.5
    max_delay: float = 10.0
    start_timeout: float = 30.0
    stop_timeout: float = 10.0


@dataclass(frozen=True, slots=True)
class EventSettings:
    """The event system: which backend, its limits and how consumer groups deliver."""

    backend: str = "auto"  # auto: Redis Streams when MESH_REDIS_URL is set, else SQL
    address: str = ""  # the events service, when it runs in another process
    max_batch: int = 500
    max_event_bytes: int = 256 * 1024
    visibility: float = 30.0
    max_attempts: int = 5
    retention: int = 1_000_000  # events kept in the Redis stream

    def uses_redis(self, redis_url: str) -> bool:
        return self.backend == "redis" or (self.backend == "auto" and bool(redis_url))


@dataclass(frozen=True, slots=True)
class TelemetrySettings:
    """Traces and metrics. Tracing is off unless an exporter is chosen; metrics are on.

    The OTLP exporter reads its endpoint and headers from the standard
    `OTEL_EXPORTER_OTLP_*` variables itself (default http://localhost:4317).
    """

    traces_exporter: str = "none"  # none, console or otlp
    sample_ratio: float = 1.0  # of new traces; a sampled parent is always followed
    metrics: bool = True
    metrics_address: str = ""  # HOST:PORT to serve Prometheus text on; empty: not served

    @property
    def tracing(self) -> bool:
        return self.traces_exporter != "none"


@dataclass(frozen=True, slots=True)
class TlsSettings:
    """TLS for the server and for the channels this process opens; off when all are empty.

    The server uses TLS when `cert_file` and `key_file` are set, and then asks clients for
    a certificate signed by `ca_file` when `client_auth` is set. Channels use TLS when
    `ca_file` or `cert_file` is set: they trust `ca_file` (the system roots when empty) and
    present `cert_file`/`key_file` as their own certificate when both are set (mutual TLS).
    """

    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    client_auth: bool = False

    @property
    def serves_tls(self) -> bool:
        return bool(self.cert_file and self.key_file)

    @property
    def dials_tls(self) -> bool:
        return bool(self.ca_file or self.cert_file)


@dataclass(frozen=True, slots=True)
class AuthSettings:
    """How the server identifies callers (core.security). Tokens are JWTs in the
    `authorization: Bearer` metadata; with `TlsSettings.client_auth` a client certificate
    identifies its service as well.

    `mode`: "required" refuses calls without valid credentials; "optional" checks
    credentials that come and runs calls without any as the unauthenticated principal;
    "off" checks nothing.
    """

    mode: str = "optional"
    jwt_secret: str = field(default="", repr=False)  # HS256, for development
    jwt_public_key_file: str = ""  # PEM of an RS256 or ES256 key
    jwks_url: str = ""  # an OpenID Connect provider's keys, fetched and refreshed
    issuer: str = ""
    audience: str = ""
    leeway: float = 30.0  # seconds of clock skew allowed on exp and nbf

    @property
    def verifies_tokens(self) -> bool:
        return bool(self.jwt_secret or self.jwt_public_key_file or self.jwks_url)


@dataclass(frozen=True, slots=True)
class ChannelSettings:
    """How a client's channel connects: keepalive, message size limit and TLS.

    The server permits a keepalive ping every `keepalive / 2` seconds (see core.runtime.server),
    so clients and servers configured alike never see a `too_many_pings` GOAWAY.
    """

    keepalive: float = 30.0  # seconds between pings on a connection without traffic
    keepalive_timeout: float = 10.0  # seconds to wait for a ping's answer before reconnecting
    max_message_bytes: int = 4 * 1024 * 1024
    tls: TlsSettings = field(default_factory=lambda: TlsSettings())
    # The bearer token clients send: `token`, or the file `token_file`, re-read when it changes.
    token: str = field(default="", repr=False)
    token_file: str = ""


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything a meshkit process is configured with. Secrets stay out of `repr`."""

    service_name: str = "mesh"
    address: str = DEFAULT_ADDRESS
    data_dir: Path = Path("var")
    grace_seconds: float = 10.0
    max_message_bytes: int = 4 * 1024 * 1024
    log_format: str = "auto"
    log_level: str = "info"
    health_interval: float = 5.0
    health_timeout: float = 2.0
    start_policy: StartPolicy = field(default_factory=StartPolicy)
    # URLs may carry passwords: kept out of repr; log them through core.data.database.redacted.
    database_url: str = field(default="", repr=False)
    redis_url: str = field(default="", repr=False)
    migrate_on_start: bool | None = None
    database_pool_size: int = 20
    purge_interval: float = 60.0
    # Days an audit record of a resource write is kept before the purger deletes it.
    audit_retention_days: float = 365.0
    # Separates meshes that share one Redis: keys and channels start with it.
    cache_namespace: str = "mesh"
    events: EventSettings = field(default_factory=lambda: EventSettings())
    telemetry: TelemetrySettings = field(default_factory=lambda: TelemetrySettings())
    keepalive: float = 30.0
    keepalive_timeout: float = 10.0
    tls: TlsSettings = field(default_factory=lambda: TlsSettings())
    auth: AuthSettings = field(default_factory=lambda: AuthSettings())
    token: str = field(default="", repr=False)
    token_file: str = ""

    def channel(self) -> ChannelSettings:
        """The settings of the channels this process opens to other services."""
        return ChannelSettings(
            keepalive=self.keepalive,
            keepalive_timeout=self.keepalive_timeout,
            max_message_bytes=self.max_message_bytes,
            tls=self.tls,
            token=self.token,
            token_file=self.token_file,
        )

    def database(self) -> str:
        """MESH_DATABASE_URL, or the embedded SQLite file under the data folder."""
        return self.database_url or sqlite_url(self.data_dir)

    def migrates_on_start(self) -> bool:
        """The embedded default upgrades itself; a shared database does when asked to."""
        if self.migrate_on_start is not None:
            return self.migrate_on_start
        return self.database().startswith("sqlite")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Reads and validates every `MESH_*` variable; raises ConfigError naming the bad one."""
        env = os.environ if env is None else env
        reader = _Reader(env)
        settings = cls(
            service_name=reader.get("MESH_SERVICE_NAME", str, "mesh"),
            address=reader.get("MESH_ADDRESS", _address, DEFAULT_ADDRESS),
            data_dir=Path(reader.get("MESH_DATA_DIR", str, "var")),
            grace_seconds=reader.get("MESH_GRACE_SECONDS", _non_negative, 10.0),
            max_message_bytes=reader.get("MESH_MAX_MESSAGE_BYTES", _positive_int, 4 * 1024 * 1024),
            log_format=reader.get("MESH_LOG_FORMAT", _choice("auto", "json", "console"), "auto"),
            log_level=reader.get(
                "MESH_LOG_LEVEL", _choice("debug", "info", "warning", "error"), "info"
            ),
            health_interval=reader.get("MESH_HEALTH_INTERVAL_SECONDS", _positive, 5.0),
            health_timeout=reader.get("MESH_HEALTH_TIMEOUT_SECONDS", _positive, 2.0),
            database_url=reader.get("MESH_DATABASE_URL", _database_url, ""),
            redis_url=reader.get("MESH_REDIS_URL", _redis_url, ""),
            migrate_on_start=reader.get("MESH_MIGRATE_ON_START", _bool, None),
            database_pool_size=reader.get("MESH_DATABASE_POOL_SIZE", _positive_int, 20),
            purge_interval=reader.get("MESH_PURGE_INTERVAL_SECONDS", _positive, 60.0),
            audit_retention_days=reader.get("MESH_AUDIT_RETENTION_DAYS", _positive, 365.0),
            cache_namespace=reader.get("MESH_CACHE_NAMESPACE", _namespace, "mesh"),
            events=EventSettings(
                backend=reader.get("MESH_EVENTS_BACKEND", _choice("auto", "sql", "redis"), "auto"),
                address=reader.get("MESH_EVENTS_ADDRESS", _address, ""),
                max_batch=reader.get("MESH_EVENTS_MAX_BATCH", _positive_int, 500),
                max_event_bytes=reader.get("MESH_EVENTS_MAX_EVENT_BYTES", _positive_int, 262144),
                visibility=reader.get("MESH_EVENTS_VISIBILITY_SECONDS", _positive, 30.0),
                max_attempts=reader.get("MESH_EVENTS_MAX_ATTEMPTS", _positive_int, 5),
                retention=reader.get("MESH_EVENTS_RETENTION", _positive_int, 1_000_000),
            ),
            telemetry=TelemetrySettings(
                traces_exporter=reader.get(
                    "MESH_TRACES_EXPORTER", _choice("none", "console", "otlp"), "none"
                ),
                sample_ratio=reader.get("MESH_TRACES_SAMPLE_RATIO", _ratio, 1.0),
                metrics=reader.get("MESH_METRICS", _bool, None) is not False,  # unset: on
                metrics_address=reader.get("MESH_METRICS_ADDRESS", _address, ""),
            ),
            keepalive=reader.get("MESH_KEEPALIVE_SECONDS", _positive, 30.0),
            keepalive_timeout=reader.get("MESH_KEEPALIVE_TIMEOUT_SECONDS", _positive, 10.0),
            tls=TlsSettings(
                ca_file=reader.get("MESH_TLS_CA_FILE", _file, ""),
                cert_file=reader.get("MESH_TLS_CERT_FILE", _file, ""),
                key_file=reader.get("MESH_TLS_KEY_FILE", _file, ""),
                client_auth=bool(reader.get("MESH_TLS_CLIENT_AUTH", _bool, None)),
            ),
            auth=AuthSettings(
                mode=reader.get("MESH_AUTH", _choice("required", "optional", "off"), "optional"),
                jwt_secret=reader.get("MESH_AUTH_JWT_SECRET", str, ""),
                jwt_public_key_file=reader.get("MESH_AUTH_JWT_PUBLIC_KEY_FILE", _file, ""),
                jwks_url=reader.get("MESH_AUTH_JWKS_URL", str, ""),
                issuer=reader.get("MESH_AUTH_ISSUER", str, ""),
                audience=reader.get("MESH_AUTH_AUDIENCE", str, ""),
                leeway=reader.get("MESH_AUTH_LEEWAY_SECONDS", _non_negative, 30.0),
            ),
            token=reader.get("MESH_TOKEN", str, ""),
            token_file=reader.get("MESH_TOKEN_FILE", _file, ""),
            start_policy=StartPolicy(
                attempts=reader.get("MESH_START_ATTEMPTS", _positive_int, 3),
                base_delay=reader.get("MESH_START_BASE_DELAY_SECONDS", _non_negative, 0.5),
                max_delay=reader.get("MESH_START_MAX_DELAY_SECONDS", _non_negative, 10.0),
                start_timeout=reader.get("MESH_START_TIMEOUT_SECONDS", _positive, 30.0),
                stop_timeout=reader.get("MESH_STOP_TIMEOUT_SECONDS", _positive, 10.0),
            ),
        )
        if settings.events.backend == "redis" and not settings.redis_url:
            reader.errors.append("MESH_EVENTS_BACKEND=redis needs MESH_REDIS_URL")
        tls = settings.tls
        if bool(tls.cert_file) != bool(tls.key_file):
            reader.errors.append("MESH_TLS_CERT_FILE and MESH_TLS_KEY_FILE go together")
        if tls.client_auth and not (tls.ca_file and tls.serves_tls):
            reader.errors.append(
                "MESH_TLS_CLIENT_AUTH needs MESH_TLS_CA_FILE, MESH_TLS_CERT_FILE and "
                "MESH_TLS_KEY_FILE"
            )
        if reader.errors:
            raise ConfigError("invalid configuration: " + "; ".join(reader.errors))
        return settings


class _Reader:
    """Collects every bad variable instead of stopping at the first, so one run shows them all."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self._env = env
        self.errors: list[str] = []

    def get(self, name: str, parse: Callable[[str], T], default: T) -> T:
        raw = self._env.get(name)
        if raw is None or raw == "":
            return default
        try:
            return parse(raw.strip())
        except ValueError as exc:
            shown = "(hidden)" if name.endswith("_URL") else repr(raw)
            self.errors.append(f"{name}={shown} is not valid: {exc}")
            return default


def _positive(raw: str) -> float:
    value = float(raw)
    if not value > 0:
        raise ValueError("must be greater than 0")
    return value


def _non_negative(raw: str) -> float:
    value = float(raw)
    if not value >= 0:
        raise ValueError("must be 0 or more")
    return value


def _ratio(raw: str) -> float:
    value = float(raw)
    if not 0 <= value <= 1:
        raise ValueError("must be between 0 and 1")
    return value


def _positive_int(raw: str) -> int:
    value = int(raw)
    if value <= 0:
        raise ValueError("must be a whole number greater than 0")
    return value


def _choice(*allowed: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        if raw.lower() not in allowed:
            raise ValueError(f"must be one of {', '.join(allowed)}")
        return raw.lower()

    return parse


def _bool(raw: str) -> bool | None:
    value = raw.lower()
    if value not in ("true", "false", "1", "0"):
        raise ValueError("must be true or false")
    return value in ("true", "1")


def _database_url(raw: str) -> str:
    if not raw.startswith(("sqlite+aiosqlite://", "postgresql+asyncpg://")):
        # The value is not echoed: it may hold a password.
        raise ValueError("must start with sqlite+aiosqlite:// or postgresql+asyncpg://")
    return raw


def _redis_url(raw: str) -> str:
    if not raw.startswith(("redis://", "rediss://", "unix://")):
        raise ValueError("must start with redis://, rediss:// or unix://")
    return raw


def _namespace(raw: str) -> str:
    if not raw.replace("-", "").replace("_", "").isalnum():
        raise ValueError("must be letters, digits, '-' or '_'")
    return raw


def _file(raw: str) -> str:
    if not Path(raw).is_file():
        raise ValueError("no such file")
    return raw


def _address(raw: str) -> str:
    host, sep, port = raw.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError("must be HOST:PORT, e.g. 127.0.0.1:50051")
    return raw
