"""Whether a database is at the heads of its migration folders, found without Alembic.

Alembic and Mako take about 8 MB of a server's memory for as long as it runs. A server
that restarts on a database already at head needs none of it: the revision ids of the
version files (read as text, never imported) and the `alembic_version` table answer the
question. Only when they do not say "at head" does `core.data.migrate` load Alembic, to
upgrade or to name what is missing. Whatever this module cannot read with certainty
(a revision id it does not know, a file it cannot parse) counts as "not at head".
"""

from __future__ import annotations

import ast
from collections.abc import Sequence
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

# core's own tables (outbox, request ids, secrets, events, leases); core.data.migrate adds
# this folder to every upgrade.
CORE_MIGRATIONS = Path(__file__).parent / "migrations" / "versions"

_KEYS = ("revision", "down_revision", "depends_on")


async def at_heads(
    engine: AsyncEngine, folders: Sequence[Path], known: Sequence[Path] = ()
) -> bool:
    """True when the database records every head of `folders` (or a revision after it).

    `known` are the folders of other services that may share the database: their
    revisions in it are understood, and their heads are not required.
    """
    try:
        graph, _ = revision_graph([*folders, *known])
        _, heads = revision_graph(folders)
    except (OSError, SyntaxError, ValueError):
        return False
    try:
        async with engine.connect() as conn:
            rows = await conn.execute(text("select version_num from alembic_version"))
            have = {row[0] for row in rows}
    except DBAPIError:  # no alembic_version table yet
        return False
    applied: set[str] = set()
    todo = list(have)
    while todo:  # Alembic records only the tips; everything they build on is applied too
        revision = todo.pop()
        if revision not in graph:
            return False
        if revision not in applied:
            applied.add(revision)
            todo += graph[revision]
    return heads <= applied


def revision_graph(folders: Sequence[Path]) -> tuple[dict[str, list[str]], set[str]]:
    """Each revision id -> the ids it builds on (down revisions and depends_on), and the
    heads: the revisions no other revision names as its down revision."""
    graph: dict[str, list[str]] = {}
    below: set[str] = set()
    for folder in dict.fromkeys(folders):
        for path in sorted(folder.glob("*.py")):
            values = _module_constants(path)
            if "revision" not in values:
                continue  # __init__.py or a helper
            down, needs = _ids(values.get("down_revision")), _ids(values.get("depends_on"))
            graph[str(values["revision"])] = down + needs
            below.update(down)
    return graph, set(graph) - below


def _module_constants(path: Path) -> dict[str, object]:
    """The module-level `name = literal` assignments of `_KEYS` in the file at `path`."""
    values: dict[str, object] = {}
    for node in ast.parse(path.read_text(), str(path)).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target, value = node.targets[0], node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            target, value = node.target, node.value
        else:
            continue
        if isinstance(target, ast.Name) and target.id in _KEYS:
            values[target.id] = ast.literal_eval(value)
    return values


def _ids(value: object) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, tuple | list) and all(isinstance(v, str) for v in value):
        return list(value)
    raise ValueError(f"not a revision id or a sequence of them: {value!r}")
