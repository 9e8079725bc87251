"""Page sizes and signed page tokens of list calls; they live in `core.data.pagination`.

The event system pages its stored events with them too, and it sits below this layer.
"""

from __future__ import annotations

from core.data.pagination import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, PageTokens, page_size

__all__ = ["DEFAULT_PAGE_SIZE", "MAX_PAGE_SIZE", "PageTokens", "page_size"]
