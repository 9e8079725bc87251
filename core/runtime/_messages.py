"""How the boundary handles message bytes: a request that does not decode becomes
INVALID_ARGUMENT (not gRPC's UNKNOWN) when the handler would read it, and a stream may
send bytes it serialized once for many streams."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

from core.errors import InvalidArgumentError


class _Undecodable:
    """Stands in for a request message whose bytes did not parse."""


UNDECODABLE = _Undecodable()


def passing_bytes(serializer: Callable[[Any], bytes] | None) -> Callable[[Any], bytes] | None:
    """A stream may yield ready-made bytes: a message sent on many streams (an event to
    every subscriber) is then serialized once instead of once per stream."""
    if serializer is None:
        return None

    def encode(message: Any) -> bytes:
        return message if type(message) is bytes else serializer(message)

    return encode


def safe_decoder(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None

    def decode(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception:
            return UNDECODABLE

    return decode


def _malformed() -> InvalidArgumentError:
    # A new exception each time: one shared object would keep every raise's frames alive.
    return InvalidArgumentError(
        "the request message could not be decoded", reason="MALFORMED_REQUEST"
    )


def checked(request: Any, unary_request: bool) -> Any:
    """Rejects an undecodable unary request, or wraps a request stream to reject one later."""
    if unary_request:
        if request is UNDECODABLE:
            raise _malformed()
        return request

    async def messages() -> AsyncIterator[Any]:
        async for message in request:
            if message is UNDECODABLE:
                raise _malformed()
            yield message

    return messages()
