"""Settings read once from `MESH_*` environment variables and validated at start.

`MESH_ENV` picks a profile, development or production, whose defaults (`PROFILES`) apply
to every variable that is not set; the variables set otherwise are the `overrides`.

Usage::

    settings = Settings.from_env()          # in __main__ only
    container = Container(settings.start_policy)
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from core import faults
from core import variables as value
from core.errors import ConfigError
from core.variables import Override, Reader


def sqlite_url(data_dir: Path) -> str:
    """The embedded default: one SQLite file in the data folder."""
    return f"sqlite+aiosqlite:///{(data_dir / 'mesh.db').resolve()}"


DEFAULT_ADDRESS = "127.0.0.1:50051"

# What MESH_ENV means: per profile, the value a variable takes when it is not set, written
# as the variable would hold it. An explicitly set variable always wins; a variable that
# no profile names keeps the default at its `reader.get` in `Settings.from_env`. Add a
# setting that differs between development and production here, one line per profile.
PROFILES: Mapping[str, Mapping[str, str]] = {
    "development": {
        "MESH_LOG_FORMAT": "auto",  # console on a terminal, JSON otherwise
        "MESH_REFLECTION": "true",  # grpcurl and buf curl without proto files
        "MESH_AUTH": "optional",  # calls without credentials run unauthenticated
        "MESH_DRAIN_DELAY_SECONDS": "0",  # a local restart need not wait for a balancer
        "MESH_EVENTS_RETURN_STACKS": "true",  # a failed handler's stack in `mesh events status`
    },
    "production": {
        "MESH_LOG_FORMAT": "json",
        "MESH_REFLECTION": "false",  # the API's shape is not handed to whoever asks
        "MESH_AUTH": "required",  # and the start refuses without an identity configuration
        # Kubernetes removes a terminating pod's endpoints asynchronously: keep serving new
        # calls this long after SIGTERM. 5 s + the 10 s grace + component stops fit in
        # the default 30 s terminationGracePeriodSeconds.
        "MESH_DRAIN_DELAY_SECONDS": "5",
        "MESH_EVENTS_RETURN_STACKS": "false",  # stacks stay in the server's logs and store
    },
}
DEFAULT_PROFILE = "development"


@dataclass(frozen=True, slots=True)
class StartPolicy:
    """How the container retries and bounds component starts and stops.

    A dependency that is down at start is retried, the port open and readiness
    NOT_SERVING meanwhile, until it comes up or `deadline` passes (then the process exits
    non-zero naming it): a late database is a slow start, not a crash loop. Waits grow to
    `max_delay`, so a dependency that returns is in use within about that long.
    """

    attempts: int = 0  # 0: as many as fit in the deadline
    base_delay: float = 0.5
    max_delay: float = 1.0
    start_timeout: float = 30.0  # one try
    stop_timeout: float = 10.0
    deadline: float = 120.0  # every try of a component, waits included; 0: none


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
    # GetEventStatus returns the stack traces of failed attempts (they are always stored
    # and logged); on in development only (core.config.PROFILES): a stack shows the code's
    # insides to callers.
    return_stacks: bool = True
    system_events: bool = True  # publish mesh.system.v1.* events about this process

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
    # The scopes of a caller identified by its client certificate (mutual TLS): the
    # services of one mesh, trusted alike by default.
    cert_scopes: tuple[str, ...] = ("admin",)

    @property
    def verifies_tokens(self) -> bool:
        return bool(self.jwt_secret or self.jwt_public_key_file or self.jwks_url)


@dataclass(frozen=True, slots=True)
class LimitSettings:
    """What one server process takes on at once (core.runtime.limits), and the sizes it
    accepts. Past a limit a call fails at once with RESOURCE_EXHAUSTED and a reason."""

    max_calls: int = 1000  # unary calls in progress; beyond: OVERLOADED with RetryInfo
    max_streams: int = 1000  # open streaming calls; beyond: TOO_MANY_STREAMS
    # HTTP/2 MAX_CONCURRENT_STREAMS: more wait in the client. The server counts a stream
    # until its handler has ended, the client only until it cancels: at 100, a client that
    # cancelled quickly at 50 in flight had a quarter of its calls refused (UNAVAILABLE,
    # tests/mesh/test_cancellation.py). Go's, Java's and C's servers default to unlimited.
    streams_per_connection: int = 1000
    default_deadline: float = 30.0  # for unary calls sent without one; 0: none
    max_metadata_bytes: int = 16 * 1024  # request headers; beyond: RESOURCE_EXHAUSTED
    # Calls a second each principal may start (0: no limit), and how many at once.
    rate_per_principal: float = 0.0
    rate_burst: float = 0.0  # 0: one second's worth


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
    # MESH_ENV: the PROFILES entry the defaults came from, and what was set to differ.
    profile: str = DEFAULT_PROFILE
    overrides: tuple[Override, ...] = field(default=(), compare=False)
    reflection: bool = True
    # A plaintext health-only port for probes that can neither use TLS nor send credentials.
    probe_address: str = ""
    limits: LimitSettings = field(default_factory=lambda: LimitSettings())
    data_dir: Path = Path("var")
    grace_seconds: float = 10.0
    # After SIGTERM: readiness NOT_SERVING at once, new calls still served this long.
    drain_delay: float = 0.0
    max_message_bytes: int = 4 * 1024 * 1024
    log_format: str = "auto"
    log_level: str = "info"
    # Health checks (core.runtime.monitor): every interval, each bounded by the timeout;
    # UNHEALTHY after `failures` failed checks in a row, serving after `recoveries` passed.
    health_interval: float = 1.0
    health_timeout: float = 1.0
    health_failures: int = 2
    health_recoveries: int = 1
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
    # MESH_TEST_FAULTS (core.faults): for tests only; production refuses to start with it.
    test_faults: tuple[faults.Fault, ...] = ()

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

    @property
    def production(self) -> bool:
        return self.profile == "production"

    def check_serving(self) -> None:
        """Raises ConfigError when a server must not start with these settings: required
        authentication with no way to identify a caller (the production default)."""
        auth, tls = self.auth, self.tls
        if auth.mode == "required" and not (auth.verifies_tokens or tls.client_auth):
            default = " (the production default)" if self.production else ""
            raise ConfigError(
                f"MESH_AUTH=required{default} needs an identity configuration: "
                "MESH_AUTH_JWT_SECRET, MESH_AUTH_JWT_PUBLIC_KEY_FILE or MESH_AUTH_JWKS_URL to "
                "verify tokens, or MESH_TLS_CLIENT_AUTH=true with MESH_TLS_CA_FILE, "
                "MESH_TLS_CERT_FILE and MESH_TLS_KEY_FILE for client certificates; "
                "set MESH_AUTH=off to serve without authentication on purpose"
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
        first = Reader(env, {})  # MESH_ENV itself: shown as the profile, not as an override
        profile = first.get("MESH_ENV", value.choice(*PROFILES), DEFAULT_PROFILE)
        reader = Reader(env, PROFILES[profile])
        reader.errors += first.errors
        settings = cls(
            service_name=reader.get("MESH_SERVICE_NAME", str, "mesh"),
            address=reader.get("MESH_ADDRESS", value.address, DEFAULT_ADDRESS),
            profile=profile,
            reflection=reader.get("MESH_REFLECTION", value.boolean, True),
            probe_address=reader.get("MESH_PROBE_ADDRESS", value.address, ""),
            limits=LimitSettings(
                max_calls=reader.get("MESH_MAX_CONCURRENT_CALLS", value.positive_int, 1000),
                max_streams=reader.get("MESH_MAX_STREAMS", value.positive_int, 1000),
                streams_per_connection=reader.get(
                    "MESH_MAX_STREAMS_PER_CONNECTION", value.positive_int, 1000
                ),
                default_deadline=reader.get(
                    "MESH_DEFAULT_DEADLINE_SECONDS", value.non_negative, 30.0
                ),
                max_metadata_bytes=reader.get("MESH_MAX_METADATA_BYTES", value.positive_int, 16384),
                rate_per_principal=reader.get(
                    "MESH_RATE_LIMIT_PER_SECOND", value.non_negative, 0.0
                ),
                rate_burst=reader.get("MESH_RATE_LIMIT_BURST", value.non_negative, 0.0),
            ),
            data_dir=Path(reader.get("MESH_DATA_DIR", str, "var")),
            grace_seconds=reader.get("MESH_GRACE_SECONDS", value.non_negative, 10.0),
            drain_delay=reader.get("MESH_DRAIN_DELAY_SECONDS", value.non_negative, 0.0),
            max_message_bytes=reader.get(
                "MESH_MAX_MESSAGE_BYTES", value.positive_int, 4 * 1024 * 1024
            ),
            log_format=reader.get(
                "MESH_LOG_FORMAT", value.choice("auto", "json", "console"), "auto"
            ),
            log_level=reader.get(
                "MESH_LOG_LEVEL", value.choice("debug", "info", "warning", "error"), "info"
            ),
            health_interval=reader.get("MESH_HEALTH_INTERVAL_SECONDS", value.positive, 1.0),
            health_timeout=reader.get("MESH_HEALTH_TIMEOUT_SECONDS", value.positive, 1.0),
            health_failures=reader.get("MESH_HEALTH_FAILURE_THRESHOLD", value.positive_int, 2),
            health_recoveries=reader.get("MESH_HEALTH_RECOVERY_THRESHOLD", value.positive_int, 1),
            database_url=reader.get("MESH_DATABASE_URL", value.database_url, "", secret=True),
            redis_url=reader.get("MESH_REDIS_URL", value.redis_url, "", secret=True),
            migrate_on_start=reader.get("MESH_MIGRATE_ON_START", value.boolean, None),
            database_pool_size=reader.get("MESH_DATABASE_POOL_SIZE", value.positive_int, 20),
            purge_interval=reader.get("MESH_PURGE_INTERVAL_SECONDS", value.positive, 60.0),
            audit_retention_days=reader.get("MESH_AUDIT_RETENTION_DAYS", value.positive, 365.0),
            cache_namespace=reader.get("MESH_CACHE_NAMESPACE", value.namespace, "mesh"),
            events=EventSettings(
                backend=reader.get(
                    "MESH_EVENTS_BACKEND", value.choice("auto", "sql", "redis"), "auto"
                ),
                address=reader.get("MESH_EVENTS_ADDRESS", value.address, ""),
                max_batch=reader.get("MESH_EVENTS_MAX_BATCH", value.positive_int, 500),
                max_event_bytes=reader.get(
                    "MESH_EVENTS_MAX_EVENT_BYTES", value.positive_int, 262144
                ),
                visibility=reader.get("MESH_EVENTS_VISIBILITY_SECONDS", value.positive, 30.0),
                max_attempts=reader.get("MESH_EVENTS_MAX_ATTEMPTS", value.positive_int, 5),
                retention=reader.get("MESH_EVENTS_RETENTION", value.positive_int, 1_000_000),
                return_stacks=reader.get("MESH_EVENTS_RETURN_STACKS", value.boolean, True),
                system_events=reader.get("MESH_EVENTS_SYSTEM_EVENTS", value.boolean, True),
            ),
            telemetry=TelemetrySettings(
                traces_exporter=reader.get(
                    "MESH_TRACES_EXPORTER", value.choice("none", "console", "otlp"), "none"
                ),
                sample_ratio=reader.get("MESH_TRACES_SAMPLE_RATIO", value.ratio, 1.0),
                metrics=reader.get("MESH_METRICS", value.boolean, True),
                metrics_address=reader.get("MESH_METRICS_ADDRESS", value.address, ""),
            ),
            keepalive=reader.get("MESH_KEEPALIVE_SECONDS", value.positive, 30.0),
            keepalive_timeout=reader.get("MESH_KEEPALIVE_TIMEOUT_SECONDS", value.positive, 10.0),
            tls=TlsSettings(
                ca_file=reader.get("MESH_TLS_CA_FILE", value.existing_file, ""),
                cert_file=reader.get("MESH_TLS_CERT_FILE", value.existing_file, ""),
                key_file=reader.get("MESH_TLS_KEY_FILE", value.existing_file, ""),
                client_auth=reader.get("MESH_TLS_CLIENT_AUTH", value.boolean, False),
            ),
            auth=AuthSettings(
                mode=reader.get(
                    "MESH_AUTH", value.choice("required", "optional", "off"), "optional"
                ),
                jwt_secret=reader.get("MESH_AUTH_JWT_SECRET", value.hmac_key, "", secret=True),
                jwt_public_key_file=reader.get(
                    "MESH_AUTH_JWT_PUBLIC_KEY_FILE", value.existing_file, ""
                ),
                jwks_url=reader.get("MESH_AUTH_JWKS_URL", value.http_url, ""),
                issuer=reader.get("MESH_AUTH_ISSUER", str, ""),
                audience=reader.get("MESH_AUTH_AUDIENCE", str, ""),
                leeway=reader.get("MESH_AUTH_LEEWAY_SECONDS", value.non_negative, 30.0),
                cert_scopes=reader.get("MESH_AUTH_CERT_SCOPES", value.scopes, ("admin",)),
            ),
            token=reader.get("MESH_TOKEN", str, "", secret=True),
            token_file=reader.get("MESH_TOKEN_FILE", value.existing_file, ""),
            start_policy=StartPolicy(
                attempts=reader.get("MESH_START_ATTEMPTS", value.non_negative_int, 0),
                base_delay=reader.get("MESH_START_BASE_DELAY_SECONDS", value.non_negative, 0.5),
                max_delay=reader.get("MESH_START_MAX_DELAY_SECONDS", value.non_negative, 1.0),
                deadline=reader.get("MESH_START_DEADLINE_SECONDS", value.non_negative, 120.0),
                start_timeout=reader.get("MESH_START_TIMEOUT_SECONDS", value.positive, 30.0),
                stop_timeout=reader.get("MESH_STOP_TIMEOUT_SECONDS", value.positive, 10.0),
            ),
            test_faults=reader.get("MESH_TEST_FAULTS", faults.parse, ()),
        )
        if settings.test_faults and settings.production:
            reader.errors.append("MESH_TEST_FAULTS is for tests; MESH_ENV=production refuses it")
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
        by_name = sorted(reader.overrides, key=lambda o: o.name)
        return replace(settings, overrides=tuple(by_name))
