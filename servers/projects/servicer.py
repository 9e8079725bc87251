"""ProjectService: protobuf in, the CRUD engine, protobuf out. No SQL, no rules."""

from __future__ import annotations

from core.resources.crud import Crud
from core.runtime.boundary import Context
from mesh.projects.v1 import projects_pb2 as pb
from mesh.projects.v1 import projects_pb2_grpc


class ProjectServicer(projects_pb2_grpc.ProjectServiceServicer):
    def __init__(self, projects: Crud[pb.Project]) -> None:
        self._projects = projects

    async def CreateProject(
        self, request: pb.CreateProjectRequest, context: Context
    ) -> pb.CreateProjectResponse:
        project = await self._projects.create(
            request.project,
            resource_id=request.project_id,
            request_id=request.request_id,
            validate_only=request.validate_only,
            request=request,
            id_field="project_id",
        )
        return pb.CreateProjectResponse(project=project)

    async def GetProject(
        self, request: pb.GetProjectRequest, context: Context
    ) -> pb.GetProjectResponse:
        return pb.GetProjectResponse(project=await self._projects.get(request.name))

    async def BatchGetProjects(
        self, request: pb.BatchGetProjectsRequest, context: Context
    ) -> pb.BatchGetProjectsResponse:
        projects = await self._projects.batch_get(list(request.names))
        return pb.BatchGetProjectsResponse(projects=projects)

    async def ListProjects(
        self, request: pb.ListProjectsRequest, context: Context
    ) -> pb.ListProjectsResponse:
        projects, token = await self._projects.list_page(
            size=request.page_size,
            token=request.page_token,
            filter=request.filter,
            order_by=request.order_by,
            show_deleted=request.show_deleted,
        )
        return pb.ListProjectsResponse(projects=projects, next_page_token=token)

    async def CountProjects(
        self, request: pb.CountProjectsRequest, context: Context
    ) -> pb.CountProjectsResponse:
        count = await self._projects.count(filter=request.filter, show_deleted=request.show_deleted)
        return pb.CountProjectsResponse(count=count)

    async def UpdateProject(
        self, request: pb.UpdateProjectRequest, context: Context
    ) -> pb.UpdateProjectResponse:
        project = await self._projects.update(
            request.project,
            mask=request.update_mask if request.HasField("update_mask") else None,
            etag=request.etag,
            allow_missing=request.allow_missing,
            request_id=request.request_id,
            request=request,
        )
        return pb.UpdateProjectResponse(project=project)

    async def DeleteProject(
        self, request: pb.DeleteProjectRequest, context: Context
    ) -> pb.DeleteProjectResponse:
        project = await self._projects.delete(request.name, etag=request.etag)
        return pb.DeleteProjectResponse(project=project)

    async def UndeleteProject(
        self, request: pb.UndeleteProjectRequest, context: Context
    ) -> pb.UndeleteProjectResponse:
        project = await self._projects.undelete(request.name, etag=request.etag)
        return pb.UndeleteProjectResponse(project=project)
