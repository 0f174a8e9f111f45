"""Two service instances sharing a real redis-server on 127.0.0.1, each with its own corrections database:
verdicts, single-flight, corrections and model reloads cross over; killing Redis fails no request, and
restarting it restores sharing."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestClient

from classifier.verdict import ImageClassifier
from proxy.app import create_app
from tests.proxy.redis_server import RedisServer, redis_or_skip
from tests.proxy.service_support import (
    DIAGRAM,
    PHOTO,
    SMALL_PNGS,
    RecordingClassifier,
    Upstream,
    image_bytes,
    running_upstream,
    settings,
    variant,
)

Client = TestClient[web.Request, web.Application]
MakeInstance = Callable[..., Awaitable[Client]]
SECRET = "s3cret-token-for-tests-0001"
AUTH = {"Authorization": f"Bearer {SECRET}"}


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(redis_or_skip(), tmp_path)
    server.start()
    yield server
    server.stop()


@pytest_asyncio.fixture
async def upstream() -> AsyncIterator[Upstream]:
    async with running_upstream() as server:
        yield server


@pytest.fixture
def make_instance(redis_server: RedisServer, aiohttp_client: Any, tmp_path: Path) -> MakeInstance:
    """An instance on its own port with its own SQLite database; only Redis connects the instances."""

    async def make(name: str, classifier: ImageClassifier, **overrides: Any) -> Client:
        values = {
            "redis_url": redis_server.url,
            "redis_retry_seconds": 0.1,
            "database_url": f"sqlite:///{tmp_path}/{name}.db",
            "api_tokens": (f"alice:{SECRET}",),
        }
        return await aiohttp_client(create_app(settings(**{**values, **overrides}), classifier=classifier))

    return make


async def classify(client: Client, url: str) -> dict[str, Any]:
    response = await client.get("/api/v1/classify", params={"url": url})
    assert response.status == 200, await response.text()
    return dict(await response.json())


async def metric(client: Client, name: str) -> float:
    text = await (await client.get("/metrics")).text()
    found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


async def eventually(check: Callable[[], Awaitable[bool]], *, within: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


@pytest.mark.asyncio
async def test_a_verdict_computed_on_one_instance_is_served_by_the_other(
    make_instance: MakeInstance, upstream: Upstream
) -> None:
    a_model, b_model = RecordingClassifier(), RecordingClassifier()
    a, b = await make_instance("a", a_model), await make_instance("b", b_model)
    url = upstream.url(f"/img/{DIAGRAM}")

    first = await classify(a, url)
    assert first["cached"] is False
    assert await classify(b, url) == {**first, "cached": True}
    assert upstream.hits[f"/img/{DIAGRAM}"] == 1, "B found the URL's image in Redis and fetched nothing"
    assert b_model.batches == [], "B classified nothing"
    assert await metric(b, 'invertornot_cache_hits_total{cache="redis_url"}') == 1

    # An upload classified on A is known to B by its hash.
    uploaded = await a.post("/api/v1/classify/image", data=image_bytes(PHOTO), headers={"Content-Type": "image/jpeg"})
    verdict = await uploaded.json()
    by_hash = await b.get(f"/api/v1/verdicts/{verdict['sha256']}")
    assert by_hash.status == 200
    assert {**(await by_hash.json()), "cached": False} == verdict
    unknown = await b.get(f"/api/v1/verdicts/{hashlib.sha256(b'never seen').hexdigest()}")
    assert unknown.status == 404
    assert await metric(a, "invertornot_redis_up") == 1


@pytest.mark.asyncio
async def test_an_image_is_classified_once_across_instances(make_instance: MakeInstance) -> None:
    # Slow classifiers: both instances get every image while the first classification is still running.
    a_model, b_model = RecordingClassifier(delay=0.3), RecordingClassifier(delay=0.3)
    a, b = await make_instance("a", a_model), await make_instance("b", b_model)
    blobs = [variant(SMALL_PNGS[n], 900 + n) for n in range(4)]

    async def upload(client: Client, blob: bytes) -> dict[str, Any]:
        response = await client.post("/api/v1/classify/image", data=blob, headers={"Content-Type": "image/png"})
        assert response.status == 200, await response.text()
        return dict(await response.json())

    answers = await asyncio.gather(*(upload(client, blob) for blob in blobs for client in (a, b, a, b)))
    assert sum(a_model.batches) + sum(b_model.batches) == len(blobs), "every image was classified exactly once"
    for n, blob in enumerate(blobs):
        four = answers[4 * n : 4 * n + 4]
        assert {answer["sha256"] for answer in four} == {hashlib.sha256(blob).hexdigest()}
        assert len({(answer["invert"], answer["p_invert"]) for answer in four}) == 1
    waited = await metric(a, 'invertornot_redis_lock_waits_total{outcome="shared"}')
    waited += await metric(b, 'invertornot_redis_lock_waits_total{outcome="shared"}')
    assert waited == len(blobs), "for each image, the other instance waited for the holder's verdict"


@pytest.mark.asyncio
async def test_a_correction_on_one_instance_is_honoured_by_the_other(
    make_instance: MakeInstance, upstream: Upstream
) -> None:
    a, b = await make_instance("a", RecordingClassifier()), await make_instance("b", RecordingClassifier())
    url = upstream.url(f"/img/{DIAGRAM}")
    before = await classify(b, url)
    assert (await classify(a, url))["cached"] is True
    wanted = not before["invert"]

    response = await a.post("/api/v1/corrections", json={"sha256": before["sha256"], "invert": wanted}, headers=AUTH)
    assert response.status == 202 and (await response.json())["status"] == "accepted"

    async def b_answers_the_correction() -> bool:
        answer = await classify(b, url)
        return bool(answer["source"] == "correction" and answer["invert"] is wanted)

    await eventually(b_answers_the_correction)
    # A third instance started later learns the label too (it missed the announcement).
    c = await make_instance("c", RecordingClassifier())
    await eventually(lambda: _answers(c, url, source="correction", invert=wanted))


async def _answers(client: Client, url: str, **expected: Any) -> bool:
    answer = await classify(client, url)
    return all(answer[key] == value for key, value in expected.items())


@pytest.mark.asyncio
async def test_killing_redis_fails_no_request_and_a_restart_restores_sharing(
    make_instance: MakeInstance, upstream: Upstream, redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="proxy.shared_cache")
    a_model, b_model = RecordingClassifier(), RecordingClassifier()
    a, b = await make_instance("a", a_model), await make_instance("b", b_model)
    diagram = upstream.url(f"/img/{DIAGRAM}")
    before = await classify(a, diagram)
    assert (await classify(b, diagram))["cached"] is True
    statuses: list[int] = []
    stop = asyncio.Event()

    async def traffic(client: Client, first: int) -> None:
        n = 0
        while not stop.is_set():  # new images and repeated ones, on both instances
            response = await client.get(
                "/api/v1/classify", params={"url": upstream.url(f"/variant/{first + n % 40}.png")}
            )
            statuses.append(response.status)
            await response.read()
            n += 1

    load = [asyncio.create_task(traffic(client, first)) for client in (a, b) for first in (0, 20)]
    await asyncio.sleep(0.3)
    redis_server.kill()
    await asyncio.sleep(0.5)
    # Made while Redis is away: A keeps the announcement and sends it once Redis is back.
    correction = await a.post(
        "/api/v1/corrections", json={"sha256": before["sha256"], "invert": not before["invert"]}, headers=AUTH
    )
    assert correction.status == 202
    await asyncio.sleep(0.3)
    stop.set()
    await asyncio.gather(*load)

    assert len(statuses) > 50 and set(statuses) == {200}, "no request failed while Redis was away"
    for client in (a, b):
        assert await metric(client, "invertornot_redis_up") == 0
        assert await metric(client, "invertornot_redis_outages_total") == 1
    outages = [record for record in caplog.records if "unreachable" in record.getMessage()]
    assert len(outages) == 2 and all(record.levelno == logging.WARNING for record in outages), "one line per instance"
    assert (await classify(b, diagram))["source"] != "correction", "B cannot know yet"

    redis_server.start()  # empty: a replaced cache node

    async def both_back() -> bool:
        return await metric(a, "invertornot_redis_up") == 1 and await metric(b, "invertornot_redis_up") == 1

    await eventually(both_back)
    await eventually(lambda: _answers(b, diagram, source="correction", invert=not before["invert"]))
    batches = len(b_model.batches)
    photo = upstream.url(f"/img/{PHOTO}")
    assert (await classify(a, photo))["cached"] is False
    assert (await classify(b, photo))["cached"] is True
    assert len(b_model.batches) == batches and upstream.hits[f"/img/{PHOTO}"] == 1, "sharing is back"
    back = [record for record in caplog.records if "reachable again" in record.getMessage()]
    assert len(back) == 2


@pytest.mark.asyncio
async def test_a_model_reload_on_one_instance_is_followed_by_the_other(make_instance: MakeInstance) -> None:
    # Both start on the heuristic; the configured model (the shipped one) is what a reload loads.
    a, b = await make_instance("a", RecordingClassifier()), await make_instance("b", RecordingClassifier())
    heuristic = (await (await b.get("/healthz")).json())["model"]
    response = await a.post("/api/v1/admin/reload", headers=AUTH)
    assert response.status == 200, await response.text()
    reloaded = await response.json()
    assert reloaded["changed"] is True and reloaded["previous"] == heuristic

    async def b_follows() -> bool:
        return bool((await (await b.get("/healthz")).json())["model"] == reloaded["model"])

    await eventually(b_follows, within=30)
