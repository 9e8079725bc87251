"""Domain errors to google.rpc.Status and back, through a faked grpc.RpcError."""

from __future__ import annotations

from collections.abc import Sequence

import grpc
from google.rpc import code_pb2, error_details_pb2, status_pb2

from core.calls.status import DETAILS_KEY, ERROR_FOR_CODE, from_rpc_error, to_status
from core.errors import (
    ERROR_DOMAIN,
    DomainError,
    FieldViolation,
    InvalidArgumentError,
    NotFoundError,
)

Metadata = Sequence[tuple[str, str | bytes]]


class FakeRpcError(grpc.RpcError):
    """What a failed call raises: the third-party seam, faked with the methods grpc offers."""

    def __init__(self, code: grpc.StatusCode, details: str, trailing: Metadata = ()) -> None:
        super().__init__(details)
        self._code, self._details, self._trailing = code, details, tuple(trailing)

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def trailing_metadata(self) -> Metadata:
        return self._trailing


def failed_call(exc: DomainError) -> FakeRpcError:
    """The error a client sees when a server answered `exc` (as core.runtime.boundary sends it)."""
    status = to_status(exc)
    trailing = [("x-request-id", "abc"), (DETAILS_KEY, status.SerializeToString())]
    return FakeRpcError(exc.code, status.message, trailing)


def unpack(status: status_pb2.Status) -> list[object]:
    unpacked: list[object] = []
    for detail in status.details:
        for kind in (error_details_pb2.ErrorInfo, error_details_pb2.BadRequest):
            if detail.Is(kind.DESCRIPTOR):
                message = kind()
                detail.Unpack(message)
                unpacked.append(message)
    return unpacked


def test_to_status_carries_code_message_and_error_info() -> None:
    exc = NotFoundError(
        "project 'projects/demo' does not exist",
        reason="PROJECT_NOT_FOUND",
        metadata={"resource": "projects/demo"},
    )

    status = to_status(exc)

    assert status.code == code_pb2.NOT_FOUND
    assert status.message == "project 'projects/demo' does not exist"
    (info,) = unpack(status)
    assert info == error_details_pb2.ErrorInfo(
        reason="PROJECT_NOT_FOUND", domain=ERROR_DOMAIN, metadata={"resource": "projects/demo"}
    )


def test_to_status_adds_bad_request_field_violations() -> None:
    exc = InvalidArgumentError(
        "the request has 2 bad fields",
        violations=[
            FieldViolation("project.display_name", "must not be empty"),
            FieldViolation("page_size", "must be 0 to 1000"),
        ],
    )

    info, bad = unpack(to_status(exc))

    assert isinstance(info, error_details_pb2.ErrorInfo)
    assert info.reason == "INVALID_ARGUMENT"
    assert isinstance(bad, error_details_pb2.BadRequest)
    assert [(v.field, v.description) for v in bad.field_violations] == [
        ("project.display_name", "must not be empty"),
        ("page_size", "must be 0 to 1000"),
    ]


def test_an_invalid_argument_without_violations_sends_no_bad_request() -> None:
    details = unpack(to_status(InvalidArgumentError("bad")))

    assert [type(d) for d in details] == [error_details_pb2.ErrorInfo]


def test_every_domain_error_round_trips_to_the_same_class() -> None:
    for cls in ERROR_FOR_CODE.values():
        exc = cls("it went wrong", reason="SPECIFIC", metadata={"key": "value"}, domain="tests")

        status = to_status(exc)
        back = from_rpc_error(failed_call(exc))

        assert status.code == getattr(code_pb2, cls.code.name), cls
        assert type(back) is cls
        assert (back.message, back.reason, back.metadata, back.domain) == (
            "it went wrong",
            "SPECIFIC",
            {"key": "value"},
            "tests",
        ), cls


def test_field_violations_round_trip() -> None:
    violations = [FieldViolation("project.display_name", "must not be empty")]
    exc = InvalidArgumentError("bad project", violations=violations, reason="BAD_PROJECT")

    back = from_rpc_error(failed_call(exc))

    assert isinstance(back, InvalidArgumentError)
    assert list(back.violations) == violations
    assert back.reason == "BAD_PROJECT"


def test_a_status_without_details_maps_by_code() -> None:
    for code, cls in ERROR_FOR_CODE.items():
        back = from_rpc_error(FakeRpcError(code, "plain details"))

        assert type(back) is cls, code
        assert (back.message, back.reason, back.metadata, back.domain) == (
            "plain details",
            cls.default_reason,
            {},
            ERROR_DOMAIN,
        ), code


def test_an_unmapped_code_becomes_a_plain_domain_error() -> None:
    back = from_rpc_error(FakeRpcError(grpc.StatusCode.DATA_LOSS, "lost"))

    assert type(back) is DomainError
    assert (back.message, back.reason) == ("lost", "UNKNOWN")


def test_an_rpc_error_without_call_details_is_unknown() -> None:
    back = from_rpc_error(grpc.RpcError())

    assert type(back) is DomainError
    assert (back.message, back.reason) == ("", "UNKNOWN")


def test_details_fall_back_to_the_call_when_the_status_has_no_message() -> None:
    status = to_status(NotFoundError("", reason="GONE"))
    call = FakeRpcError(
        grpc.StatusCode.NOT_FOUND, "from the call", [(DETAILS_KEY, status.SerializeToString())]
    )

    back = from_rpc_error(call)

    assert isinstance(back, NotFoundError)
    assert (back.message, back.reason) == ("from the call", "GONE")
