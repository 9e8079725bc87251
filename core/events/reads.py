"""Shared reads of the store: one read of a page serves every subscription that wants it.

Subscriptions catching up from one position (after a deploy, or a fan-out) read the same
pages: one store read serves those that ask while it runs, and the last SHARED_PAGES full
pages are kept, since stored events never change (one trimmed by retention meanwhile may
still be served from here, which loses nothing). A page that reached the head, or failed,
is not kept: the next read may find more.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict

from core.events.model import EventStream, Page, Selector
from core.runtime.tasks import ShieldedWork

READ_BATCH = 500
SHARED_PAGES = 8  # full pages of stored events kept for subscribers reading the same ones


class SharedReads:
    """Pages of the store, read once for every subscription that asks for them.

    Args:
        store: The stream read.
        work: Where reads run, so that the bus's stop waits for them.
    """

    def __init__(self, store: EventStream, work: ShieldedWork) -> None:
        self._store = store
        self._work = work
        self._pages: OrderedDict[tuple[str, Selector], asyncio.Future[Page]] = OrderedDict()

    def clear(self) -> None:
        """Forgets the kept pages (the store lost events, or the bus restarts)."""
        self._pages.clear()

    async def read(self, after: str, selector: Selector) -> Page:
        """The page after `after`, shared with every subscription reading it meanwhile.

        After a full page the next one is read ahead while this one is delivered, when
        the store's reads run elsewhere (`read_ahead`).
        """
        page = await asyncio.shield(self._page(after, selector))
        if self._store.read_ahead and len(page.events) == READ_BATCH and not page.at_head:
            self._page(page.covered, selector)
        return page

    def _page(self, after: str, selector: Selector) -> asyncio.Future[Page]:
        """The shared read of the page after `after`: under way, kept, or started now."""
        key = (after, selector)
        shared = self._pages.get(key)
        if shared is not None:
            self._pages.move_to_end(key)
            return shared
        read = self._store.read(after, selector, READ_BATCH)
        shared = self._pages[key] = self._work.owned(read)
        shared.add_done_callback(lambda done: self._keep(key, done))
        while len(self._pages) > SHARED_PAGES:
            self._pages.popitem(last=False)
        return shared

    def _keep(self, key: tuple[str, Selector], done: asyncio.Future[Page]) -> None:
        full = not done.cancelled() and done.exception() is None
        if full:
            page = done.result()
            full = len(page.events) == READ_BATCH and not page.at_head
        if not full and self._pages.get(key) is done:
            del self._pages[key]
