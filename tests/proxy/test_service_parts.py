"""The service's parts on their own: single-flight, the batcher, caches, rate limiter, metrics text."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import pytest

from classifier.decode import ImageError
from classifier.verdict import Verdict
from proxy.metrics import Counter, Histogram, Metrics
from proxy.ratelimit import RateLimiter
from proxy.verdicts import Batcher, Overloaded, SingleFlight, VerdictCaches
from tests.proxy.service_support import DIAGRAM, PHOTO, RecordingClassifier, image_bytes


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.asyncio
async def test_single_flight_shares_one_run_and_survives_a_cancelled_caller() -> None:
    flights: SingleFlight[str, int] = SingleFlight()
    runs = 0
    release = asyncio.Event()

    async def work() -> int:
        nonlocal runs
        runs += 1
        await release.wait()
        return 42

    callers = [asyncio.create_task(flights.do("k", work)) for _ in range(5)]
    await asyncio.sleep(0)
    callers[0].cancel()  # one client hangs up: the others still get the answer
    release.set()
    results = await asyncio.gather(*callers, return_exceptions=True)
    assert isinstance(results[0], asyncio.CancelledError)
    assert results[1:] == [42] * 4 and runs == 1 and len(flights) == 0
    assert await flights.do("k", work) == 42 and runs == 2  # a finished flight is not a cache


@pytest.mark.asyncio
async def test_single_flight_shares_failures_too() -> None:
    flights: SingleFlight[str, int] = SingleFlight()

    async def fail() -> int:
        await asyncio.sleep(0.01)
        raise ValueError("boom")

    results = await asyncio.gather(*(flights.do("k", fail) for _ in range(3)), return_exceptions=True)
    assert [type(result) for result in results] == [ValueError] * 3


@pytest.mark.asyncio
async def test_batcher_batches_keeps_order_and_reports_image_errors() -> None:
    classifier = RecordingClassifier(delay=0.03)
    with ThreadPoolExecutor(1, thread_name_prefix="classify") as executor:
        batcher = Batcher(classifier, executor, batch_size=4, batch_wait=0.005, concurrency=1, metrics=Metrics())
        batcher.start()
        blobs = [image_bytes(DIAGRAM), b"garbage", image_bytes(PHOTO)] * 4
        results = await asyncio.gather(*(batcher.classify(blob) for blob in blobs))
        await batcher.close()
    assert [type(result) for result in results] == [Verdict, ImageError, Verdict] * 4
    assert [result.invert for result in results[::3]] == [True] * 4  # type: ignore[union-attr]
    assert classifier.batches[0] == 4 and sum(classifier.batches) == 12 and max(classifier.batches) == 4


def test_caches_expire_urls_but_keep_verdicts() -> None:
    clock = FakeClock()
    caches = VerdictCaches(url_size=10, url_ttl=60, verdict_size=2, timer=clock)
    caches.urls[("m", "http://a/")] = "h1"
    clock.now += 61
    assert caches.urls.get(("m", "http://a/")) is None
    for key in ("h1", "h2", "h3"):
        caches.verdicts[("m", key)] = (ImageError("empty", "x"), "sha1")
    assert ("m", "h1") not in caches.verdicts and len(caches.verdicts) == 2


def test_rate_limiter_bucket_refills_at_the_rate() -> None:
    clock = FakeClock()
    limiter = RateLimiter(per_minute=60, burst=2, clock=clock)
    assert limiter.acquire("a") is None and limiter.acquire("a") is None
    wait = limiter.acquire("a")
    assert wait is not None and 0.9 <= wait <= 1.0
    assert limiter.acquire("b") is None  # per client
    clock.now += 1.0
    assert limiter.acquire("a") is None and limiter.acquire("a") is not None
    clock.now += 3600
    assert limiter.acquire("a") is None and limiter.acquire("a") is None and limiter.acquire("a") is not None


def test_metrics_text_exposition() -> None:
    counter = Counter("demo_total", "Demo.", ("code",))
    counter.inc('a"b')
    counter.inc('a"b', amount=2)
    histogram = Histogram("demo_seconds", "Latency.", (0.1, 1.0))
    for value in (0.05, 0.5, 5.0):
        histogram.observe(value)
    lines = [*counter.render(), *histogram.render()]
    assert lines == [
        "# HELP demo_total Demo.",
        "# TYPE demo_total counter",
        'demo_total{code="a\\"b"} 3',
        "# HELP demo_seconds Latency.",
        "# TYPE demo_seconds histogram",
        'demo_seconds_bucket{le="0.1"} 1',
        'demo_seconds_bucket{le="1"} 2',
        'demo_seconds_bucket{le="+Inf"} 3',
        "demo_seconds_sum 5.55",
        "demo_seconds_count 3",
    ]
    text = Metrics().render()
    assert "# TYPE invertornot_http_request_duration_seconds histogram" in text and text.endswith("\n")


@pytest.mark.asyncio
async def test_batcher_refuses_work_beyond_its_queue_and_cancels_waiters_at_close() -> None:
    classifier = RecordingClassifier(delay=0.2)
    with ThreadPoolExecutor(1) as executor:
        batcher = Batcher(
            classifier, executor, batch_size=1, batch_wait=0, concurrency=1, metrics=Metrics(), max_queued=2
        )
        batcher.start()
        running = asyncio.ensure_future(batcher.classify(image_bytes(DIAGRAM)))
        await asyncio.sleep(0.05)  # the first image is in the executor; the next two wait in the queue
        waiting = [asyncio.ensure_future(batcher.classify(image_bytes(PHOTO))) for _ in range(2)]
        await asyncio.sleep(0)
        with pytest.raises(Overloaded) as refused:
            await batcher.classify(image_bytes(PHOTO))
        assert refused.value.status == 503
        await batcher.close()
        assert isinstance(await running, Verdict)
        results = await asyncio.gather(*waiting, return_exceptions=True)
    assert [type(result) for result in results] == [asyncio.CancelledError] * 2
