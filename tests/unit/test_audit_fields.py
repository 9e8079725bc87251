"""The audit record's field values are exactly what json_format would give."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from google.protobuf import descriptor_pb2, type_pb2
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message

from core.resources.audit import _NOISE, _fields
from mesh.projects.v1 import projects_pb2 as pb


def _expected(message: Message) -> dict[str, Any]:
    every = MessageToDict(message, preserving_proto_field_name=True)
    return {k: v for k, v in every.items() if k not in _NOISE}


def _project() -> pb.Project:
    project = pb.Project(
        name="projects/p1",
        display_name="Demo",
        description="a project",
        project_type=pb.Project.PROJECT_TYPE_VIDEO_EDIT,
        owner="users/ada",
        labels={"team": "core", "env": "prod"},
        state=pb.Project.STATE_DELETED,
        etag="abc",
    )
    for field in ("create_time", "update_time", "delete_time", "purge_time"):
        getattr(project, field).FromDatetime(datetime(2026, 12, 7, 6, 0, 1, 250000, UTC))
    return project


@pytest.mark.parametrize(
    "message",
    [
        _project(),
        pb.Project(),
        pb.Project(project_type=99),  # an open enum's unknown value
        descriptor_pb2.FieldDescriptorProto(  # proto2: closed enums, explicit presence
            name="f",
            number=0,
            label=descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED,
            type=descriptor_pb2.FieldDescriptorProto.TYPE_INT64,
            json_name="",
            proto3_optional=False,
            options=descriptor_pb2.FieldOptions(packed=True),
        ),
        type_pb2.Field(  # repeated messages, 64-bit-free ints, open enums
            kind=type_pb2.Field.TYPE_BYTES,
            number=-3,
            name="x",
            packed=True,
            options=[type_pb2.Option(name="o")],
            default_value="d",
        ),
        descriptor_pb2.UninterpretedOption(  # int64, uint64, double, bytes
            positive_int_value=2**60,
            negative_int_value=-(2**60),
            double_value=float("inf"),
            string_value=b"\x00\xff",
            identifier_value="i",
        ),
    ],
)
def test_fields_match_message_to_dict(message: Message) -> None:
    assert _fields(message) == _expected(message)
