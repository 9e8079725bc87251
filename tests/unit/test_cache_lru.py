"""The in-process tier of core.resources.cache against a model LRU, with no Redis and no sockets."""

from __future__ import annotations

import asyncio
from collections import OrderedDict

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.resources.cache import Cache

KEYS = "abcdef"
MAX_ENTRIES, MAX_BYTES = 4, 24

operations = st.lists(
    st.tuples(st.sampled_from(["get", "invalidate"]), st.sampled_from(KEYS), st.integers(0, 30)),
    max_size=40,
)


def model_get(model: OrderedDict[str, int], key: str, size: int) -> None:
    if key in model:
        model.move_to_end(key)
        return
    if size > MAX_BYTES:
        return
    model[key] = size
    while len(model) > MAX_ENTRIES or sum(model.values()) > MAX_BYTES:
        model.popitem(last=False)


async def replay(ops: list[tuple[str, str, int]]) -> None:
    cache = Cache(max_entries=MAX_ENTRIES, max_bytes=MAX_BYTES)
    model: OrderedDict[str, int] = OrderedDict()
    for op, key, size in ops:
        if op == "get":

            async def load(size: int = size) -> bytes | None:
                return b"x" * size

            value = await cache.get(key, load)
            assert value is not None
            model_get(model, key, size)
            assert len(value) == model.get(key, len(value))
        else:
            await cache.invalidate(key)
            model.pop(key, None)
        assert {k for k in KEYS if k in cache} == set(model)
        assert cache.stats()["bytes"] == sum(model.values())
        assert cache.stats()["entries"] == len(model) <= MAX_ENTRIES


@settings(max_examples=200, deadline=None)
@given(operations)
def test_local_tier_behaves_like_a_bounded_lru(ops: list[tuple[str, str, int]]) -> None:
    asyncio.run(replay(ops))


@pytest.mark.parametrize("bad", [{"max_entries": 0}, {"ttl": 0.0}, {"negative_ttl": -1.0}])
def test_limits_must_be_positive(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="positive"):
        Cache(**bad)  # type: ignore[arg-type]
