"""`mesh projects ...`: the projects service from the command line, JSON in and out."""

from __future__ import annotations

import argparse
from typing import Any

from google.protobuf.message import Message

from cli import output
from cli.commands import Call, add_call
from clients.projects import Project, ProjectsClient, Trailers
from core.errors import InvalidArgumentError


def add_commands(commands: Any) -> None:
    """Adds `projects` and its subcommands to the `mesh` parser."""
    parser = commands.add_parser("projects", help="create, read, list and change projects")
    sub = parser.add_subparsers(required=True, metavar="ACTION")

    create = _command(sub, "create", "create a project", _create)
    create.add_argument("--id", default="", help="project id (server-chosen when omitted)")
    _fields(create, required=True)
    create.add_argument("--request-id", default="", help="UUID making retries safe")
    create.add_argument("--validate-only", action="store_true")

    get = _command(sub, "get", "show one project", _get)
    get.add_argument("name", help="projects/ID or ID")
    get.add_argument(
        "--verbose",
        action="store_true",
        help="also say on stderr how the server's cache served the read",
    )

    listing = _command(sub, "list", "list projects", _list)
    _query(listing)
    listing.add_argument("--order-by", default="", help='e.g. "display_name desc"')
    listing.add_argument("--page-size", type=int, default=0)
    listing.add_argument("--page-token", default="")

    count = _command(sub, "count", "count projects", _count)
    _query(count)

    update = _command(sub, "update", "change a project", _update)
    update.add_argument("name", help="projects/ID or ID")
    _fields(update, required=False)
    update.add_argument("--mask", help="comma-separated fields to write (default: those given)")
    update.add_argument("--etag", default="", help="only if the project still has this etag")
    update.add_argument("--allow-missing", action="store_true", help="create it if missing")

    for action, verb in (("delete", _delete), ("undelete", _undelete)):
        cmd = _command(sub, action, f"{action} a project", verb)
        cmd.add_argument("name", help="projects/ID or ID")
        cmd.add_argument("--etag", default="", help="only if the project still has this etag")


def _command(sub: Any, name: str, help: str, call: Call[ProjectsClient]) -> argparse.ArgumentParser:
    return add_call(sub, name, help, ProjectsClient, call)


def _fields(parser: argparse.ArgumentParser, *, required: bool) -> None:
    parser.add_argument("--display-name", required=required)
    parser.add_argument("--description")
    types = [n.removeprefix("PROJECT_TYPE_") for n in Project.ProjectType.keys()[1:]]
    parser.add_argument(
        "--type", required=required, choices=types, help="set on create, then fixed"
    )
    parser.add_argument("--owner", help="e.g. alice (default: the caller; others need admin)")
    parser.add_argument("--label", action="append", default=[], metavar="KEY=VALUE")


def _query(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--filter", default="", help='AIP-160, e.g. labels.team = "core"')
    parser.add_argument("--show-deleted", action="store_true")


def _project(args: argparse.Namespace) -> tuple[Project, list[str]]:
    """The project the flags describe, and the fields they set."""
    project, given = Project(), []
    for flag, field in (("display_name", "display_name"), ("description", "description")):
        if getattr(args, flag) is not None:
            setattr(project, field, getattr(args, flag))
            given.append(field)
    if args.type:
        project.project_type = Project.ProjectType.Value(f"PROJECT_TYPE_{args.type}")
        given.append("project_type")
    if args.owner is not None:
        project.owner = args.owner
        given.append("owner")
    if args.label:
        for item in args.label:
            key, sep, value = item.partition("=")
            if not sep:
                raise InvalidArgumentError(f"--label {item!r} must be KEY=VALUE")
            project.labels[key] = value
        given.append("labels")
    return project, given


async def _create(client: ProjectsClient, args: argparse.Namespace) -> Message:
    project, _ = _project(args)
    return await client.create_project(
        project, project_id=args.id, request_id=args.request_id, validate_only=args.validate_only
    )


async def _get(client: ProjectsClient, args: argparse.Namespace) -> Message:
    if not args.verbose:
        return await client.get_project(_name(args.name))
    trailers = Trailers()
    try:
        return await client.get_project(_name(args.name), trailers=trailers)
    finally:  # a cached NOT_FOUND says it too
        output.notice(f"cache: {trailers.cache or 'not reported'}")


async def _list(client: ProjectsClient, args: argparse.Namespace) -> Message:
    return await client.list_projects(
        filter=args.filter,
        order_by=args.order_by,
        page_size=args.page_size,
        page_token=args.page_token,
        show_deleted=args.show_deleted,
    )


async def _count(client: ProjectsClient, args: argparse.Namespace) -> dict[str, Any]:
    return {
        "count": await client.count_projects(filter=args.filter, show_deleted=args.show_deleted)
    }


async def _update(client: ProjectsClient, args: argparse.Namespace) -> Message:
    project, given = _project(args)
    project.name = _name(args.name)
    mask = args.mask.split(",") if args.mask else given
    return await client.update_project(
        project, update_mask=mask, etag=args.etag, allow_missing=args.allow_missing
    )


async def _delete(client: ProjectsClient, args: argparse.Namespace) -> Message:
    return await client.delete_project(_name(args.name), etag=args.etag)


async def _undelete(client: ProjectsClient, args: argparse.Namespace) -> Message:
    return await client.undelete_project(_name(args.name), etag=args.etag)


def _name(name_or_id: str) -> str:
    return name_or_id if name_or_id.startswith("projects/") else f"projects/{name_or_id}"
