"""The bearer token a client sends: `MESH_TOKEN`, or the file `MESH_TOKEN_FILE`.

The file is read again when its modification time changes (one `stat` per call), as
Kubernetes rotates projected service-account tokens in place. A token file that cannot
be read keeps the last token read; the server judges it.

Usage::

    token = BearerToken(settings.token, settings.token_file)
    await stub.GetProject(request, metadata=(*trace_metadata, *token.metadata()))
"""

from __future__ import annotations

import os
from pathlib import Path

import structlog

log = structlog.get_logger()

Metadata = tuple[tuple[str, str], ...]


class BearerToken:
    """The `authorization` metadata of a client's calls, empty when no token is configured.

    Args:
        token: The token itself; wins over `token_file` when both are set.
        token_file: A file holding the token, re-read when it changes.
    """

    __slots__ = ("_failing", "_file", "_metadata", "_mtime")

    def __init__(self, token: str = "", token_file: str = "") -> None:
        self._file = "" if token else token_file
        self._mtime: int | None = None
        self._failing = False
        self._metadata: Metadata = _header(token)

    def metadata(self) -> Metadata:
        """`(("authorization", "Bearer <token>"),)`, or `()` without a token."""
        if self._file:
            self._refresh()
        return self._metadata

    def _refresh(self) -> None:
        try:
            mtime = os.stat(self._file).st_mtime_ns
            if mtime == self._mtime:
                return
            token = Path(self._file).read_text().strip()
        except OSError as exc:
            if not self._failing:  # once per outage, not once per call
                log.warning("token.unreadable", file=self._file, error=type(exc).__name__)
            self._failing = True
            return
        self._failing = False
        self._mtime = mtime
        self._metadata = _header(token)
        log.info("token.loaded", file=self._file)


def _header(token: str) -> Metadata:
    return (("authorization", f"Bearer {token}"),) if token else ()
