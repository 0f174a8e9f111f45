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


class _Pages(LRUCache[tuple[str, str], RenderedPage]):
    """The cache, with the digests it holds for each URL (kept up to date through evictions too)."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(max(1, max_bytes), getsizeof=_rendered_size)
        self.digests: dict[str, set[str]] = {}

    def __setitem__(self, key: tuple[str, str], page: RenderedPage) -> None:
        super().__setitem__(key, page)  # may evict others, or this key before storing it again
        self.digests.setdefault(key[0], set()).add(key[1])

    def __delitem__(self, key: tuple[str, str]) -> None:
        super().__delitem__(key)
        digests = self.digests.get(key[0], set())
        digests.discard(key[1])
        if not digests:
            self.digests.pop(key[0], None)


class RenderedPages:
    """Complete rewritten pages by (final URL, SHA-256 of the upstream body), least recently used first
    out once `max_bytes` is reached; 0 keeps none."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._pages = _Pages(max_bytes)

    def __len__(self) -> int:
        return len(self._pages)

    def holds(self, url: str) -> bool:
        """Whether a rendering of some version of the page at ``url`` is kept: only then is the hash
        of its bytes needed before parsing them."""
        return url in self._pages.digests

    def get(self, key: tuple[str, str]) -> RenderedPage | None:
        return self._pages.get(key) if self.max_bytes else None

    def put(self, key: tuple[str, str], page: RenderedPage) -> None:
        if self.max_bytes and _rendered_size(page) <= self.max_bytes:
            self._pages[key] = page
