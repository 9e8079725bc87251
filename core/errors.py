"""Domain errors and the one table that maps them to gRPC status codes.

Domain code raises these, and importing this module loads neither grpc nor protobuf: each
class names its status code, and `code` looks up the `grpc.StatusCode` only when read.
`core.calls.status` turns them into a `google.rpc.Status` with an `ErrorInfo` (and
`BadRequest` field violations) for the server's boundary, and back into the same
exception type for clients, so callers catch `NotFoundError` whether the resource is
in-process or behind a socket.

Usage::

    raise NotFoundError("project 'projects/demo' does not exist", reason="PROJECT_NOT_FOUND")
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    import grpc

ERROR_DOMAIN = "meshkit"


class _StatusCode:
    """The `grpc.StatusCode` named by the class's `status`, looked up when read.

    grpc is imported here, on first use, and not at the top: a domain module that raises
    these errors (and its unit tests) then never loads grpc. The import hides no cycle.
    """

    def __get__(self, instance: DomainError | None, owner: type[DomainError]) -> grpc.StatusCode:
        import grpc  # the one deferred import: see the class docstring

        return grpc.StatusCode[owner.status]


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
        retry_after: Seconds after which a retry may succeed (sent as `google.rpc.RetryInfo`).
    """

    status: ClassVar[str] = "UNKNOWN"  # a grpc.StatusCode's name
    code = _StatusCode()
    default_reason: ClassVar[str] = "UNKNOWN"

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
        domain: str = ERROR_DOMAIN,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason or self.default_reason
        self.metadata = dict(metadata or {})
        self.domain = domain
        self.retry_after = retry_after


class InvalidArgumentError(DomainError):
    """The request is malformed; `violations` names each bad field."""

    status = "INVALID_ARGUMENT"
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
    status = "NOT_FOUND"
    default_reason = "NOT_FOUND"


class AlreadyExistsError(DomainError):
    status = "ALREADY_EXISTS"
    default_reason = "ALREADY_EXISTS"


class FailedPreconditionError(DomainError):
    status = "FAILED_PRECONDITION"
    default_reason = "FAILED_PRECONDITION"


class AbortedError(DomainError):
    """A concurrency conflict such as a stale etag; the caller may re-read and retry."""

    status = "ABORTED"
    default_reason = "ABORTED"


class OutOfRangeError(DomainError):
    status = "OUT_OF_RANGE"
    default_reason = "OUT_OF_RANGE"


class PermissionDeniedError(DomainError):
    status = "PERMISSION_DENIED"
    default_reason = "PERMISSION_DENIED"


class UnauthenticatedError(DomainError):
    status = "UNAUTHENTICATED"
    default_reason = "UNAUTHENTICATED"


class ResourceExhaustedError(DomainError):
    status = "RESOURCE_EXHAUSTED"
    default_reason = "RESOURCE_EXHAUSTED"


class UnavailableError(DomainError):
    """A dependency is down for now; retrying later may succeed."""

    status = "UNAVAILABLE"
    default_reason = "UNAVAILABLE"


class DeadlineExceededError(DomainError):
    status = "DEADLINE_EXCEEDED"
    default_reason = "DEADLINE_EXCEEDED"


class CallCancelledError(DomainError):
    """The caller cancelled the call (CANCELLED); not asyncio's CancelledError."""

    status = "CANCELLED"
    default_reason = "CANCELLED"


class UnimplementedError(DomainError):
    status = "UNIMPLEMENTED"
    default_reason = "UNIMPLEMENTED"


class InternalError(DomainError):
    """An INTERNAL answer: its message is always the fixed "internal error", reason INTERNAL."""

    status = "INTERNAL"
    default_reason = "INTERNAL"
