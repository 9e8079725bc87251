"""Opaque, tamper-proof page tokens for keyset pagination (AIP-158).

A token carries the sort-key values of the last row served and a hash of the query it
belongs to, signed with HMAC-SHA256. A token that was altered, or that comes from a
different filter, order or show_deleted, is INVALID_ARGUMENT. Keyset paging (rather
than offsets) means rows inserted meanwhile never shift a page: no duplicates, no gaps.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from core.errors import FieldViolation, InvalidArgumentError

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
# A page also ends early, with a next page token, once its items reach this many encoded
# bytes (AIP-158 lets a page hold fewer than page_size): a thousand large items would
# pass gRPC's message limit (4 MiB by default, MESH_MAX_MESSAGE_BYTES), failing the call.
MAX_PAGE_BYTES = 1024 * 1024
_MAC_BYTES = 16


def page_size(requested: int) -> int:
    """0 means the default; above the maximum is clamped; negative is INVALID_ARGUMENT."""
    if requested < 0:
        raise InvalidArgumentError(
            "page_size must not be negative",
            reason="INVALID_PAGE_SIZE",
            violations=[FieldViolation("page_size", "must be 0 or more")],
        )
    return min(requested or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


def fitting(sizes: Iterable[int], budget: int = MAX_PAGE_BYTES) -> int:
    """How many leading items, of these encoded sizes, a page holds: those within `budget`
    bytes, and always the first (one item over the budget is the message limit's concern)."""
    used = count = 0
    for size in sizes:
        used += size
        if count and used > budget:
            break
        count += 1
    return count


class PageTokens:
    """Signs and checks page tokens with a secret shared by every instance."""

    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    def encode(self, query: str, keys: Sequence[Any]) -> str:
        payload = json.dumps({"q": _digest(query), "k": [_to_json(k) for k in keys]}).encode()
        mac = hmac.new(self._secret, payload, hashlib.sha256).digest()[:_MAC_BYTES]
        return base64.urlsafe_b64encode(mac + payload).decode().rstrip("=")

    def decode(self, token: str, query: str) -> list[Any]:
        """The keys of a token made for `query`; INVALID_ARGUMENT for anything else."""
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
            mac, payload = raw[:_MAC_BYTES], raw[_MAC_BYTES:]
            expected = hmac.new(self._secret, payload, hashlib.sha256).digest()[:_MAC_BYTES]
            if not hmac.compare_digest(mac, expected):
                raise ValueError("bad signature")
            body = json.loads(payload)
            same_query = body["q"] == _digest(query)
            keys = [_from_json(k) for k in body["k"]]
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise _invalid("page_token is not a token this service issued") from exc
        if not same_query:
            raise _invalid("page_token belongs to a different filter, order_by or show_deleted")
        return keys


def _invalid(message: str) -> InvalidArgumentError:
    return InvalidArgumentError(
        message,
        reason="INVALID_PAGE_TOKEN",
        violations=[FieldViolation("page_token", message)],
    )


def _digest(query: str) -> str:
    return hashlib.sha256(query.encode()).hexdigest()[:16]


def _to_json(value: Any) -> Any:
    if isinstance(value, datetime):
        aware = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        return {"t": aware.isoformat()}
    return value


def _from_json(value: Any) -> Any:
    if isinstance(value, dict):
        return datetime.fromisoformat(str(value["t"]))
    return value
