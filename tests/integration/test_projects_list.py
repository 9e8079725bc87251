"""ListProjects paging, page tokens and order_by through the typed client, on both databases."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from clients.projects import ProjectsClient
from core.data.pagination import MAX_PAGE_BYTES
from core.errors import InvalidArgumentError, ResourceExhaustedError
from mesh.projects.v1.projects_pb2 import Project
from tests.conftest import Running
from tests.integration._projects import a_project, insert_rows, violated_fields


async def create_named(projects: ProjectsClient, *names: str, owner: str = "users/alice") -> None:
    for name in names:
        await projects.create_project(a_project(display_name=name, owner=owner), project_id=name)


async def pages(projects: ProjectsClient, *, page_size: int, **query: Any) -> list[list[Project]]:
    """Every page of a listing, following next_page_token to the end."""
    found, token = [], ""
    while True:
        page = await projects.list_projects(page_size=page_size, page_token=token, **query)
        found.append(list(page.projects))
        token = page.next_page_token
        if not token:
            return found


def names(found: list[Project]) -> list[str]:
    return [p.name.removeprefix("projects/") for p in found]


def flat(paged: list[list[Project]]) -> list[str]:
    return [name for page in paged for name in names(page)]


# -- page size --------------------------------------------------------------------------------


async def test_page_size_zero_means_50_and_sizes_above_1000_are_capped(
    projects_server: Running, projects: ProjectsClient
) -> None:
    await insert_rows(projects_server, 1005)

    default = await projects.list_projects(page_size=0)
    capped = await projects.list_projects(page_size=5000)
    exact = await projects.list_projects(page_size=1000)

    assert len(default.projects) == 50
    assert default.next_page_token
    assert len(capped.projects) == 1000
    assert capped.next_page_token
    assert exact == capped
    rest = await projects.list_projects(page_size=1000, page_token=capped.next_page_token)
    assert len(rest.projects) == 5
    assert not rest.next_page_token


async def test_a_page_of_large_projects_ends_early_with_a_token(
    projects_server: Running, projects: ProjectsClient
) -> None:
    """A thousand large projects would pass gRPC's 4 MiB message limit and fail the call."""
    large = {"description": "x" * 4000, "labels": {f"k{i:02d}": "v" * 60 for i in range(64)}}
    await insert_rows(projects_server, 300, **large)

    paged = await pages(projects, page_size=1000)

    assert len(flat(paged)) == len(set(flat(paged))) == 300
    assert len(paged) > 1
    assert all(0 < sum(p.ByteSize() for p in page) <= MAX_PAGE_BYTES for page in paged)


async def test_a_batch_over_the_message_limit_is_refused_with_a_reason(
    projects_server: Running, projects: ProjectsClient
) -> None:
    large = {"description": "x" * 4000, "labels": {f"k{i:02d}": "v" * 60 for i in range(64)}}
    names = await insert_rows(projects_server, 600, **large)  # 8.5 KB each: 5 MB in all

    with pytest.raises(ResourceExhaustedError) as refused:
        await projects.batch_get_projects(names)

    assert refused.value.reason == "RESPONSE_TOO_LARGE"
    assert refused.value.metadata["limit"] == str(4 * 1024 * 1024)


async def test_a_negative_page_size_is_invalid(projects: ProjectsClient) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        await projects.list_projects(page_size=-1)

    assert caught.value.reason == "INVALID_PAGE_SIZE"
    assert violated_fields(caught.value) == ["page_size"]


async def test_an_empty_collection_is_one_empty_page(projects: ProjectsClient) -> None:
    page = await projects.list_projects()

    assert list(page.projects) == []
    assert page.next_page_token == ""


# -- paging -----------------------------------------------------------------------------------


async def test_small_pages_give_every_project_once_in_creation_order(
    projects: ProjectsClient,
) -> None:
    wanted = [f"proj-{i:02d}" for i in range(7)]
    await create_named(projects, *wanted)

    paged = await pages(projects, page_size=2)

    assert [len(p) for p in paged] == [2, 2, 2, 1]
    assert flat(paged) == wanted
    exact = await pages(projects, page_size=7)
    assert [len(p) for p in exact] == [7]  # a full last page has no empty page after it


