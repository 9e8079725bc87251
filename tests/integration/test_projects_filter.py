"""ListProjects and CountProjects filters through the service, on SQLite and PostgreSQL."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from datetime import UTC, timedelta, timezone

import pytest

from clients.projects import ProjectsClient
from core.errors import DomainError, InvalidArgumentError
from mesh.projects.v1.projects_pb2 import Project
from tests.conftest import Running
from tests.integration._projects import client_of, project_rows, violated_fields

T = Project.ProjectType
SEED = [
    # id, display_name, description, type, owner, labels
    ("alpha", "Alpha reel", "first", T.PROJECT_TYPE_MUSIC_CLIP, "users/alice",
     {"env": "prod", "team": "core"}),
    ("bravo", "Bravo cut", "", T.PROJECT_TYPE_VIDEO_EDIT, "users/bob", {"env": "dev"}),
    ("charlie", "Charlie mix", "third", T.PROJECT_TYPE_AUDIO_EDIT, "users/alice",
     {"team": "core", "canary": "true"}),
    ("delta", "Delta pics", "", T.PROJECT_TYPE_IMAGE_EDIT, "users/carol", {"cost-center": "42"}),
    ("echo", "Echo custom", "gone", T.PROJECT_TYPE_CUSTOM, "users/bob", {"env": "prod"}),
]  # fmt: skip
ACTIVE = {"alpha", "bravo", "charlie", "delta"}


@pytest.fixture
async def projects(projects_server: Running) -> AsyncIterator[ProjectsClient]:
    async with client_of(projects_server) as client:
        for project_id, display_name, description, type_, owner, labels in SEED:
            project = Project(
                display_name=display_name,
                description=description,
                project_type=type_,
                owner=owner,
                labels=labels,
            )
            await client.create_project(project, project_id=project_id)
        await client.delete_project("projects/echo")
        yield client


async def matching(
    projects: ProjectsClient, filter: str, *, show_deleted: bool = False
) -> set[str]:
    """The ids a filter lists, checked against what CountProjects says."""
    page = await projects.list_projects(filter=filter, page_size=100, show_deleted=show_deleted)
    found = {p.name.removeprefix("projects/") for p in page.projects}
    assert len(found) == len(page.projects)
    assert await projects.count_projects(filter=filter, show_deleted=show_deleted) == len(found)
    return found


async def check_all(
    projects: ProjectsClient, cases: dict[str, set[str]], *, show_deleted: bool = False
) -> None:
    wrong = {}
    for filter, expected in cases.items():
        found = await matching(projects, filter, show_deleted=show_deleted)
        if found != expected:
            wrong[filter] = (sorted(found), sorted(expected))
    assert wrong == {}


async def test_comparisons_on_strings(projects: ProjectsClient) -> None:
    await check_all(
        projects,
        {
            'owner = "users/alice"': {"alpha", "charlie"},
            "owner = 'users/alice'": {"alpha", "charlie"},
            'owner != "users/alice"': {"bravo", "delta"},
            'display_name < "C"': {"alpha", "bravo"},
            'display_name <= "Charlie mix"': {"alpha", "bravo", "charlie"},
            'display_name > "Charlie mix"': {"delta"},
            'display_name >= "Charlie mix"': {"charlie", "delta"},
            'display_name = "Al*"': {"alpha"},
            'display_name != "Al*"': {"bravo", "charlie", "delta"},
            'display_name = "alpha reel"': set(),
            "description:*": {"alpha", "charlie"},
            'description = ""': {"bravo", "delta"},
        },
    )


async def test_and_or_not_and_parentheses(projects: ProjectsClient) -> None:
    await check_all(
        projects,
        {
            'owner = "users/alice" AND project_type = AUDIO_EDIT': {"charlie"},
            'owner = "users/alice" project_type = AUDIO_EDIT': {"charlie"},
            'owner = "users/bob" OR labels.team = "core"': {"alpha", "bravo", "charlie"},
            'NOT owner = "users/alice"': {"bravo", "delta"},
            '-owner = "users/alice"': {"bravo", "delta"},
            '(owner = "users/alice" OR owner = "users/carol") AND labels.env = "prod"': {"alpha"},
            'owner = "users/bob" OR owner = "users/carol" labels.env = "dev"': {"bravo"},
            'NOT (owner = "users/alice" OR owner = "users/bob")': {"delta"},
            '((((owner = "users/carol"))))': {"delta"},
        },
    )


async def test_labels_by_key_and_presence(projects: ProjectsClient) -> None:
    await check_all(
        projects,
        {
            'labels.env = "prod"': {"alpha"},
            'labels.env != "prod"': {"bravo"},
            'NOT labels.env = "prod"': {"bravo"},
            "labels:canary": {"charlie"},
            "labels.canary:*": {"charlie"},
            "labels:team": {"alpha", "charlie"},
            'labels.team = "core" AND labels.env = "prod"': {"alpha"},
            'labels.env = "pr*"': {"alpha"},
            'labels."team" = "core"': {"alpha", "charlie"},
            "labels:nothing": set(),
            'labels.cost-center = "42"': {"delta"},
            "labels:cost-center": {"delta"},
        },
    )


async def test_enums_with_and_without_quotes(projects: ProjectsClient) -> None:
    await check_all(
        projects,
        {
            "project_type = MUSIC_CLIP": {"alpha"},
            'project_type = "VIDEO_EDIT"': {"bravo"},
            "project_type != MUSIC_CLIP": {"bravo", "charlie", "delta"},
            "project_type = CUSTOM": set(),
            "state = ACTIVE": ACTIVE,
            "state = DELETED": set(),
        },
    )


async def test_enums_by_their_full_proto_names(projects: ProjectsClient) -> None:
    """The contract: enum values *may* be written without their prefix, so the full name works."""
    await check_all(
        projects,
        {"project_type = PROJECT_TYPE_MUSIC_CLIP": {"alpha"}, "state = STATE_ACTIVE": ACTIVE},
    )


async def test_state_and_delete_time_with_show_deleted(projects: ProjectsClient) -> None:
    await check_all(
        projects,
        {
            "state = DELETED": {"echo"},
            "state = ACTIVE": ACTIVE,
            "project_type = CUSTOM": {"echo"},
            "delete_time:*": {"echo"},
            'labels.env = "prod"': {"alpha", "echo"},
            "": ACTIVE | {"echo"},
        },
        show_deleted=True,
    )


async def test_timestamps_in_any_offset(projects: ProjectsClient) -> None:
    charlie = await projects.get_project("projects/charlie")
    at = charlie.create_time.ToDatetime(tzinfo=UTC)
    utc = charlie.create_time.ToJsonString()
    plus_two = at.astimezone(timezone(timedelta(hours=2))).isoformat()
    minus_five = at.astimezone(timezone(timedelta(hours=-5))).isoformat()

    await check_all(
        projects,
        {
            f'create_time > "{utc}"': {"delta"},
            f'create_time >= "{utc}"': {"charlie", "delta"},
            f'create_time < "{utc}"': {"alpha", "bravo"},
            f'create_time = "{utc}"': {"charlie"},
            f'create_time = "{plus_two}"': {"charlie"},
            f'create_time >= "{minus_five}"': {"charlie", "delta"},
            'create_time > "2000-01-01T00:00:00Z"': ACTIVE,
            'create_time < "2000-01-01T00:00:00+14:00"': set(),
            f'update_time >= "{utc}" AND update_time <= "{utc}"': {"charlie"},
        },
    )


async def test_sql_injection_in_a_filter_matches_nothing_and_changes_nothing(
    projects_server: Running, projects: ProjectsClient
) -> None:
    await check_all(
        projects,
        {
            'display_name = "x\' OR 1=1 --"': set(),
            'display_name = "x\\" OR \\"1\\"=\\"1"': set(),
            'labels.a = "1); DROP TABLE projects; --"': set(),
            'owner = "\'; DELETE FROM projects; --"': set(),
            'description = "%"': set(),
            'display_name = "_lpha reel"': set(),
            'owner = "users/%"': set(),
        },
    )

    assert await project_rows(projects_server) == 5
    assert await projects.count_projects(show_deleted=True) == 5


HOSTILE = [
    "(" * 100 + 'owner = "x"' + ")" * 100,
    "NOT " * 500 + 'owner = "x"',
    " OR ".join(['owner = "x"'] * 100),
    "a" * 3000,
    'owner = "x\x00"',
    "owner = \x00",
    ")",
    "owner = ",
    'owner = "unterminated',
    "unknown_field = 1",
    'labels.env > "a"',
    'labels."a\') OR 1=1 --" = "x"',
    'labels.="x"',
    'create_time > "yesterday"',
    'create_time > "2026-02-30T00:00:00Z"',
    'create_time > "0001-01-01T00:00:00+01:00"',
    'create_time > "9999-12-31T23:59:59-01:00"',
    "project_type = BANANA",
    "project_type < MUSIC_CLIP",
    "display_name = 5",
    'owner = "x" AND',
    "AND",
    'owner = "a*b"',
    'display_name > "x*"',
    "owner:x",
    "labels = x",
    "labels.a.b = 'x'",
    '"owner" = "x"',
    "owner = 'x' ; DROP TABLE projects",
    "owner = `x`",
    'owner = "\\q"',
    "state = DELETED)",
    "NOT",
    "-",
    'owner = "\u202e""',
]


async def test_malformed_and_hostile_filters_are_invalid_with_a_position(
    projects: ProjectsClient,
) -> None:
    wrong = {}
    for filter in HOSTILE:
        for call in (
            projects.list_projects(filter=filter),
            projects.count_projects(filter=filter),
        ):
            try:
                await call
            except InvalidArgumentError as exc:
                if exc.reason != "INVALID_FILTER" or violated_fields(exc) != ["filter"]:
                    wrong[filter] = f"{exc.reason} {violated_fields(exc)}"
                elif not exc.metadata.get("position", "").isdigit():
                    wrong[filter] = f"no position: {exc.metadata}"
                elif "position" not in exc.message:
                    wrong[filter] = f"message without position: {exc.message}"
            except DomainError as exc:
                wrong[filter] = f"{type(exc).__name__}: {exc}"
            else:
                wrong[filter] = "accepted"
    assert wrong == {}


WORDS = [
    "owner", "display_name", "labels", "labels.env", "project_type", "state", "create_time",
    "delete_time", "description", "=", "!=", "<", ">=", ":", "*", "(", ")", "AND", "OR", "NOT",
    "-", '"users/alice"', "'x'", "MUSIC_CLIP", "DELETED", '"2026-01-01T00:00:00Z"', "5", "1.5e3",
    "true", ".", '"a*"', "env", '"\\""', "nothing",
]  # fmt: skip


async def test_random_filters_either_work_or_are_invalid_never_internal(
    projects: ProjectsClient,
) -> None:
    rng = random.Random(160)
    wrong = {}
    for _ in range(150):
        filter = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 9)))
        try:
            await projects.count_projects(filter=filter, show_deleted=rng.random() < 0.5)
        except InvalidArgumentError as exc:
            if exc.reason != "INVALID_FILTER":
                wrong[filter] = exc.reason
        except DomainError as exc:
            wrong[filter] = f"{type(exc).__name__}: {exc}"
    assert wrong == {}


async def test_count_with_and_without_filters_and_show_deleted(projects: ProjectsClient) -> None:
    assert await projects.count_projects() == 4
    assert await projects.count_projects(show_deleted=True) == 5
    assert await projects.count_projects(filter='owner = "users/bob"') == 1
    assert await projects.count_projects(filter='owner = "users/bob"', show_deleted=True) == 2
    assert await projects.count_projects(filter="state = DELETED") == 0
    assert await projects.count_projects(filter="state = DELETED", show_deleted=True) == 1
    with pytest.raises(InvalidArgumentError) as caught:
        await projects.count_projects(filter="owner ==")
    assert caught.value.reason == "INVALID_FILTER"
    assert caught.value.metadata["position"] == "8"
