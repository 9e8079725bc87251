"""Notes: a service built on meshkit's core, found by meshkit through its entry point."""

from pathlib import Path

from core.runtime.declaration import ServiceDeclaration

SERVICE = ServiceDeclaration(
    name="notes",
    register="notes.server:register",
    summary="short texts, on the CRUD engine",
    migrations=Path(__file__).parent / "migrations",
    client="notes.client:NotesClient",
)
