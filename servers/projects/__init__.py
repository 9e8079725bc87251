"""`mesh.projects.v1.ProjectService`: projects on the CRUD engine of `core.resources.crud`."""

from pathlib import Path

from core.runtime.declaration import ServiceDeclaration

MIGRATIONS = Path(__file__).parent / "migrations"

SERVICE = ServiceDeclaration(
    name="projects",
    register="servers.projects.server:register",
    summary="projects: create, get, list, count, update, delete, undelete",
    migrations=MIGRATIONS,
    commands="cli.projects:add_commands",
    client="clients.projects:ProjectsClient",
)
