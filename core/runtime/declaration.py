"""A service declared once: what `mesh serve`, `mesh db upgrade`, the admin summary and the
test kit need to know of it, found through the `meshkit.services` entry-point group.

A service package declares itself in its `__init__.py` and names that declaration in its
`pyproject.toml`, the way a pytest plugin names itself; meshkit's own services are found
the same way, so an installed package adds its service without a line changed in meshkit.
Everything heavy (the servicer, SQLAlchemy, the generated stubs) is named by a
`"module:attribute"` string and imported only when the service is served.

Usage::

    # notes/__init__.py
    SERVICE = ServiceDeclaration(
        name="notes",
        register="notes.server:register",
        migrations=Path(__file__).parent / "migrations",
        client="notes.client:NotesClient",
    )

    # pyproject.toml
    [project.entry-points."meshkit.services"]
    notes = "notes:SERVICE"
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from core.errors import ConfigError

if TYPE_CHECKING:
    from core.config import Settings
    from core.runtime.container import Container
    from core.runtime.server import Service

ENTRY_POINT_GROUP = "meshkit.services"

# Adds a service's components to the container and returns the gRPC services it hosts.
Register = Callable[["Container", "Settings"], "list[Service]"]
# Adds a command group to the `mesh` parser, given its argparse subparsers object.
AddCommands = Callable[[Any], None]


@dataclass(frozen=True, slots=True)
class ServiceDeclaration:
    """One service, as the rest of the mesh sees it.

    Args:
        name: What `mesh serve NAME` calls it; lowercase letters, digits and hyphens.
        register: `"module:function"` of its `Register`, imported only when served.
        summary: One line for `mesh serve --help`.
        migrations: The Alembic version folder of its tables, if it has any;
            `mesh db upgrade` brings a database to the heads of every declared folder.
        commands: `"module:function"` that adds its `mesh NAME ...` command group to an
            argparse subparsers object, if it has one.
        client: `"module:Class"` of its typed async client, for the test kit.
        always_hosted: Whether every process runs it, named or not (the admin service,
            which reports on the process itself).
    """

    name: str
    register: str
    summary: str = ""
    migrations: Path | None = None
    commands: str | None = None
    client: str | None = None
    always_hosted: bool = False

    def load_register(self) -> Register:
        """Imports and returns its register function."""
        return cast(Register, _load(self.register))

    def load_commands(self) -> AddCommands | None:
        """Imports and returns the function that adds its command group, if it has one."""
        return None if self.commands is None else cast(AddCommands, _load(self.commands))

    def load_client(self) -> type[Any] | None:
        """Imports and returns its typed client class, if it has one."""
        return None if self.client is None else cast(type[Any], _load(self.client))


def discover() -> dict[str, ServiceDeclaration]:
    """Every installed service, by name, in the order of their names.

    An entry point that does not load, or names something that is not a declaration, is
    a ConfigError naming it: a broken plugin must not pass silently.
    """
    found: dict[str, ServiceDeclaration] = {}
    for point in entry_points(group=ENTRY_POINT_GROUP):
        try:
            declaration = point.load()
        except Exception as exc:
            raise ConfigError(
                f"service entry point {point.name!r} ({point.value}) does not load: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        if not isinstance(declaration, ServiceDeclaration):
            raise ConfigError(
                f"service entry point {point.name!r} ({point.value}) is not a ServiceDeclaration"
            )
        if declaration.name in found and found[declaration.name] != declaration:
            raise ConfigError(f"two installed services are named {declaration.name!r}")
        found[declaration.name] = declaration
    return dict(sorted(found.items()))


def installed_migrations() -> list[Path]:
    """The migration folders of every installed service: the tables a shared database
    may hold besides a process's own."""
    return [s.migrations for s in discover().values() if s.migrations is not None]


def _load(reference: str) -> Any:
    module, _, attribute = reference.partition(":")
    return getattr(importlib.import_module(module), attribute)