async def test_equal_sort_keys_page_without_duplicates_or_gaps(
    projects_server: Running, projects: ProjectsClient
) -> None:
    inserted = await insert_rows(projects_server, 25)  # one create_time for all

    paged = await pages(projects, page_size=4)

    assert sorted(flat(paged)) == sorted(n.removeprefix("projects/") for n in inserted)
    assert len(flat(paged)) == 25


async def test_the_page_size_may_change_between_pages(projects: ProjectsClient) -> None:
    wanted = [f"proj-{i:02d}" for i in range(6)]
    await create_named(projects, *wanted)

    first = await projects.list_projects(page_size=2)
    second = await projects.list_projects(page_size=10, page_token=first.next_page_token)

    assert names(list(first.projects)) + names(list(second.projects)) == wanted


async def test_paging_while_projects_are_inserted_has_no_duplicates_or_gaps(
    projects: ProjectsClient,
) -> None:
    original = [f"mike{i:02d}" for i in range(12)]
    await create_named(projects, *original)
    seen: list[str] = []
    token, round_ = "", 0
    while True:
        page = await projects.list_projects(order_by="display_name", page_size=3, page_token=token)
        seen += names(list(page.projects))
        token = page.next_page_token
        if not token:
            break
        cursor = seen[-1]
        round_ += 1
        # Before every page, after the cursor (next in line) and after every page.
        await create_named(projects, f"alpha{round_:02d}", f"{cursor}a", f"zulu{round_:02d}")

    counts = Counter(seen)
    assert [n for n, c in counts.items() if c > 1] == []
    assert [n for n in original if n not in counts] == []
    assert seen == sorted(seen)
    assert not any(n.startswith("a") for n in seen)  # they sort before the cursor


async def test_paging_while_projects_are_created_in_default_order(
    projects: ProjectsClient,
) -> None:
    original = [f"proj-{i:02d}" for i in range(9)]
    await create_named(projects, *original)
    seen: list[str] = []
    token, round_ = "", 0
    while True:
        page = await projects.list_projects(page_size=2, page_token=token)
        seen += names(list(page.projects))
        token = page.next_page_token
        if not token or round_ == 4:
            break
        round_ += 1
        await create_named(projects, f"late-{round_}")

    assert Counter(seen).most_common(1)[0][1] == 1
    assert seen[:9] == original
    assert all(n.startswith("late-") for n in seen[9:])


# -- page tokens ------------------------------------------------------------------------------


async def page_token(projects: ProjectsClient, **query: Any) -> str:
    await create_named(projects, "proj-a", "proj-b", "proj-c")
    token = (await projects.list_projects(page_size=1, **query)).next_page_token
    assert token
    return token


def tampered(token: str) -> list[str]:
    middle = len(token) // 2
    flipped = "A" if token[middle] != "A" else "B"
    return [
        token[:middle] + flipped + token[middle + 1 :],
        token[:-1] + ("A" if token[-1] != "A" else "B"),
        token[::-1],
        token[:-4],
        token + "AAAA",
        "not a token",
        "é",
        "A" * 200,
    ]


async def test_a_tampered_page_token_is_invalid(projects: ProjectsClient) -> None:
    token = await page_token(projects)

    for bad in tampered(token):
        with pytest.raises(InvalidArgumentError) as caught:
            await projects.list_projects(page_size=1, page_token=bad)
        assert caught.value.reason == "INVALID_PAGE_TOKEN", bad
        assert violated_fields(caught.value) == ["page_token"]


async def test_a_page_token_used_with_another_query_is_invalid(
    projects: ProjectsClient,
) -> None:
    token = await page_token(projects)
    others: list[dict[str, Any]] = [
        {"filter": 'owner = "users/alice"'},
        {"order_by": "display_name"},
        {"order_by": "create_time desc"},
        {"show_deleted": True},
    ]

    for other in others:
        with pytest.raises(InvalidArgumentError) as caught:
            await projects.list_projects(page_size=1, page_token=token, **other)
        assert caught.value.reason == "INVALID_PAGE_TOKEN", other


