"""Domain errors and the one table that maps them to gRPC status codes.

Domain code raises these and never imports grpc. The server boundary (`core.rpc`) turns
them into a `google.rpc.Status` with an `ErrorInfo` (and `BadRequest` field violations);
clients turn that status back into the same exception type with `from_rpc_error`, so
callers catch `NotFoundError` whether the resource is in-process or behind a socket.

Usage::

    raise NotFoundError("project 'projects/demo' does not exist", reason="PROJECT_NOT_FOUND")
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

import grpc
from google.rpc import code_pb2, error_details_pb2, status_pb2

ERROR_DOMAIN = "meshkit"
DETAILS_KEY = "grpc-status-details-bin"


@dataclass(frozen=True, slots=True)
class FieldViolation:
    """One bad field of a request: `field` is a path such as `project.display_name`."""

    field: str
    description: str


class ConfigError(Exception):
    """A setting is missing or malformed; the message names the variable."""


class DomainError(Exception):
    """An error the caller can act on; its message is safe to send over the wire.

    Args:
        message: Human readable and free of secrets and internals.
        reason: A stable UPPER_SNAKE identifier for machines; defaults per class.
        metadata: Extra machine-readable facts, e.g. {"resource": "projects/demo"}.
    """

    code: ClassVar[grpc.StatusCode] = grpc.StatusCode.UNKNOWN
    default_reason: ClassVar[str] = "UNKNOWN"

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
        domain: str = ERROR_DOMAIN,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason or self.default_reason
        self.metadata = dict(metadata or {})
        self.domain = domain


class InvalidArgumentError(DomainError):
    """The request is malformed; `violations` names each bad field."""

    code = grpc.StatusCode.INVALID_ARGUMENT
    default_reason = "INVALID_ARGUMENT"

    def __init__(
        self,
        message: str,
        *,
        violations: Iterable[FieldViolation] = (),
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
        domain: str = ERROR_DOMAIN,
    ) -> None:
        super().__init__(message, reason=reason, metadata=metadata, domain=domain)
        self.violations: Sequence[FieldViolation] = tuple(violations)


class NotFoundError(DomainError):
    code = grpc.StatusCode.NOT_FOUND
    default_reason = "NOT_FOUND"


class AlreadyExistsError(DomainError):
    code = grpc.StatusCode.ALREADY_EXISTS
    default_reason = "ALREADY_EXISTS"


class FailedPreconditionError(DomainError):
    code = grpc.StatusCode.FAILED_PRECONDITION
    default_reason = "FAILED_PRECONDITION"


class AbortedError(DomainError):
    """A concurrency conflict such as a stale etag; the caller may re-read and retry."""

    code = grpc.StatusCode.ABORTED
    default_reason = "ABORTED"


class OutOfRangeError(DomainError):
    code = grpc.StatusCode.OUT_OF_RANGE
    default_reason = "OUT_OF_RANGE"


class PermissionDeniedError(DomainError):
    code = grpc.StatusCode.PERMISSION_DENIED
    default_reason = "PERMISSION_DENIED"


class UnauthenticatedError(DomainError):
    code = grpc.StatusCode.UNAUTHENTICATED
    default_reason = "UNAUTHENTICATED"


class ResourceExhaustedError(DomainError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    default_reason = "RESOURCE_EXHAUSTED"


class UnavailableError(DomainError):
    """A dependency is down for now; retrying later may succeed."""

    code = grpc.StatusCode.UNAVAILABLE
    default_reason = "UNAVAILABLE"


class DeadlineExceededError(DomainError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED
    default_reason = "DEADLINE_EXCEEDED"


class CancelledError(DomainError):
    code = grpc.StatusCode.CANCELLED
    default_reason = "CANCELLED"


class UnimplementedError(DomainError):
    code = grpc.StatusCode.UNIMPLEMENTED
    default_reason = "UNIMPLEMENTED"


class InternalError(DomainError):
    """An INTERNAL answer: its message is always the fixed "internal error", reason INTERNAL."""

    code = grpc.StatusCode.INTERNAL
    default_reason = "INTERNAL"


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
        CancelledError,
        UnimplementedError,
        InternalError,
    )
}


def to_status(exc: DomainError) -> status_pb2.Status:
    """Builds the `google.rpc.Status` a server sends for a domain error."""
    info = error_details_pb2.ErrorInfo(reason=exc.reason, domain=exc.domain, metadata=exc.metadata)
    status = status_pb2.Status(code=exc.code.value[0], message=exc.message)
    status.details.add().Pack(info)
    if isinstance(exc, InvalidArgumentError) and exc.violations:
        bad = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(
                    field=v.field, description=v.description
                )
                for v in exc.violations
            ]
        )
        status.details.add().Pack(bad)
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
    reason = info.reason or cls.default_reason
    metadata = dict(info.metadata)
    domain = info.domain or ERROR_DOMAIN
    if cls is InvalidArgumentError:
        return InvalidArgumentError(
            message, violations=violations, reason=reason, metadata=metadata, domain=domain
        )
    return cls(message, reason=reason, metadata=metadata, domain=domain)


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
