"""A publish that reaches Redis after it lost its data (a restart without persistence)
reports the gap first, as of the last event the store had, and only then stores anew:
background publishers (system events) must not hide or shift the loss."""

from __future__ import annotations

from structlog.testing import capture_logs

from core.events.model import GapCause, Lost
from tests.integration._events import drop_namespace
from tests.integration.test_event_store import Opened, an_event
from tests.integration.test_event_store import redis_backend as redis_backend  # fixture


async def test_a_publish_after_redis_lost_its_data_reports_the_gap_first(
    redis_backend: Opened,
) -> None:
    store = redis_backend.store
    before = await store.append([an_event(), an_event()])
    await redis_backend.wait_seen(2)
    await drop_namespace(redis_backend.namespace)  # what an empty restart leaves
    with capture_logs() as logs:
        [after] = await store.append([an_event(id="after")])

    [gap] = [e for e in logs if e["event"] == "event.gap"]
    assert gap["last_position"] == before[-1].position
    assert redis_backend.lost == [Lost(before[-1].position, GapCause.STORE_LOST)]
    found = await store.get("after")
    assert found is not None
    assert found.position == after.position
