"""Classify images by URL or by bytes: caches, single-flight, and micro-batching into the app's executor.

    URL --(url cache, TTL)--> sha256 --(verdict cache, LRU)--> verdict
     \\--miss: single-flight fetch --> bytes --> sha256 --miss: single-flight classify --> batcher --> executor

* Cache keys carry the model version, so a new model never serves an old model's answers.
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
from collections.abc import Awaitable, Callable, Hashable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Generic, TypeVar

from cachetools import LRUCache, TTLCache

from classifier.decode import ImageError
from classifier.verdict import ImageClassifier, Verdict
from proxy.errors import ApiError
from proxy.fetch import FetchPolicy, SafeFetcher, check_url
from proxy.metrics import Metrics

log = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

# Hashing a few MB takes milliseconds; beyond this size it runs in a worker thread (hashlib drops the GIL).
_HASH_INLINE_BYTES = 256 * 1024
Result = Verdict | ImageError


@dataclass(frozen=True, slots=True)
class Classified:
    """A classifier answer for one image plus what the service knows about how it was obtained."""

    result: Result  # a Verdict, or the ImageError that explains why the image cannot be judged
    sha256: str
    sha1: str  # for invertornot.com-compatible clients, which know images by SHA-1
    cached: bool  # True when no classification ran for this request


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
    ) -> None:
        self.classifier = classifier
        self._policy = policy
        self.model = classifier.version
        self._batcher = batcher
        self._fetcher = fetcher
        self.caches = caches
        self._metrics = metrics
        self._url_flights: SingleFlight[str, Classified] = SingleFlight()
        self._image_flights: SingleFlight[str, Result] = SingleFlight()

    @property
    def queued(self) -> int:
        """Images waiting for the classifier."""
        return self._batcher.queued

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
        if entry is None:
            self._metrics.cache_misses.inc("verdict")
            return None
        self._metrics.cache_hits.inc("verdict")
        return Classified(entry[0], sha256, entry[1], cached=True)

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
        classified = await self._url_flights.do(key, lambda: self._fetch_and_classify(key))
        self.caches.urls[(self.model, url)] = self.caches.urls[(self.model, key)] = classified.sha256
        return classified

    async def _fetch_and_classify(self, url: str) -> Classified:
        self._metrics.fetches.inc()
        try:
            fetched = await self._fetcher.fetch_image(url)
        except ApiError as error:
            self._metrics.fetch_errors.inc(error.code)
            raise
        return await self.classify_bytes(fetched.body)

    async def classify_bytes(self, data: bytes) -> Classified:
        """Classify encoded image bytes (the result may be an ImageError; the caller decides how to report it)."""
        if len(data) <= _HASH_INLINE_BYTES:
            sha256, sha1 = digest(data)
        else:
            sha256, sha1 = await asyncio.to_thread(digest, data)
        hit = self.cached_image(sha256)
        if hit is not None:
            return hit
        result = await self._image_flights.do(sha256, lambda: self._batcher.classify(data))
        self.caches.verdicts[(self.model, sha256)] = (result, sha1)
        self.caches.sha1s[sha1] = sha256
        return Classified(result, sha256, sha1, cached=False)
