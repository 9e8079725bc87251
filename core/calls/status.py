"""Domain errors on the wire: to the `google.rpc.Status` a server sends, and back.

The server's boundary (`core.runtime.boundary`) sends `to_status(exc)` in the
`grpc-status-details-bin` trailer; clients turn a failed call back into the exception the
server raised with `from_rpc_error`.
"""

from __future__ import annotations

from collections.abc import Mapping

import grpc
from google.rpc import code_pb2, error_details_pb2, status_pb2

from core.errors import (
    ERROR_DOMAIN,
    AbortedError,
    AlreadyExistsError,
    CallCancelledError,
    DeadlineExceededError,
    DomainError,
    FailedPreconditionError,
    FieldViolation,
    InternalError,
    InvalidArgumentError,
    NotFoundError,
    OutOfRangeError,
    PermissionDeniedError,
    ResourceExhaustedError,
    UnauthenticatedError,
    UnavailableError,
    UnimplementedError,
)

DETAILS_KEY = "grpc-status-details-bin"

# What an error may carry, so that its trailers (the message twice: grpc-message and the
# base64 status) stay under gRPC's 8 KiB soft metadata limit whatever input it echoes:
# a longer error is dropped by the client as RESOURCE_EXHAUSTED, hiding the real one.
MAX_MESSAGE_CHARS = 400
MAX_VALUE_CHARS = 160  # each ErrorInfo metadata key and value, each violation's text
MAX_ENTRIES = 8  # ErrorInfo metadata entries and BadRequest violations


def clip(text: str, limit: int = MAX_VALUE_CHARS) -> str:
    """`text`, cut to `limit` characters with an ellipsis when longer."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


# The one table: status code -> the exception clients raise for it.
ERROR_FOR_CODE: Mapping[grpc.StatusCode, type[DomainError]] = {
    cls.code: cls
    for cls in (
        InvalidArgumentError,
        NotFoundError,
        AlreadyExistsError,
        FailedPreconditionError,
        AbortedError,
        OutOfRangeError,
        PermissionDeniedError,
        UnauthenticatedError,
        ResourceExhaustedError,
        UnavailableError,
        DeadlineExceededError,
        CallCancelledError,
        UnimplementedError,
        InternalError,
    )
}


def to_status(exc: DomainError) -> status_pb2.Status:
    """Builds the `google.rpc.Status` a server sends for a domain error."""
    metadata = {clip(k): clip(v) for k, v in list(exc.metadata.items())[:MAX_ENTRIES]}
    info = error_details_pb2.ErrorInfo(reason=exc.reason, domain=exc.domain, metadata=metadata)
    status = status_pb2.Status(code=exc.code.value[0], message=clip(exc.message, MAX_MESSAGE_CHARS))
    status.details.add().Pack(info)
    if isinstance(exc, InvalidArgumentError) and exc.violations:
        bad = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(
                    field=clip(v.field), description=clip(v.description)
                )
                for v in exc.violations[:MAX_ENTRIES]
            ]
        )
        status.details.add().Pack(bad)
    if exc.retry_after is not None:
        retry = error_details_pb2.RetryInfo()
        retry.retry_delay.FromNanoseconds(int(exc.retry_after * 1e9))
        status.details.add().Pack(retry)
    return status


def from_rpc_error(error: grpc.RpcError) -> DomainError:
    """Turns a failed call back into the domain error the server raised.

    Reads `ErrorInfo` and `BadRequest` from the status details when present; a status
    without details still maps to the class for its code.
    """
    code = _code_of(error)
    message = _details_of(error)
    cls = ERROR_FOR_CODE.get(code, DomainError)
    info = error_details_pb2.ErrorInfo()
    violations: list[FieldViolation] = []
    retry_after: float | None = None
    status = _status_of(error)
    if status is not None:
        message = status.message or message
        for detail in status.details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                detail.Unpack(info)
            elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = error_details_pb2.BadRequest()
                detail.Unpack(bad)
                violations += [FieldViolation(v.field, v.description) for v in bad.field_violations]
            elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                retry = error_details_pb2.RetryInfo()
                detail.Unpack(retry)
                retry_after = retry.retry_delay.ToNanoseconds() / 1e9
    reason = info.reason or cls.default_reason
    metadata = dict(info.metadata)
    domain = info.domain or ERROR_DOMAIN
    if cls is InvalidArgumentError:
        return InvalidArgumentError(
            message, violations=violations, reason=reason, metadata=metadata, domain=domain
        )
    return cls(message, reason=reason, metadata=metadata, domain=domain, retry_after=retry_after)


def _code_of(error: grpc.RpcError) -> grpc.StatusCode:
    code = getattr(error, "code", None)
    value = code() if callable(code) else None
    return value if isinstance(value, grpc.StatusCode) else grpc.StatusCode.UNKNOWN


def _details_of(error: grpc.RpcError) -> str:
    details = getattr(error, "details", None)
    value = details() if callable(details) else None
    return value if isinstance(value, str) else ""


def _status_of(error: grpc.RpcError) -> status_pb2.Status | None:
    trailing = getattr(error, "trailing_metadata", None)
    for key, value in (trailing() if callable(trailing) else None) or ():
        if key == DETAILS_KEY and isinstance(value, bytes):
            status = status_pb2.Status.FromString(value)
            if status.code != code_pb2.OK:
                return status
    return None
