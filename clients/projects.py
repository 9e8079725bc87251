"""Typed client for `mesh.projects.v1.ProjectService`.

Usage::

    async with ProjectsClient("127.0.0.1:50051") as projects:
        project = await projects.create_project(
            Project(display_name="Demo", project_type=Project.PROJECT_TYPE_MUSIC_CLIP,
                    owner="users/alice"),
            project_id="demo",
        )
        try:
            await projects.get_project("projects/missing")
        except NotFoundError as exc:
            print(exc.reason)                      # PROJECT_NOT_FOUND

        trailers = Trailers()                      # how the server's cache served a read
        project = await projects.get_project("projects/demo", trailers=trailers)
        print(trailers.cache)                      # local-hit, shared-hit, miss or bypass

Every method raises the `core.errors` exception for a failed call (NotFoundError,
AlreadyExistsError, AbortedError, InvalidArgumentError with `.violations`, ...). Calls
have a default deadline (`Resilience.deadline`, or `timeout=` per call, never more than
the caller's own remaining deadline), and gRPC retries UNAVAILABLE with backoff when
that is safe (`IDEMPOTENT`): for reads, and for creates and updates because each
carries a request id (one is generated when the caller gives none). Deletes and
undeletes are not retried: a repeated one would fail as already done. A server restart
is ridden out: calls wait for the new server (`Resilience.ready_wait`), and reads,
creates and updates that no server answered go again (see `clients.base`).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence
from typing import ClassVar

from google.protobuf.field_mask_pb2 import FieldMask

from clients.base import Client, Resilience, Trailers
from mesh.projects.v1 import projects_pb2 as pb
from mesh.projects.v1 import projects_pb2_grpc
from mesh.projects.v1.projects_pb2 import Project

__all__ = ["Project", "ProjectsClient", "Resilience", "Trailers"]

IDEMPOTENT = frozenset(
    {
        "GetProject",
        "BatchGetProjects",
        "ListProjects",
        "CountProjects",
        "CreateProject",  # carries a request id
        "UpdateProject",  # carries a request id
    }
)


class ProjectsClient(Client):
    """See the module docstring; the arguments are `clients.base.Client`'s."""

    service: ClassVar[str] = "mesh.projects.v1.ProjectService"
    idempotent: ClassVar[frozenset[str]] = IDEMPOTENT

    @property
    def _stub(self) -> projects_pb2_grpc.ProjectServiceAsyncStub:
        return projects_pb2_grpc.ProjectServiceStub(self.channel)

    async def create_project(
        self,
        project: Project,
        *,
        project_id: str = "",
        request_id: str = "",
        validate_only: bool = False,
        timeout: float | None = None,
    ) -> Project:
        request = pb.CreateProjectRequest(
            project=project,
            project_id=project_id,
            request_id=request_id or str(uuid.uuid4()),
            validate_only=validate_only,
        )
        response = await self._unary("CreateProject", self._stub.CreateProject, request, timeout)
        return response.project

    async def get_project(
        self, name: str, *, timeout: float | None = None, trailers: Trailers | None = None
    ) -> Project:
        """One project; `trailers.cache` then says how the server's cache served it."""
        request = pb.GetProjectRequest(name=name)
        rpc = self._stub.GetProject
        response = await self._unary("GetProject", rpc, request, timeout, trailers)
        return response.project

    async def batch_get_projects(
        self,
        names: Sequence[str],
        *,
        timeout: float | None = None,
        trailers: Trailers | None = None,
    ) -> list[Project]:
        """The projects in the order of `names`; `trailers.cache` is "bypass" (it reads
        the database in one query)."""
        request = pb.BatchGetProjectsRequest(names=names)
        rpc = self._stub.BatchGetProjects
        response = await self._unary("BatchGetProjects", rpc, request, timeout, trailers)
        return list(response.projects)

    async def list_projects(
        self,
        *,
        filter: str = "",
        order_by: str = "",
        page_size: int = 0,
        page_token: str = "",
        show_deleted: bool = False,
        timeout: float | None = None,
    ) -> pb.ListProjectsResponse:
        """One page; pass `next_page_token` back for the next one."""
        request = pb.ListProjectsRequest(
            filter=filter,
            order_by=order_by,
            page_size=page_size,
            page_token=page_token,
            show_deleted=show_deleted,
        )
        return await self._unary("ListProjects", self._stub.ListProjects, request, timeout)

    async def iter_projects(
        self,
        *,
        filter: str = "",
        order_by: str = "",
        page_size: int = 0,
        show_deleted: bool = False,
    ) -> AsyncIterator[Project]:
        """Every matching project, page after page."""
        token = ""
        while True:
            page = await self.list_projects(
                filter=filter,
                order_by=order_by,
                page_size=page_size,
                page_token=token,
                show_deleted=show_deleted,
            )
            for project in page.projects:
                yield project
            token = page.next_page_token
            if not token:
                return

    async def count_projects(
        self, *, filter: str = "", show_deleted: bool = False, timeout: float | None = None
    ) -> int:
        request = pb.CountProjectsRequest(filter=filter, show_deleted=show_deleted)
        response = await self._unary("CountProjects", self._stub.CountProjects, request, timeout)
        return response.count

    async def update_project(
        self,
        project: Project,
        *,
        update_mask: Sequence[str] | None = None,
        etag: str = "",
        allow_missing: bool = False,
        request_id: str = "",
        timeout: float | None = None,
    ) -> Project:
        """Updates the fields named in `update_mask` (default: those set in `project`).

        The write is conditional on `etag`, or on `project.etag` when `project` is one read
        before: AbortedError (ETAG_MISMATCH) if someone has written since.
        """
        request = pb.UpdateProjectRequest(
            project=project,
            etag=etag,
            allow_missing=allow_missing,
            request_id=request_id or str(uuid.uuid4()),
        )
        if update_mask is not None:
            request.update_mask.CopyFrom(FieldMask(paths=update_mask))
        response = await self._unary("UpdateProject", self._stub.UpdateProject, request, timeout)
        return response.project

    async def delete_project(
        self, name: str, *, etag: str = "", timeout: float | None = None
    ) -> Project:
        """Soft-deletes; not retried, since a repeated delete would fail as already deleted."""
        request = pb.DeleteProjectRequest(name=name, etag=etag)
        response = await self._unary("DeleteProject", self._stub.DeleteProject, request, timeout)
        return response.project

    async def undelete_project(
        self, name: str, *, etag: str = "", timeout: float | None = None
    ) -> Project:
        request = pb.UndeleteProjectRequest(name=name, etag=etag)
        response = await self._unary(
            "UndeleteProject", self._stub.UndeleteProject, request, timeout
        )
        return response.project
