"""What `mesh serve notes` runs: the database with the notes table, the outbox relay that
publishes their events, and NoteService."""

from __future__ import annotations

from clients.outbox import relay_outbox
from core.config import Settings
from core.data.database import Database
from core.resources.crud import Crud
from core.runtime.boundary import Context
from core.runtime.container import Container
from core.runtime.server import Service
from notes.resource import DESCRIPTOR, NOTES
from notes.v1 import notes_pb2 as pb
from notes.v1 import notes_pb2_grpc


class NoteServicer(notes_pb2_grpc.NoteServiceServicer):
    def __init__(self, notes: Crud[pb.Note]) -> None:
        self._notes = notes

    async def CreateNote(
        self, request: pb.CreateNoteRequest, context: Context
    ) -> pb.CreateNoteResponse:
        note = await self._notes.create(
            request.note,
            resource_id=request.note_id,
            request_id=request.request_id,
            validate_only=False,
            request=request,
            id_field="note_id",
        )
        return pb.CreateNoteResponse(note=note)

    async def GetNote(self, request: pb.GetNoteRequest, context: Context) -> pb.GetNoteResponse:
        return pb.GetNoteResponse(note=await self._notes.get(request.name))


def register(container: Container, settings: Settings) -> list[Service]:
    """Adds the notes service's components to `container`; returns what it serves."""
    db = container.provide(Database, lambda: Database.from_settings(settings))
    relay_outbox(container, settings, db)  # to the events service, or this process's bus
    add = notes_pb2_grpc.add_NoteServiceServicer_to_server
    return [Service(DESCRIPTOR, NoteServicer(Crud(NOTES, db)), add, needs=(db.name,))]
