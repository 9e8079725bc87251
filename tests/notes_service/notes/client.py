"""Typed client for `notes.v1.NoteService`.

Usage::

    async with NotesClient("127.0.0.1:50051") as notes:
        note = await notes.create_note(title="Groceries", body="milk")
        same = await notes.get_note(note.name)   # NotFoundError if there is none
"""

from __future__ import annotations

import uuid
from typing import ClassVar

from clients.base import Client
from notes.v1 import notes_pb2 as pb
from notes.v1 import notes_pb2_grpc


class NotesClient(Client):
    """Its arguments are `clients.base.Client`'s; calls raise `core.errors` exceptions."""

    service: ClassVar[str] = "notes.v1.NoteService"
    # Safe to send twice: reads, and creates (each carries a request id).
    idempotent: ClassVar[frozenset[str]] = frozenset({"GetNote", "CreateNote"})

    @property
    def _stub(self) -> notes_pb2_grpc.NoteServiceStub:
        return notes_pb2_grpc.NoteServiceStub(self.channel)

    async def create_note(
        self, *, title: str, body: str = "", note_id: str = "", timeout: float | None = None
    ) -> pb.Note:
        request = pb.CreateNoteRequest(
            note=pb.Note(title=title, body=body), note_id=note_id, request_id=str(uuid.uuid4())
        )
        response = await self._unary("CreateNote", self._stub.CreateNote, request, timeout)
        return response.note

    async def get_note(self, name: str, *, timeout: float | None = None) -> pb.Note:
        request = pb.GetNoteRequest(name=name)
        response = await self._unary("GetNote", self._stub.GetNote, request, timeout)
        return response.note