async def test_a_page_token_works_with_the_same_query_spelled_alike(
    projects: ProjectsClient,
) -> None:
    token = await page_token(projects, order_by="display_name desc")

    page = await projects.list_projects(page_size=5, page_token=token, order_by="display_name desc")

    assert names(list(page.projects)) == ["proj-b", "proj-a"]


# -- order_by ---------------------------------------------------------------------------------


async def test_order_by_display_name_desc_pages_in_order(projects: ProjectsClient) -> None:
    await create_named(projects, "kilo", "alpha", "mike", "bravo", "zulu", "echo")

    paged = await pages(projects, page_size=2, order_by="display_name desc")

    assert flat(paged) == ["zulu", "mike", "kilo", "echo", "bravo", "alpha"]


async def test_order_by_create_time_lists_oldest_first(projects: ProjectsClient) -> None:
    await create_named(projects, "zulu", "alpha", "mike")

    found = list((await projects.list_projects(order_by="create_time")).projects)
    newest_first = list((await projects.list_projects(order_by="create_time desc")).projects)

    assert names(found) == ["zulu", "alpha", "mike"]
    assert names(newest_first) == ["mike", "alpha", "zulu"]


async def test_ties_in_order_by_are_broken_the_same_way_on_every_page(
    projects: ProjectsClient,
) -> None:
    await create_named(projects, "proj-e", "proj-b", "proj-g", owner="users/bob")
    await create_named(projects, "proj-d", "proj-a", "proj-f", "proj-c", owner="users/alice")

    whole = names(list((await projects.list_projects(order_by="owner")).projects))
    paged = await pages(projects, page_size=2, order_by="owner")
    again = names(list((await projects.list_projects(order_by="owner")).projects))

    assert flat(paged) == whole == again
    assert sorted(whole[:4]) == ["proj-a", "proj-c", "proj-d", "proj-f"]  # users/alice first
    assert sorted(whole[4:]) == ["proj-b", "proj-e", "proj-g"]


async def test_order_by_several_fields_each_with_its_direction(projects: ProjectsClient) -> None:
    await create_named(projects, "bravo", "alpha", owner="users/alice")
    await create_named(projects, "delta", "charlie", owner="users/bob")

    paged = await pages(projects, page_size=1, order_by="owner desc, display_name")
    asc = await projects.list_projects(order_by="owner asc,display_name ASC")

    assert flat(paged) == ["charlie", "delta", "alpha", "bravo"]
    assert names(list(asc.projects)) == ["alpha", "bravo", "charlie", "delta"]


BAD_ORDER_BY = [
    "labels",
    "name",
    "etag",
    "description",
    "display_name sideways",
    "display_name, display_name",
    "display_name,",
    "display_name; DROP TABLE projects",
    "display_name desc extra",
]


async def test_an_order_by_outside_the_whitelist_is_invalid(projects: ProjectsClient) -> None:
    for order_by in BAD_ORDER_BY:
        with pytest.raises(InvalidArgumentError) as caught:
            await projects.list_projects(order_by=order_by)
        assert caught.value.reason == "INVALID_ORDER_BY", order_by
        assert violated_fields(caught.value) == ["order_by"]


# -- show_deleted -----------------------------------------------------------------------------


async def test_soft_deleted_projects_are_listed_only_with_show_deleted(
    projects: ProjectsClient,
) -> None:
    await create_named(projects, "proj-a", "proj-b", "proj-c")
    await projects.delete_project("projects/proj-b")

    active = await projects.list_projects()
    everything = await pages(projects, page_size=1, show_deleted=True)

    assert names(list(active.projects)) == ["proj-a", "proj-c"]
    assert flat(everything) == ["proj-a", "proj-b", "proj-c"]
    assert [p.state for p in everything[1]] == [Project.STATE_DELETED]
