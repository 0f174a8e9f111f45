"""The v1 API over a real server on 127.0.0.1, fetching from a real local upstream."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestClient

from classifier.heuristic import SaturationHeuristic
from classifier.model import DEFAULT_MODEL_DIR, read_manifest
from classifier.verdict import ImageClassifier
from proxy.app import create_app
from proxy.appkeys import EXECUTOR, SESSION
from proxy.settings import Settings
from tests.proxy.service_support import (
    DIAGRAM,
    PHOTO,
    SMALL_PNGS,
    RecordingClassifier,
    Upstream,
    image_bytes,
    running_upstream,
    settings,
    tiff_bytes,
    variant,
)

Client = TestClient[web.Request, web.Application]
MakeClient = Callable[..., Awaitable[Client]]
VERDICT_KEYS = {"invert", "p_invert", "confidence", "sha256", "model", "cached", "source"}


@pytest_asyncio.fixture
async def upstream() -> AsyncIterator[Upstream]:
    async with running_upstream() as server:
        yield server


@pytest.fixture
def make_client(aiohttp_client: Any) -> MakeClient:
    async def make(classifier: ImageClassifier | None = None, **overrides: Any) -> Client:
        app = create_app(settings(**overrides), classifier=classifier or SaturationHeuristic())
        return await aiohttp_client(app)

    return make


async def classify(client: Client, url: str) -> tuple[int, dict[str, Any]]:
    response = await client.get("/api/v1/classify", params={"url": url})
    return response.status, await response.json()


@pytest.mark.asyncio
async def test_get_classify_answers_then_serves_from_cache(make_client: MakeClient, upstream: Upstream) -> None:
    client = await make_client()
    url = upstream.url(f"/img/{DIAGRAM}")
    status, first = await classify(client, url)
    assert status == 200
    assert set(first) == {"url", *VERDICT_KEYS}
    assert first["url"] == url
    assert first["sha256"] == hashlib.sha256(image_bytes(DIAGRAM)).hexdigest()
    assert first["cached"] is False
    assert first["invert"] is True and first["source"] == "heuristic"
    assert 0.5 <= first["confidence"] <= 1

    response = await client.get("/api/v1/classify", params={"url": url})
    second = await response.json()
    assert second == {**first, "cached": True}
    assert upstream.hits[f"/img/{DIAGRAM}"] == 1
    assert response.headers["Cache-Control"] == "public, max-age=3600"
    etag = response.headers["ETag"]
    assert etag.startswith('W/"') and first["sha256"] in etag and first["model"] in etag

    revalidated = await client.get("/api/v1/classify", params={"url": url}, headers={"If-None-Match": etag})
    assert revalidated.status == 304
    assert revalidated.headers["ETag"] == etag


@pytest.mark.asyncio
async def test_concurrent_identical_requests_share_one_fetch_and_one_classification(
    make_client: MakeClient, upstream: Upstream
) -> None:
    classifier = RecordingClassifier()
    client = await make_client(classifier)
    url = upstream.url(f"/img/{PHOTO}?delay=0.2")  # slow enough that all 20 requests overlap
    answers = await asyncio.gather(*(classify(client, url) for _ in range(20)))
    assert {status for status, _ in answers} == {200}
    assert len({body["sha256"] for _, body in answers}) == 1
    assert upstream.hits[f"/img/{PHOTO}"] == 1
    assert sum(classifier.batches) == 1


@pytest.mark.asyncio
async def test_the_same_image_behind_many_urls_is_classified_once(make_client: MakeClient, upstream: Upstream) -> None:
    classifier = RecordingClassifier()
    client = await make_client(classifier)
    urls = [upstream.url(f"/same/{n}") for n in range(6)]
    first = await classify(client, urls[0])
    rest = await asyncio.gather(*(classify(client, url) for url in urls[1:]))
    assert sum(classifier.batches) == 1
    assert [body["cached"] for _, body in rest] == [True] * 5  # fetched, but the verdict was known
    assert {body["sha256"] for _, body in [first, *rest]} == {first[1]["sha256"]}
    assert sum(upstream.hits[f"/same/{n}"] for n in range(6)) == 6


@pytest.mark.asyncio
async def test_batch_keeps_input_order_and_isolates_failures(make_client: MakeClient, upstream: Upstream) -> None:
    client = await make_client()
    urls = [upstream.url(f"/variant/{n}.png") if n % 4 else upstream.url("/img/missing.png") for n in range(12)] + [
        "ftp://example.com/x.png",
        upstream.url("/page.html"),
        upstream.url("/corrupt.png"),
    ]
    response = await client.post("/api/v1/classify", json={"urls": urls})
    assert response.status == 200
    results = (await response.json())["results"]
    assert [item["url"] for item in results] == urls
    for n, item in enumerate(results[:12]):
        if n % 4:
            assert set(item) == {"url", *VERDICT_KEYS}
            assert item["sha256"] == hashlib.sha256(variant(SMALL_PNGS[n % len(SMALL_PNGS)], n)).hexdigest()
        else:
            assert item["error"]["code"] == "not_found"
    assert [item["error"]["code"] for item in results[12:]] == ["bad_request", "unsupported_type", "undecodable"]


@pytest.mark.asyncio
async def test_concurrent_new_images_are_micro_batched(make_client: MakeClient, upstream: Upstream) -> None:
    # Each classifier call takes 50 ms: images arriving meanwhile must wait and go together.
    classifier = RecordingClassifier(delay=0.05)
    client = await make_client(classifier, batch_size=8, batch_wait_ms=5)
    urls = [upstream.url(f"/variant/{n}.png") for n in range(24)]
    response = await client.post("/api/v1/classify", json={"urls": urls})
    assert all("invert" in item for item in (await response.json())["results"])
    assert sum(classifier.batches) == 24
    assert max(classifier.batches) <= 8
    assert len(classifier.batches) <= 12, classifier.batches  # 2+ images per call on average, usually ~4 calls
    # The app's executor threads (one per core by default), never the event loop's.
    assert classifier.threads and all(name.startswith("classify_") for name in classifier.threads)


@pytest.mark.asyncio
async def test_cached_lookups_stay_fast_while_classification_is_busy(
    make_client: MakeClient, upstream: Upstream
) -> None:
    classifier = RecordingClassifier(delay=1.0)  # blocks its thread like real inference
    client = await make_client(classifier)
    cached_url = upstream.url(f"/img/{DIAGRAM}")
    await classify(client, cached_url)
    busy = asyncio.create_task(classify(client, upstream.url(f"/img/{PHOTO}")))
    await asyncio.sleep(0.05)  # the slow batch is now running
    started = time.perf_counter()
    for _ in range(20):
        status, body = await classify(client, cached_url)
        assert status == 200 and body["cached"] is True
    elapsed = time.perf_counter() - started
    assert elapsed < 0.6, f"20 cached lookups took {elapsed:.3f} s while a batch was running"
    assert not busy.done()
    assert (await busy)[0] == 200


@pytest.mark.asyncio
async def test_upload_raw_and_multipart(make_client: MakeClient) -> None:
    client = await make_client()
    raw = await client.post("/api/v1/classify/image", data=image_bytes(PHOTO), headers={"Content-Type": "image/jpeg"})
    assert raw.status == 200
    body = await raw.json()
    assert set(body) == VERDICT_KEYS and body["cached"] is False and body["invert"] is False
    assert "ETag" in raw.headers

    form = aiohttp.FormData()
    form.add_field("files", image_bytes(PHOTO), filename="photo.jpg", content_type="image/jpeg")
    form.add_field("files", tiff_bytes(), filename="scan.tiff", content_type="image/tiff")
    form.add_field("files", image_bytes(DIAGRAM), filename="score.png", content_type="image/png")
    multi = await client.post("/api/v1/classify/image", data=form)
    assert multi.status == 200
    results = (await multi.json())["results"]
    assert [item["filename"] for item in results] == ["photo.jpg", "scan.tiff", "score.png"]
    assert results[0]["cached"] is True and results[0]["sha256"] == body["sha256"]
    assert results[1]["error"]["code"] == "unsupported_format"
    assert results[2]["invert"] is True


@pytest.mark.asyncio
async def test_verdict_by_hash(make_client: MakeClient, upstream: Upstream) -> None:
    client = await make_client()
    sha256 = hashlib.sha256(image_bytes(DIAGRAM)).hexdigest()
    unknown = await client.get(f"/api/v1/verdicts/{sha256}")
    assert unknown.status == 404
    assert (await unknown.json())["error"]["code"] == "unknown_image"
    await classify(client, upstream.url(f"/img/{DIAGRAM}"))
    known = await client.get(f"/api/v1/verdicts/{sha256.upper()}")
    assert known.status == 200
    body = await known.json()
    assert body["sha256"] == sha256 and body["cached"] is True and set(body) == VERDICT_KEYS
    bad = await client.get("/api/v1/verdicts/not-a-hash")
    assert bad.status == 400 and (await bad.json())["error"]["code"] == "invalid_sha256"


@pytest.mark.asyncio
async def test_health_metrics_and_cors(make_client: MakeClient, upstream: Upstream) -> None:
    client = await make_client()
    await classify(client, upstream.url(f"/img/{DIAGRAM}"))
    await classify(client, upstream.url(f"/img/{DIAGRAM}"))
    await classify(client, upstream.url("/img/missing.png"))

    health = await (await client.get("/healthz")).json()
    assert health["status"] == "ok" and health["model"] == SaturationHeuristic.version
    assert health["cache_entries"] == {"urls": 1, "verdicts": 1} and health["uptime_s"] >= 0

    response = await client.get("/metrics")
    assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    text = await response.text()
    assert 'invertornot_http_requests_total{method="GET",route="/api/v1/classify",status="200"} 2' in text
    assert 'invertornot_http_requests_total{method="GET",route="/api/v1/classify",status="404"} 1' in text
    assert 'invertornot_cache_hits_total{cache="verdict"} 1' in text
    assert 'invertornot_classifications_total{outcome="verdict"} 1' in text
    assert 'invertornot_upstream_fetch_errors_total{code="not_found"} 1' in text
    assert 'invertornot_http_request_duration_seconds_bucket{route="/api/v1/classify",le="+Inf"} 3' in text
    assert 'invertornot_cache_entries{cache="url"} 1' in text
    assert "invertornot_model_images{" not in text  # the heuristic has no stages

    preflight = await client.options(
        "/api/url", headers={"Origin": "https://gwern.net", "Access-Control-Request-Method": "POST"}
    )
    assert preflight.status == 204
    assert preflight.headers["Access-Control-Allow-Origin"] == "*"
    assert "POST" in preflight.headers["Access-Control-Allow-Methods"]
    assert (await client.get("/healthz")).headers["Access-Control-Allow-Origin"] == "*"


@pytest.mark.asyncio
async def test_real_default_model_answers_every_v1_endpoint(
    aiohttp_client: Any, upstream: Upstream, default_model: ImageClassifier
) -> None:
    client: Client = await aiohttp_client(create_app(settings(), classifier=default_model))
    expected = {name: default_model.classify_bytes([image_bytes(name)])[0] for name in (PHOTO, DIAGRAM)}
    status, photo = await classify(client, upstream.url(f"/img/{PHOTO}"))
    assert status == 200 and photo["invert"] is False and photo["model"] == default_model.version
    assert photo["p_invert"] == expected[PHOTO].p_invert  # type: ignore[union-attr]
    batch = await client.post("/api/v1/classify", json={"urls": [upstream.url(f"/img/{DIAGRAM}")]})
    assert (await batch.json())["results"][0]["invert"] is True
    raw = await client.post("/api/v1/classify/image", data=image_bytes(DIAGRAM), headers={"Content-Type": "image/png"})
    assert (await raw.json())["invert"] is True
    by_hash = await client.get(f"/api/v1/verdicts/{photo['sha256']}")
    assert (await by_hash.json())["invert"] is False

    # Which stage answered: the model's counters, exposed as they are at scrape time.
    counts = default_model.answered_by()  # type: ignore[attr-defined]
    text = await (await client.get("/metrics")).text()
    assert set(counts) == {"screen", "backbone"}
    for stage, count in counts.items():
        assert f'invertornot_model_images{{stage="{stage}"}} {count}' in text
    assert sum(counts.values()) >= 4  # the two direct answers above and the service's two


@pytest.mark.asyncio
async def test_app_loads_the_model_itself_and_releases_everything(aiohttp_client: Any) -> None:
    app = create_app(Settings(rate_limit_per_minute=0, database_url="sqlite://"))  # in memory: no ./invertornot.db
    client: Client = await aiohttp_client(app)
    health = await (await client.get("/healthz")).json()
    assert health["model"] == read_manifest(DEFAULT_MODEL_DIR).version
    session, executor = app[SESSION], app[EXECUTOR]
    await client.close()
    assert session.closed
    with pytest.raises(RuntimeError):
        executor.submit(print)
