"""The page proxy: fetch a third-party page, classify every image on it, and hand back the page marked.

    page URL --SafeFetcher--> HTML (or a Wikipedia REST summary JSON)
      --parse once (`proxy.rewrite.Page`)--> images --cache first, then concurrently--> verdicts
      --rewrite + sanitise--> HTML a popup can show in dark mode with no further work

* Cached verdicts are looked up synchronously, so a page whose images are all known costs one parse and
  one rewrite, no task per image. A UTF-8 page goes to the parser as the bytes it came in, and comes
  back as bytes: no decoding and encoding the megabyte again (`page_source`).
* The rest are classified through the `VerdictService` (single-flight, micro-batching), at most
  `concurrency` at a time per page so one image-heavy page neither hammers its upstream nor starves
  other pages.
* Nothing waits past the page's deadline: an image still unclassified by then is marked "don't invert"
  (`data-invertornot-pending`), the safe default, and goes on classifying in the background so the next
  request for the page finds it cached. Background work is bounded (`max_background`) and tracked
  (`BackgroundTasks`), so app shutdown cancels it.
* One image failing (404, not an image, undecodable, overloaded) never fails the page: it is marked
  "don't invert" and reported.
* A complete rewritten page is kept (`RenderedPages`, bounded in bytes) under its URL and the hash of
  the upstream's bytes: a repeat request that fetches the same bytes, and whose images still get the
  same verdicts, is answered without parsing again. Any change (the page, a correction, a new model)
  renders afresh.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import enum
import hashlib
import json
import logging
import re
from dataclasses import dataclass

from classifier.decode import ImageError
from classifier.verdict import Verdict
from proxy.background import BackgroundTasks
from proxy.errors import ApiError, PayloadTooLarge, UnsupportedType, UpstreamError
from proxy.fetch import FetchResult, SafeFetcher
from proxy.metrics import Counter, Gauge, Metrics
from proxy.middleware import api_error_for_image
from proxy.page_cache import RenderedPage, RenderedPages
from proxy.rewrite import (
    ImageRef,
    Mark,
    Page,
    RewriteError,
    RewriteOptions,
    find_summary_images,
    rewrite_summary,
)
from proxy.verdicts import Classified, VerdictService

log = logging.getLogger(__name__)

JSON_TYPE = "application/json"
# Parsing and rewriting a large page takes milliseconds of CPU; beyond this size it runs in a worker
# thread so the event loop keeps getting the GIL at every switch interval instead of stalling throughout.
_INLINE_PAGE_BYTES = 128 * 1024
# Where the HTML standard's prescan looks for <meta charset> when no header names one.
_PRESCAN_BYTES = 1024
_BOMS = ((codecs.BOM_UTF8, "utf-8"), (codecs.BOM_UTF16_LE, "utf-16-le"), (codecs.BOM_UTF16_BE, "utf-16-be"))
_META_CHARSET = re.compile(rb"<meta[^>]*?charset\s*=\s*[\"']?\s*([A-Za-z0-9_.:-]+)", re.IGNORECASE)


class Outcome(enum.Enum):
    MANUAL = "manual"  # the page's own markup decides; never classified
    CACHED = "cached"
    CLASSIFIED = "classified"
    PENDING = "pending"  # still classifying when the deadline passed
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class ImageResult:
    """What the proxy knows about one image of the page."""

    ref: ImageRef
    outcome: Outcome
    classified: Classified | None = None  # with a Verdict, for CACHED and CLASSIFIED
    error: ApiError | None = None  # for FAILED

    @property
    def verdict(self) -> Verdict | None:
        result = None if self.classified is None else self.classified.result
        return result if isinstance(result, Verdict) else None

    def mark(self) -> Mark | None:
        """The mark to write onto the image (None: leave it as the page has it)."""
        verdict = self.verdict
        if self.outcome is Outcome.MANUAL:
            return None
        if verdict is not None:
            return Mark(invert=verdict.invert, p_invert=verdict.p_invert, model=verdict.model)
        # Failed or pending: "don't invert" is the safe default; wrongly inverting a photo is the worse error.
        return Mark(invert=False, pending=self.outcome is Outcome.PENDING)


@dataclass(frozen=True, slots=True)
class ProxiedPage:
    """A rewritten page (HTML, or a summary's JSON) and what happened to each of its images."""

    url: str  # the final URL, after redirects
    content_type: str  # "text/html" or "application/json"
    body: bytes  # UTF-8
    images: tuple[ImageResult, ...]

    def count(self, outcome: Outcome) -> int:
        return sum(1 for image in self.images if image.outcome is outcome)

    @property
    def complete(self) -> bool:
        """True when no image is still pending: the same request later would give the same answer."""
        return self.count(Outcome.PENDING) == 0


class PageProxy:
    """Fetch, classify and rewrite pages; one per app (see `proxy.pages_routes`)."""

    def __init__(
        self,
        service: VerdictService,
        fetcher: SafeFetcher,
        metrics: Metrics,
        *,
        max_images: int,
        concurrency: int,
        max_background: int,
        rendered_bytes: int = 0,
        options: RewriteOptions | None = None,
    ) -> None:
        self._service = service
        self._fetcher = fetcher
        self._max_images = max_images
        self._concurrency = concurrency
        self.options = options or RewriteOptions()
        self.background: BackgroundTasks[ImageResult] = BackgroundTasks(max_background)
        self.rendered = RenderedPages(rendered_bytes)
        self._outcomes = Counter("invertornot_page_images_total", "Images of proxied pages, by outcome.", ("outcome",))
        self._renders = Counter(
            "invertornot_page_renders_total",
            "Proxied HTML pages by how they were answered: parsed and rewritten, or a kept rendering reused.",
            ("how",),
        )
        metrics.add(self._outcomes)
        metrics.add(self._renders)
        metrics.add(
            Gauge(
                "invertornot_page_background_images",
                "Images of proxied pages still classifying after their page was answered.",
                lambda: [((), len(self.background))],
            )
        )

    async def close(self) -> None:
        await self.background.close()

    async def proxy(self, url: str, *, deadline: float) -> ProxiedPage:
        """The page at `url`, rewritten; `deadline` is a `loop.time()` after which no image is waited for.

        Raises `ApiError` for the page itself (400/403/404/413/415/502/504), never for one of its images.
        """
        fetched = await self._fetcher.fetch_page(url)
        if fetched.content_type == JSON_TYPE:
            return await self._proxy_summary(fetched, deadline)
        return await self._proxy_html(fetched, deadline)

    async def _proxy_html(self, fetched: FetchResult, deadline: float) -> ProxiedPage:
        offload = len(fetched.body) > _INLINE_PAGE_BYTES
        key: tuple[str, str] | None = None
        digest: asyncio.Future[str] | None = None
        if self.rendered.max_bytes:
            if offload and not self.rendered.holds(fetched.url):
                # No rendering of this page is kept: hash its bytes (another thread) while parsing them.
                digest = asyncio.ensure_future(_digest(fetched.body, offload))
            else:
                key = (fetched.url, await _digest(fetched.body, offload))
        try:
            return await self._render_html(fetched, deadline, offload, key, digest)
        finally:
            if digest is not None:
                digest.cancel()  # done by now, unless the page failed

    async def _render_html(
        self,
        fetched: FetchResult,
        deadline: float,
        offload: bool,
        key: tuple[str, str] | None,
        digest: asyncio.Future[str] | None,
    ) -> ProxiedPage:
        kept = None if key is None else self.rendered.get(key)
        results: list[ImageResult] | None = None
        if kept is not None:
            # The same bytes parse to the same images: only their verdicts can have changed.
            results = await self.classify(list(kept.refs), deadline)
            if tuple(result.mark() for result in results) == kept.marks:
                self._renders.inc("reused")
                return ProxiedPage(fetched.url, "text/html", kept.body, tuple(results))
        source = page_source(fetched.body, fetched.charset)

        def parse() -> tuple[Page, list[ImageRef]]:
            page = Page(source, fetched.url, self.options)
            return page, page.images(max_images=self._max_images)

        try:
            page, refs = await asyncio.to_thread(parse) if offload else parse()
        except RewriteError as error:
            raise PayloadTooLarge(str(error), code=error.code) from None
        if results is None or [result.ref for result in results] != refs:
            results = await self.classify(refs, deadline)
        marks = [result.mark() for result in results]
        by_url = {result.ref.url: mark for result, mark in zip(results, marks, strict=True) if mark is not None}

        def rewrite() -> bytes:
            return page.render(by_url)

        body = await asyncio.to_thread(rewrite) if offload else rewrite()
        self._renders.inc("rendered")
        proxied = ProxiedPage(fetched.url, "text/html", body, tuple(results))
        if digest is not None:
            key = (fetched.url, await digest)
        if key is not None and proxied.complete:
            self.rendered.put(key, RenderedPage(body, tuple(refs), tuple(marks)))
        return proxied

    async def _proxy_summary(self, fetched: FetchResult, deadline: float) -> ProxiedPage:
        try:
            summary = json.loads(fetched.body)
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise UpstreamError(f"upstream sent malformed JSON: {error}", code="malformed_upstream_json") from None
        if not isinstance(summary, dict):
            raise UnsupportedType("the JSON document is not a page summary (an object)", code="unsupported_json")
        refs = find_summary_images(summary)[: self._max_images]
        results = await self.classify(refs, deadline)
        marks = {result.ref.url: mark for result in results if (mark := result.mark()) is not None}
        # ASCII with escapes: lone surrogates the upstream escaped survive exactly, and nothing can be mis-decoded.
        body = json.dumps(rewrite_summary(summary, marks)).encode("ascii")
        return ProxiedPage(fetched.url, JSON_TYPE, body, tuple(results))

    async def classify(self, refs: list[ImageRef], deadline: float) -> list[ImageResult]:
        """A result for every ref, in order: cache first, then concurrently until `deadline`."""
        results: dict[str, ImageResult] = {}
        missing: list[ImageRef] = []
        for ref in refs:
            if ref.manual is not None:
                results[ref.url] = ImageResult(ref, Outcome.MANUAL)
                continue
            hit = self._service.cached_url(ref.url)
            if hit is not None:
                results[ref.url] = _settled(ref, hit, Outcome.CACHED)
            else:
                missing.append(ref)
        if missing:
            slots = asyncio.Semaphore(self._concurrency)
            tasks = {ref.url: asyncio.create_task(self._classify(ref, slots)) for ref in missing}
            try:
                timeout = max(0.0, deadline - asyncio.get_running_loop().time())
                await asyncio.wait(tasks.values(), timeout=timeout)
            finally:
                # Also when this request is cancelled (client gone): the work is useful to the next one.
                self.background.adopt(task for task in tasks.values() if not task.done())
            for ref in missing:
                task = tasks[ref.url]
                results[ref.url] = task.result() if task.done() else ImageResult(ref, Outcome.PENDING)
        ordered = [results[ref.url] for ref in refs]
        for result in ordered:
            self._outcomes.inc(result.outcome.value)
        return ordered

    async def _classify(self, ref: ImageRef, slots: asyncio.Semaphore) -> ImageResult:
        """One image; every failure becomes its result (nothing here may fail the page)."""
        async with slots:
            try:
                classified = await self._service.classify_url(ref.url)
            except ApiError as error:
                return ImageResult(ref, Outcome.FAILED, error=error)
            except Exception:
                log.exception("unexpected error classifying page image %s", ref.url)
                return ImageResult(ref, Outcome.FAILED, error=ApiError("internal error; it has been logged"))
        return _settled(ref, classified, Outcome.CACHED if classified.cached else Outcome.CLASSIFIED)


def _settled(ref: ImageRef, classified: Classified, outcome: Outcome) -> ImageResult:
    if isinstance(classified.result, ImageError):
        return ImageResult(ref, Outcome.FAILED, classified, error=api_error_for_image(classified.result))
    return ImageResult(ref, outcome, classified)


async def _digest(body: bytes, offload: bool) -> str:
    # hashlib drops the GIL on large inputs, so a worker thread really frees the loop.
    return (await asyncio.to_thread(hashlib.sha256, body) if offload else hashlib.sha256(body)).hexdigest()


def decode_html(body: bytes, charset: str | None) -> str:
    """The page's text: a byte-order mark wins, then the Content-Type charset, then a <meta charset> in
    the first kilobyte, then UTF-8 (what Wikipedia and almost every page sends). Bad bytes become U+FFFD."""
    encoding, start = _encoding(body, charset)
    return body[start:].decode(encoding, "replace")


def page_source(body: bytes, charset: str | None) -> str | bytes:
    """What `proxy.rewrite.Page` is given for the page: its bytes as they are when it is UTF-8 (the
    parser reads those, and `Page` checks them), else its text, as `decode_html`."""
    encoding, start = _encoding(body, charset)
    if encoding == "utf-8":
        return body[start:] if start else body
    return body[start:].decode(encoding, "replace")


def _encoding(body: bytes, charset: str | None) -> tuple[str, int]:
    """The page's encoding (see `decode_html`), and where its text starts (after a byte-order mark)."""
    for bom, encoding in _BOMS:
        if body.startswith(bom):
            return encoding, len(bom)
    declared = _known_encoding(charset)
    if declared is None:
        match = _META_CHARSET.search(body, 0, _PRESCAN_BYTES)
        declared = _known_encoding(match.group(1).decode("ascii")) if match else None
        if declared is not None and declared.startswith("utf-16"):
            declared = "utf-8"  # HTML: a <meta> that could be read as ASCII cannot really mean UTF-16
    return declared or "utf-8", 0


def _known_encoding(name: str | None) -> str | None:
    if not name:
        return None
    with contextlib.suppress(LookupError):
        return codecs.lookup(name).name
    return None
