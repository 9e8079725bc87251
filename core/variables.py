"""Reading `MESH_*` variables: a reader that applies a profile's defaults, collects every
bad variable instead of stopping at the first, and notes every variable set to differ from
its default; and the parsers of the values. `core.config` says which variables exist.

Usage::

    reader = Reader(os.environ, PROFILES["production"])
    grace = reader.get("MESH_GRACE_SECONDS", value.non_negative, 10.0)
    if reader.errors: ...
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Override:
    """A variable set to something else than its profile's default; a secret's `value` is
    empty, for what is shown of a configuration (`mesh status`) never holds a secret."""

    name: str
    value: str
    secret: bool = False


class Reader:
    """Reads variables over a profile's defaults. Collects every bad variable instead of
    stopping at the first, so one run shows them all, and every variable set to differ
    from its default (`overrides`)."""

    def __init__(self, env: Mapping[str, str], profile: Mapping[str, str]) -> None:
        self._env = env
        self._profile = profile
        self.errors: list[str] = []
        self.overrides: list[Override] = []

    def get(self, name: str, parse: Callable[[str], T], default: T, *, secret: bool = False) -> T:
        if name in self._profile:
            default = parse(self._profile[name])  # the table's values are valid: tested
        raw = self._env.get(name)
        if raw is None or raw == "":
            return default
        try:
            value = parse(raw.strip())
        except ValueError as exc:
            shown = "(hidden)" if secret or name.endswith("_URL") else repr(raw)
            self.errors.append(f"{name}={shown} is not valid: {exc}")
            return default
        if value != default:
            self.overrides.append(Override(name, "" if secret else raw.strip(), secret))
        return value


def positive(raw: str) -> float:
    value = float(raw)
    if not value > 0:
        raise ValueError("must be greater than 0")
    return value


def non_negative(raw: str) -> float:
    value = float(raw)
    if not value >= 0:
        raise ValueError("must be 0 or more")
    return value


def ratio(raw: str) -> float:
    value = float(raw)
    if not 0 <= value <= 1:
        raise ValueError("must be between 0 and 1")
    return value


def non_negative_int(raw: str) -> int:
    value = int(raw)
    if value < 0:
        raise ValueError("must be 0 or more")
    return value


def positive_int(raw: str) -> int:
    value = int(raw)
    if value <= 0:
        raise ValueError("must be a whole number greater than 0")
    return value


def choice(*allowed: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        if raw.lower() not in allowed:
            raise ValueError(f"must be one of {', '.join(allowed)}")
        return raw.lower()

    return parse


def boolean(raw: str) -> bool:
    value = raw.lower()
    if value not in ("true", "false", "1", "0"):
        raise ValueError("must be true or false")
    return value in ("true", "1")


def database_url(raw: str) -> str:
    if not raw.startswith(("sqlite+aiosqlite://", "postgresql+asyncpg://")):
        # The value is not echoed: it may hold a password.
        raise ValueError("must start with sqlite+aiosqlite:// or postgresql+asyncpg://")
    return raw


def redis_url(raw: str) -> str:
    if not raw.startswith(("redis://", "rediss://", "unix://")):
        raise ValueError("must start with redis://, rediss:// or unix://")
    return raw


def namespace(raw: str) -> str:
    if not raw.replace("-", "").replace("_", "").isalnum():
        raise ValueError("must be letters, digits, '-' or '_'")
    return raw


def scopes(raw: str) -> tuple[str, ...]:
    scopes = tuple(raw.replace(",", " ").split())
    if not scopes:
        raise ValueError("must name scopes, e.g. admin or 'projects.read events.publish'")
    return scopes


def existing_file(raw: str) -> str:
    if not Path(raw).is_file():
        raise ValueError("no such file")
    return raw


def address(raw: str) -> str:
    host, sep, port = raw.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError("must be HOST:PORT, e.g. 127.0.0.1:50051")
    return raw


def hmac_key(raw: str) -> str:
    if len(raw.encode()) < 32:
        raise ValueError("must be at least 32 bytes (RFC 7518 3.2)")
    return raw


def http_url(raw: str) -> str:
    if not raw.startswith(("https://", "http://")):
        raise ValueError("must be an https:// (or http://) URL")
    return raw
