"""The in-process tier of `core.resources.cache`: an LRU of byte values bounded by count and
total size.

Each entry lives for the seconds given when it is stored (callers add any jitter). A value
larger than the byte bound is not kept; storing past either bound evicts the least recently
used entries and counts them. Not thread-safe: one event loop owns a tier.

Usage::

    tier = LocalTier(max_entries=10_000, max_bytes=64 * 1024 * 1024)
    tier.store("project:p1", raw, ttl=300.0)     # None is a value too: "no such resource"
    entry = tier.lookup("project:p1")            # None when absent or expired
    value = entry.value if entry is not None else await load()
    tier.drop("project:p1")                      # after a write
    tier.evictions, len(tier), tier.total_bytes  # for stats
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(slots=True)
class Entry:
    """One cached value; `value` None remembers a missing resource."""

    value: bytes | None
    size: int
    expires: float  # time.monotonic()


class LocalTier:
    """Least-recently-used entries, at most `max_entries` of them and `max_bytes` in values."""

    def __init__(self, max_entries: int, max_bytes: int) -> None:
        if max_entries < 1 or max_bytes < 0:
            raise ValueError("local tier limits must be positive")
        self._max_entries, self._max_bytes = max_entries, max_bytes
        self._entries: OrderedDict[str, Entry] = OrderedDict()
        self._bytes = 0
        self.evictions = 0  # entries pushed out by the bounds; expiries and drops not counted

    def __len__(self) -> int:
        """Entries held, expired ones not yet noticed included."""
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        """True if a live entry is held for `key`; does not touch LRU order."""
        entry = self._entries.get(key) if isinstance(key, str) else None
        return entry is not None and entry.expires > time.monotonic()

    @property
    def total_bytes(self) -> int:
        """Value bytes held."""
        return self._bytes

    def lookup(self, key: str) -> Entry | None:
        """The live entry for `key`, now the most recently used; None if absent or expired."""
        entry = self._entries.get(key)
        if entry is not None and entry.expires <= time.monotonic():
            self.drop(key)
            return None
        if entry is not None:
            self._entries.move_to_end(key)
        return entry

    def store(self, key: str, value: bytes | None, ttl: float) -> None:
        """Holds `value` for `ttl` seconds, replacing any entry; a too-large value is skipped."""
        self.drop(key)
        size = 0 if value is None else len(value)
        if size > self._max_bytes:
            return
        self._entries[key] = Entry(value, size, time.monotonic() + ttl)
        self._bytes += size
        while len(self._entries) > self._max_entries or self._bytes > self._max_bytes:
            _, evicted = self._entries.popitem(last=False)
            self._bytes -= evicted.size
            self.evictions += 1

    def drop(self, key: str) -> None:
        """Forgets `key` if held."""
        entry = self._entries.pop(key, None)
        if entry is not None:
            self._bytes -= entry.size

    def drop_where(self, matches: Callable[[str], bool]) -> None:
        """Forgets every entry whose key `matches`."""
        for key in [k for k in self._entries if matches(k)]:
            self.drop(key)

    def clear(self) -> None:
        """Forgets every entry; the eviction count stays."""
        self._entries.clear()
        self._bytes = 0
