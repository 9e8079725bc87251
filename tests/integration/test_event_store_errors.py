"""What the stores keep of each failed attempt (type, message, stack, member, reason) and
the dead letters they announce, on SQLite, PostgreSQL and Redis."""

from __future__ import annotations

import pytest

from core.events.failures import (
    MAX_ERROR_CHARS,
    MAX_ERROR_TYPE_CHARS,
    MAX_STACK_CHARS,
    DeadLetter,
    EndReason,
    Failure,
)
from core.events.model import EventStore, Policy, State
from tests.integration import test_event_store as base
from tests.integration.test_event_store import EVERYTHING, SLOW, an_event, until

backend = base.backend  # the fixture: a fresh store on SQLite, PostgreSQL and Redis


@pytest.fixture
async def store(backend: base.Opened) -> EventStore:
    return backend.store


def listen(store: EventStore) -> list[DeadLetter]:
    letters: list[DeadLetter] = []
    store.on_dead_letter = letters.append
    return letters


async def test_a_nack_keeps_the_failures_type_and_stack_cut_to_size(store: EventStore) -> None:
    await store.join("workers", EVERYTHING, "")
    await store.append([an_event(id="e1")])
    await store.claim("workers", "m1", 10, SLOW)
    failure = Failure("ignored: `error` is the message", "x." * 200, "frame\n" * 2000 + "Boom")
    await store.nack("workers", "e1", delay=60, park=False, error="m" * 5000, policy=SLOW,
                     failure=failure)  # fmt: skip
    [status] = await store.status("e1")

    [error] = status.errors
    assert (error.attempt, error.consumer, error.reason) == (1, "m1", EndReason.NACKED)
    assert error.message == "m" * MAX_ERROR_CHARS
    assert error.error_type == ("x." * 200)[:MAX_ERROR_TYPE_CHARS]
    assert len(error.stack) == MAX_STACK_CHARS
    assert error.stack.endswith("frame\nBoom")


async def test_each_dead_letter_is_announced_once_with_its_last_error(store: EventStore) -> None:
    letters = listen(store)
    once = Policy(visibility=0.2, max_attempts=1)
    await store.join("workers", EVERYTHING, "")
    await store.append([an_event("a.b.parked", id="p"), an_event(id="t", subject="things/2")])
    await store.claim("workers", "m1", 10, once)
    failure = Failure("", "ValueError", "Traceback ...\nValueError: bad")
    parked = await store.nack(
        "workers", "p", delay=0, park=True, error="bad", policy=once, failure=failure
    )
    again = await store.nack("workers", "p", delay=0, park=True, error="bad", policy=once)

    async def timed_out() -> bool:  # once past the visibility timeout, a claim gives "t" up
        await store.claim("workers", "m2", 10, once)
        return len(letters) == 2

    await until(timed_out)

    assert (parked, again) == (State.DEAD_LETTERED, State.DEAD_LETTERED)
    first, second = letters
    assert (first.group, first.event_id, first.event_type, first.attempts) == (
        "workers",
        "p",
        "a.b.parked",
        1,
    )
    assert first.last is not None
    assert (first.last.error_type, first.last.message) == ("ValueError", "bad")
    assert (second.event_id, second.subject) == ("t", "things/2")
    assert second.last is not None
    assert second.last.reason == EndReason.TIMED_OUT
    assert second.last.consumer == "m1"
