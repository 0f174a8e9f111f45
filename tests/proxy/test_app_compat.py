"""invertornot.com-compatible endpoints: that service's request and response shapes, in input order.

Its documented answer for a URL is `[{"invert": 0, "sha1": "<hex>", "error": "", "url": "<url>"}]`;
`/api/file` and `/api/sha1` answer `{invert, sha1, error}` per item; failures are `invert: -1` with a
message in `error`; `/api/correction` answers `null`.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestClient

from classifier.heuristic import SaturationHeuristic
from classifier.verdict import ImageClassifier
from proxy.app import create_app
from tests.proxy.service_support import DIAGRAM, PHOTO, Upstream, image_bytes, running_upstream, settings

Client = TestClient[web.Request, web.Application]


def sha1(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


def assert_compat_shape(item: dict[str, Any], *extra: str) -> None:
    assert set(item) == {"invert", "sha1", "error", *extra}, item
    assert item["invert"] in (-1, 0, 1) and isinstance(item["sha1"], str) and isinstance(item["error"], str)
    assert (item["invert"] == -1) == bool(item["error"]), item


@pytest_asyncio.fixture
async def upstream() -> AsyncIterator[Upstream]:
    async with running_upstream() as server:
        yield server


async def client_for(aiohttp_client: Any, classifier: ImageClassifier) -> Client:
    return await aiohttp_client(create_app(settings(), classifier=classifier))


@pytest.mark.asyncio
async def test_api_url_shapes_and_order(aiohttp_client: Any, upstream: Upstream) -> None:
    client = await client_for(aiohttp_client, SaturationHeuristic())
    urls = [
        upstream.url(f"/img/{PHOTO}"),
        upstream.url("/img/missing.png"),
        "ftp://example.com/x.png",
        upstream.url(f"/img/{DIAGRAM}"),
        upstream.url("/corrupt.png"),
    ]
    response = await client.post("/api/url", json=urls)
    assert response.status == 200
    results = await response.json()
    assert [item["url"] for item in results] == urls
    for item in results:
        assert_compat_shape(item, "url")
    assert results[0] == {"invert": 0, "sha1": sha1(image_bytes(PHOTO)), "error": "", "url": urls[0]}
    assert results[3]["invert"] == 1 and results[3]["sha1"] == sha1(image_bytes(DIAGRAM))
    assert [item["invert"] for item in results[1:3]] == [-1, -1]
    assert results[1]["sha1"] == "" and "404" in results[1]["error"]
    assert results[4]["invert"] == -1 and results[4]["sha1"]  # fetched, hashed, but undecodable


@pytest.mark.asyncio
async def test_api_file_and_sha1_lookups(aiohttp_client: Any) -> None:
    client = await client_for(aiohttp_client, SaturationHeuristic())
    unknown = await (await client.post("/api/sha1", json=[sha1(image_bytes(PHOTO))])).json()
    assert unknown == [
        {"invert": -1, "sha1": sha1(image_bytes(PHOTO)), "error": "No image found with the provided SHA1 hash"}
    ]

    form = aiohttp.FormData()
    form.add_field("files", image_bytes(DIAGRAM), filename="score.png", content_type="image/png")
    form.add_field("other", "ignored form field")
    form.add_field("files", image_bytes(PHOTO), filename="photo.jpg", content_type="image/jpeg")
    form.add_field("files", b"", filename="empty.png", content_type="image/png")
    response = await client.post("/api/file", data=form)
    assert response.status == 200
    files = await response.json()
    for item in files:
        assert_compat_shape(item, "filename")
    assert [(item["filename"], item["invert"]) for item in files] == [
        ("score.png", 1),
        ("photo.jpg", 0),
        ("empty.png", -1),
    ]
    assert files[0]["sha1"] == sha1(image_bytes(DIAGRAM))

    hashes = [sha1(image_bytes(PHOTO)), "0" * 40, sha1(image_bytes(DIAGRAM)).upper()]
    looked_up = await (await client.post("/api/sha1", json=hashes)).json()
    for item in looked_up:
        assert_compat_shape(item)
    assert [item["invert"] for item in looked_up] == [0, -1, 1]
    assert looked_up[0]["sha1"] == hashes[0]


@pytest.mark.asyncio
async def test_compat_endpoints_with_the_real_default_model(
    aiohttp_client: Any, upstream: Upstream, default_model: ImageClassifier
) -> None:
    client = await client_for(aiohttp_client, default_model)
    by_url = await (await client.post("/api/url", json=[upstream.url(f"/img/{PHOTO}")])).json()
    assert by_url[0]["invert"] == 0 and by_url[0]["error"] == ""
    form = aiohttp.FormData()
    form.add_field("files", image_bytes(DIAGRAM), filename="score.png", content_type="image/png")
    by_file = await (await client.post("/api/file", data=form)).json()
    assert by_file[0]["invert"] == 1
    by_sha1 = await (await client.post("/api/sha1", json=[by_url[0]["sha1"], by_file[0]["sha1"]])).json()
    assert [item["invert"] for item in by_sha1] == [0, 1]
    correction = await client.post("/api/correction", json=[upstream.url(f"/img/{PHOTO}")])
    assert correction.status == 200
