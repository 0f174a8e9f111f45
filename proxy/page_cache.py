"""`RenderedPages`: rewritten pages kept so a repeat request need not parse the page again.

Keyed by the page's final URL and the SHA-256 of the bytes the upstream sent, so a changed page is never
answered from here; the page proxy also serves a kept page only while each of its images still gets the
mark it was rendered with (a correction or a new model renders afresh). Bounded in bytes, least recently
used out first.
"""

from __future__ import annotations

from dataclasses import dataclass

from cachetools import LRUCache

from proxy.rewrite import ImageRef, Mark


@dataclass(frozen=True, slots=True)
class RenderedPage:
    body: bytes
    refs: tuple[ImageRef, ...]
    marks: tuple[Mark | None, ...]  # what each of `refs` was marked with


def _rendered_size(page: RenderedPage) -> int:
    return len(page.body) + 512 * len(page.refs)  # refs: a few URLs each


class RenderedPages:
    """Complete rewritten pages by (final URL, SHA-256 of the upstream body), least recently used first
    out once `max_bytes` is reached; 0 keeps none."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._pages: LRUCache[tuple[str, str], RenderedPage] = LRUCache(max(1, max_bytes), getsizeof=_rendered_size)

    def __len__(self) -> int:
        return len(self._pages)

    def get(self, key: tuple[str, str]) -> RenderedPage | None:
        return self._pages.get(key) if self.max_bytes else None

    def put(self, key: tuple[str, str], page: RenderedPage) -> None:
        if self.max_bytes and _rendered_size(page) <= self.max_bytes:
            self._pages[key] = page
