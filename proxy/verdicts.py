"""Classify images by URL or by bytes: caches, single-flight, and micro-batching into the app's executor.

    URL --(url cache, TTL)--> sha256 --(verdict cache, LRU)--> verdict
     \\--miss: single-flight fetch --> bytes --> sha256 --miss: single-flight classify --> batcher --> executor

* Cache keys carry the model version, so a new model never serves an old model's answers; a model reload
  (`replace_classifier`) swaps the classifier atomically and drops the old model's entries.
* Corrections come first: an image with a label (`CorrectedLabels`) gets that answer, `source: "correction"`,
  whatever the model or the caches say.
* With a shared cache (`proxy.shared_cache`, Redis), misses here ask the other instances before fetching or
  classifying, and an image is classified by one instance at a time across all of them.
* The same image behind many URLs is classified once: the second URL's fetch finds its sha256 cached.
* One fetch per URL and one classification per image at a time, however many requests ask at once.
* `Batcher` gathers images from concurrent requests into one `classify_bytes` call (up to `batch_size`, or
  whatever arrived within `batch_wait` seconds) and runs it in the executor, so the event loop never runs
  model code and throughput under load approaches the batch benchmark.

Everything here runs on the event loop thread except `classify_bytes`, so the caches need no locks.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Hashable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from cachetools import LRUCache, TTLCache

from classifier.decode import ImageError
from classifier.verdict import ImageClassifier, Verdict
from proxy.errors import ApiError
from proxy.fetch import FetchPolicy, SafeFetcher, check_url
from proxy.metrics import Metrics
from proxy.shared_cache import SharedCache

log = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

# Hashing a few MB takes milliseconds; beyond this size it runs in a worker thread (hashlib drops the GIL).
_HASH_INLINE_BYTES = 256 * 1024
Result = Verdict | ImageError
#: Fresh verdicts remembered for the labelling page's "most uncertain" and "audit" queues.
RECENT_VERDICTS = 5000


@dataclass(frozen=True, slots=True)
class Classified:
    """A classifier answer for one image plus what the service knows about how it was obtained."""

    result: Result  # a Verdict, or the ImageError that explains why the image cannot be judged
    sha256: str
    sha1: str  # for invertornot.com-compatible clients, which know images by SHA-1
    cached: bool  # True when no classification ran for this request


class CorrectedLabels(Protocol):
    """Labels people gave images (the corrections store); consulted before the model, on every answer."""

    def label_of(self, sha256: str) -> bool | None: ...


@dataclass(frozen=True, slots=True)
class RecentVerdict:
    """A model answer for an image fetched by URL (so a person can look at it again)."""

    sha256: str
    url: str
    p_invert: float
    model: str


class SwappableClassifier:
    """The serving classifier, replaceable while requests run: every call goes to the current one.

    A batch already running finishes on the model it started with; its verdicts carry that model's version.
    """

    def __init__(self, current: ImageClassifier) -> None:
        self.current = current

    @property
    def version(self) -> str:
        return self.current.version

    def classify_bytes(self, blobs: Sequence[bytes]) -> list[Verdict | ImageError]:
        return self.current.classify_bytes(blobs)

    def swap(self, new: ImageClassifier) -> ImageClassifier:
        old, self.current = self.current, new
        return old


class SingleFlight(Generic[K, V]):
    """At most one running `work()` per key; concurrent callers for that key share its result.

    The work runs as its own task and callers wait on it through `asyncio.shield`, so a caller that gives
    up (a client disconnecting) never cancels the work the others are waiting for.
    """

    def __init__(self) -> None:
        self._flights: dict[K, asyncio.Task[V]] = {}

    def __len__(self) -> int:
        return len(self._flights)

    async def do(self, key: K, work: Callable[[], Awaitable[V]]) -> V:
        flight = self._flights.get(key)
        if flight is None:
            flight = asyncio.ensure_future(work())
            self._flights[key] = flight
            flight.add_done_callback(lambda done: self._landed(key, done))
        return await asyncio.shield(flight)

    def _landed(self, key: K, flight: asyncio.Task[V]) -> None:
        if self._flights.get(key) is flight:
            del self._flights[key]
        if not flight.cancelled():
            flight.exception()  # retrieved: when every waiter left, asyncio must not log it as lost


class Overloaded(ApiError):
    status = 503
    default_code = "overloaded"


class Batcher:
    """Collects images from concurrent callers and classifies them in batches in `executor`."""

    def __init__(
        self,
        classifier: ImageClassifier,
        executor: Executor,
        *,
        batch_size: int,
        batch_wait: float,
        concurrency: int,
        metrics: Metrics,
        max_queued: int = 10_000,
    ) -> None:
        self._classifier = classifier
        self._executor = executor
        self._batch_size = batch_size
        self._batch_wait = batch_wait
        self._slots = asyncio.Semaphore(concurrency)  # batches in the executor at once
        self._metrics = metrics
        self._queue: asyncio.Queue[tuple[bytes, asyncio.Future[Result]]] = asyncio.Queue()
        self._running: set[asyncio.Task[None]] = set()
        self._collector: asyncio.Task[None] | None = None
        self._gathering: list[tuple[bytes, asyncio.Future[Result]]] = []  # taken off the queue, not yet sent
        self._max_queued = max_queued

    @property
    def queued(self) -> int:
        return self._queue.qsize()

    def start(self) -> None:
        self._collector = asyncio.create_task(self._collect(), name="batcher")

    async def close(self) -> None:
        if self._collector is not None:
            self._collector.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._collector
        await asyncio.gather(*self._running, return_exceptions=True)
        waiting = [future for _, future in self._gathering]
        while not self._queue.empty():
            waiting.append(self._queue.get_nowait()[1])
        for future in waiting:
            future.cancel()

    async def classify(self, blob: bytes) -> Result:
        if self._collector is None or self._collector.done():
            raise RuntimeError("the batcher is not running")
        if self._queue.qsize() >= self._max_queued:
            # Better a fast, honest 503 than a queue that grows until every waiting client times out.
            raise Overloaded(f"{self._max_queued} images are already waiting for the classifier; retry later")
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((blob, future))
        return await future

    async def _collect(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._slots.acquire()
            self._gathering = batch = [await self._queue.get()]
            deadline = loop.time() + self._batch_wait
            while len(batch) < self._batch_size:
                if self._queue.empty():
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        break
                    try:
                        batch.append(await asyncio.wait_for(self._queue.get(), remaining))
                    except TimeoutError:
                        break
                else:
                    batch.append(self._queue.get_nowait())
            self._gathering = []
            # Callers that gave up while waiting need no answer.
            batch = [item for item in batch if not item[1].done()]
            if not batch:
                self._slots.release()
                continue
            task = asyncio.create_task(self._execute(batch))
            self._running.add(task)
            task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        self._slots.release()

    async def _execute(self, batch: list[tuple[bytes, asyncio.Future[Result]]]) -> None:
        blobs = [blob for blob, _ in batch]
        started = time.perf_counter()
        try:
            loop = asyncio.get_running_loop()
            results = await loop.run_in_executor(self._executor, self._classifier.classify_bytes, blobs)
            if len(results) != len(blobs):
                raise RuntimeError(f"classifier returned {len(results)} results for {len(blobs)} images")
        except Exception as error:  # a classifier bug: every caller of this batch gets it (-> 500)
            log.exception("classifying a batch of %d images failed", len(blobs))
            for _, future in batch:
                if not future.done():
                    future.set_exception(error)
            return
        self._metrics.batch_size.observe(len(blobs))
        self._metrics.batch_seconds.observe(time.perf_counter() - started)
        for (_, future), result in zip(batch, results, strict=True):
            self._metrics.classifications.inc(result.code if isinstance(result, ImageError) else "verdict")
            if not future.done():
                future.set_result(result)


class VerdictCaches:
    """The in-process caches. Keys carry the model version; the SHA-1 index maps to SHA-256."""

    def __init__(
        self, *, url_size: int, url_ttl: float, verdict_size: int, timer: Callable[[], float] = time.monotonic
    ) -> None:
        self.urls: TTLCache[tuple[str, str], str] = TTLCache(url_size, url_ttl, timer=timer)
        # The value keeps the SHA-1 so compatible clients get it without hashing again.
        self.verdicts: LRUCache[tuple[str, str], tuple[Result, str]] = LRUCache(verdict_size)
        self.sha1s: LRUCache[str, str] = LRUCache(verdict_size)


def digest(data: bytes) -> tuple[str, str]:
    """(sha256, sha1) hex digests of `data`."""
    return hashlib.sha256(data).hexdigest(), hashlib.sha1(data, usedforsecurity=False).hexdigest()


class VerdictService:
    """The one way the handlers get verdicts."""

    def __init__(
        self,
        classifier: ImageClassifier,
        batcher: Batcher,
        fetcher: SafeFetcher,
        policy: FetchPolicy,
        caches: VerdictCaches,
        metrics: Metrics,
        *,
        corrections: CorrectedLabels | None = None,
        shared: SharedCache | None = None,
    ) -> None:
        # The batcher must hold this same object, so a reload reaches it too.
        self.classifier = classifier if isinstance(classifier, SwappableClassifier) else SwappableClassifier(classifier)
        self._policy = policy
        self._corrections = corrections
        self.recent: deque[RecentVerdict] = deque(maxlen=RECENT_VERDICTS)
        self._batcher = batcher
        self._fetcher = fetcher
        self.caches = caches
        self._metrics = metrics
        self._url_flights: SingleFlight[tuple[str, str], Classified] = SingleFlight()
        self._image_flights: SingleFlight[tuple[str, str], tuple[Result, bool]] = SingleFlight()
        # Other instances' caches (Redis), behind ours; the do-nothing variant when there is none.
        self._shared = shared if shared is not None else SharedCache()

    @property
    def model(self) -> str:
        """The version of the model answering now."""
        return self.classifier.version

    @property
    def queued(self) -> int:
        """Images waiting for the classifier."""
        return self._batcher.queued

    def replace_classifier(self, new: ImageClassifier) -> ImageClassifier:
        """Answer with `new` from now on; returns the old classifier. The old model's cache entries are
        dropped (their keys could never match again) so they neither linger nor get served."""
        old = self.classifier.swap(new)
        if new.version != old.version:
            self.caches.verdicts.clear()
            self.caches.urls.clear()
            self._shared.announce_model(new.version)
        return old

    def corrected(self, sha256: str) -> Verdict | None:
        """The answer a person gave for this image, if any."""
        label = None if self._corrections is None else self._corrections.label_of(sha256)
        if label is None:
            return None
        p_invert = 1.0 if label else 0.0
        return Verdict(label, p_invert, 1.0, sha256, self.model, source="correction")

    def invalidate(self, sha256: str) -> None:
        """A label changed: the cached answer for this image must not be served (the SHA-1 is kept)."""
        entry = self.caches.verdicts.get((self.model, sha256))
        corrected = self.corrected(sha256)
        if entry is not None:
            if corrected is None:
                del self.caches.verdicts[(self.model, sha256)]
            else:
                self.caches.verdicts[(self.model, sha256)] = (corrected, entry[1])

    # -- lookups that never do work ------------------------------------------------------------------

    def cached_url(self, url: str) -> Classified | None:
        """The answer for `url` if both the URL and its image are cached (the fast path)."""
        sha256 = self.caches.urls.get((self.model, url))
        if sha256 is None:
            self._metrics.cache_misses.inc("url")
            return None
        self._metrics.cache_hits.inc("url")
        return self.cached_image(sha256)

    def cached_image(self, sha256: str) -> Classified | None:
        entry = self.caches.verdicts.get((self.model, sha256))
        corrected = self.corrected(sha256)
        if corrected is not None:  # known without classifying; the SHA-1 only if the image was seen
            return Classified(corrected, sha256, entry[1] if entry is not None else "", cached=True)
        if entry is None:
            self._metrics.cache_misses.inc("verdict")
            return None
        self._metrics.cache_hits.inc("verdict")
        return Classified(entry[0], sha256, entry[1], cached=True)

    async def lookup_image(self, sha256: str) -> Classified | None:
        """Like `cached_image`, but also finds what other instances classified (the shared cache)."""
        hit = self.cached_image(sha256)
        if hit is not None or not self._shared.available:
            return hit
        found = await self._shared.verdict(self.model, sha256)
        if found is None:
            return None
        verdict, sha1 = found
        self.caches.verdicts[(verdict.model, sha256)] = (verdict, sha1)
        self.caches.sha1s[sha1] = sha256
        return self.cached_image(sha256)

    def cached_sha1(self, sha1: str) -> Classified | None:
        sha256 = self.caches.sha1s.get(sha1.lower())
        return None if sha256 is None else self.cached_image(sha256)

    # -- classification --------------------------------------------------------------------------------

    async def classify_url(self, url: str) -> Classified:
        """Fetch and classify the image at `url`; raises ApiError when it cannot be fetched."""
        hit = self.cached_url(url)
        if hit is not None:
            return hit
        key = str(check_url(url, self._policy))  # 400/403 before any work; one key per spelling
        if key != url:
            hit = self.cached_url(key)
            if hit is not None:
                return hit
        # Keyed by model too: a request arriving after a reload never joins a flight of the old model.
        classified = await self._url_flights.do((self.model, key), lambda: self._fetch_and_classify(key))
        self.caches.urls[(self.model, url)] = self.caches.urls[(self.model, key)] = classified.sha256
        result = classified.result
        if not classified.cached and isinstance(result, Verdict) and result.source == "model":
            self.recent.append(RecentVerdict(classified.sha256, key, result.p_invert, result.model))
        return classified

    async def _fetch_and_classify(self, url: str) -> Classified:
        # Another instance may have fetched this URL and classified its image: then nothing is fetched.
        known = await self._shared.image_for_url(url)
        if known is not None:
            hit = await self.lookup_image(known)
            if hit is not None:
                return hit
        self._metrics.fetches.inc()
        try:
            fetched = await self._fetcher.fetch_image(url)
        except ApiError as error:
            self._metrics.fetch_errors.inc(error.code)
            raise
        classified = await self.classify_bytes(fetched.body)
        if classified.sha256 != known:
            await self._shared.remember_url(url, classified.sha256)
        return classified

    async def classify_bytes(self, data: bytes) -> Classified:
        """Classify encoded image bytes (the result may be an ImageError; the caller decides how to report it)."""
        if len(data) <= _HASH_INLINE_BYTES:
            sha256, sha1 = digest(data)
        else:
            sha256, sha1 = await asyncio.to_thread(digest, data)
        corrected = self.corrected(sha256)
        if corrected is not None:
            self.caches.sha1s[sha1] = sha256
            return Classified(corrected, sha256, sha1, cached=True)
        hit = self.cached_image(sha256)
        if hit is not None:
            return hit
        model = self.model
        # One classification per image at a time here, and (with a shared cache) across instances.
        result, fresh = await self._image_flights.do(
            (model, sha256),
            lambda: self._shared.classify_once(model, sha256, sha1, lambda: self._batcher.classify(data)),
        )
        # Keyed by the model that answered: a reload during the batch must not file an old answer as new.
        self.caches.verdicts[(result.model if isinstance(result, Verdict) else model, sha256)] = (result, sha1)
        self.caches.sha1s[sha1] = sha256
        return Classified(result, sha256, sha1, cached=not fresh)
