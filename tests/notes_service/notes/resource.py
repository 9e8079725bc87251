"""The notes table, its rules and its mapping to `notes.v1.Note`: all the CRUD engine needs."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from core.errors import FieldViolation
from core.resources.filtering import FilterField, Kind
from core.resources.resource import Resource, RowLike, standard_columns
from core.resources.validation import text_violations
from notes.v1 import notes_pb2
from notes.v1.notes_pb2 import Note

DESCRIPTOR = notes_pb2.DESCRIPTOR.services_by_name["NoteService"]

# Mirrors migrations/0001_notes.py.
notes = sa.Table(
    "notes",
    sa.MetaData(),
    *standard_columns(),
    sa.Column("title", sa.String(200), nullable=False),
    sa.Column("body", sa.Text(), nullable=False),
)


def validate(note: Note) -> list[FieldViolation]:
    return [
        *text_violations("title", note.title, max_length=200, required=True),
        *text_violations("body", note.body, max_length=4000, multiline=True),
    ]


def to_columns(note: Note) -> dict[str, Any]:
    return {"title": note.title, "body": note.body}


def to_message(row: RowLike) -> Note:
    return Note(title=row["title"], body=row["body"])


NOTES = Resource(
    message=Note,
    collection="notes",
    singular="note",
    table=notes,
    source=DESCRIPTOR.full_name,
    event_prefix="notes.v1.note",
    writable=("title", "body"),
    to_columns=to_columns,
    to_message=to_message,
    validate=validate,
    filter_fields={"title": FilterField(notes.c.title, Kind.STRING)},
    order_fields={"title": "title", "create_time": "create_time"},
)
