"""Every error status and the one error shape; refused addresses; limits; the real upstream misbehaving."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestClient

from classifier.heuristic import SaturationHeuristic
from classifier.verdict import ImageClassifier
from proxy.app import create_app
from tests.proxy.service_support import (
    DIAGRAM,
    ExplodingClassifier,
    Upstream,
    image_bytes,
    running_upstream,
    settings,
)

Client = TestClient[web.Request, web.Application]
MakeClient = Callable[..., Awaitable[Client]]


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


async def expect_error(response: aiohttp.ClientResponse, status: int, code: str | None = None) -> dict[str, str]:
    """The response is `status` with exactly the documented error shape; returns the error object."""
    body = await response.json()
    assert response.status == status, body
    assert response.content_type == "application/json"
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    if code is not None:
        assert body["error"]["code"] == code, body
    return dict(body["error"])


async def get_classify(client: Client, url: str) -> aiohttp.ClientResponse:
    return await client.get("/api/v1/classify", params={"url": url})


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/x.png",
        "http://10.1.2.3/x.png",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]/x.png",
        "http://[::ffff:127.0.0.1]/x.png",
        "http://2130706433/x.png",
        "http://localhost/x.png",
    ],
)
@pytest.mark.asyncio
async def test_private_addresses_are_refused_by_default(make_client: MakeClient, url: str) -> None:
    client = await make_client(allow_private_networks=False)
    await expect_error(await get_classify(client, url), 403, "address_refused")


@pytest.mark.asyncio
async def test_redirect_to_loopback_is_refused(make_client: MakeClient, upstream: Upstream) -> None:
    # Only the upstream's exact address is trusted; its redirect to another loopback address is not.
    client = await make_client(allow_private_networks=False, allowed_networks=("127.0.0.1/32",))
    ok = await get_classify(client, upstream.url(f"/img/{DIAGRAM}"))
    assert ok.status == 200
    hop = upstream.url("/redirect?to=http://127.0.0.2:1/admin.png")
    await expect_error(await get_classify(client, hop), 403, "address_refused")
    batch = await client.post("/api/v1/classify", json={"urls": [hop, "http://[::1]/"]})
    assert [item["error"]["code"] for item in (await batch.json())["results"]] == ["address_refused"] * 2


@pytest.mark.asyncio
async def test_upstream_failures_map_to_precise_statuses(make_client: MakeClient, upstream: Upstream) -> None:
    client = await make_client(max_image_bytes=64 * 1024)
    cases = [
        ("/img/missing.png", 404, "not_found"),
        ("/broken.png", 502, "upstream_error"),
        ("/stream.png?kib=200", 413, "too_large"),  # chunked, no Content-Length: counted while reading
        ("/page.html", 415, "unsupported_type"),
        ("/corrupt.png", 422, "undecodable"),
        ("/bomb.png", 413, "too_many_pixels"),
    ]
    for path, status, code in cases:
        await expect_error(await get_classify(client, upstream.url(path)), status, code)
    assert upstream.hits["/stream.png"] == 1


@pytest.mark.asyncio
async def test_slow_upstream_times_out_within_the_limit(make_client: MakeClient, upstream: Upstream) -> None:
    client = await make_client(total_timeout=0.5, read_timeout=5)
    started = time.perf_counter()
    await expect_error(await get_classify(client, upstream.url("/stall.png")), 504, "upstream_timeout")
    assert time.perf_counter() - started < 1.5


@pytest.mark.asyncio
async def test_malformed_requests_are_400(make_client: MakeClient) -> None:
    client = await make_client()
    await expect_error(await client.get("/api/v1/classify"), 400, "missing_url")
    await expect_error(await get_classify(client, "not a url"), 400, "bad_request")
    await expect_error(await get_classify(client, "http://user:pw@example.com/a.png"), 400, "bad_request")
    await expect_error(await client.post("/api/v1/classify", data=b"{not json"), 400, "invalid_json")
    await expect_error(await client.post("/api/v1/classify", json=["a"]), 400, "bad_request")
    await expect_error(await client.post("/api/v1/classify", json={"urls": [1, 2]}), 400, "bad_request")
    await expect_error(await client.post("/api/url", json={"urls": []}), 400, "bad_request")
    await expect_error(
        await client.post("/api/v1/classify/image", data=b"", headers={"Content-Type": "image/png"}),
        400,
        "empty_body",
    )


@pytest.mark.asyncio
async def test_request_limits_are_413(make_client: MakeClient) -> None:
    client = await make_client(max_urls_per_batch=3, max_files_per_upload=2, max_image_bytes=4096)
    too_many = {"urls": [f"http://example.com/{n}.png" for n in range(4)]}
    await expect_error(await client.post("/api/v1/classify", json=too_many), 413, "too_many_items")
    await expect_error(await client.post("/api/url", json=too_many["urls"]), 413, "too_many_items")
    big = bytes(5000)
    await expect_error(
        await client.post("/api/v1/classify/image", data=big, headers={"Content-Type": "image/png"}), 413, "too_large"
    )

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: the cap must hold while streaming
        for _ in range(10):
            yield bytes(1024)

    await expect_error(
        await client.post("/api/v1/classify/image", data=chunks(), headers={"Content-Type": "image/png"}), 413
    )
    form = aiohttp.FormData()
    for n in range(3):
        form.add_field("files", image_bytes(DIAGRAM), filename=f"{n}.png", content_type="image/png")
    await expect_error(await client.post("/api/file", data=form), 413, "too_many_files")


@pytest.mark.asyncio
async def test_request_body_over_the_global_cap_is_413(make_client: MakeClient) -> None:
    client = await make_client(max_request_bytes=2048, max_image_bytes=1024)
    form = aiohttp.FormData()
    form.add_field("files", bytes(3000), filename="big.png", content_type="image/png")
    await expect_error(await client.post("/api/v1/classify/image", data=form), 413)
    await expect_error(await client.post("/api/sha1", json=["a" * 3000]), 413, "too_large")


@pytest.mark.asyncio
async def test_unsupported_upload_type_is_415(make_client: MakeClient) -> None:
    client = await make_client()
    response = await client.post("/api/v1/classify/image", data=b"hello", headers={"Content-Type": "text/plain"})
    await expect_error(response, 415, "unsupported_type")
    await expect_error(await client.post("/api/file", json=["x"]), 415, "unsupported_type")


@pytest.mark.asyncio
async def test_unknown_route_and_wrong_method_are_json(make_client: MakeClient) -> None:
    client = await make_client()
    await expect_error(await client.get("/nope"), 404, "not_found")
    wrong = await client.delete("/api/v1/classify")
    await expect_error(wrong, 405, "method_not_allowed")
    assert set(wrong.headers["Allow"].split(",")) == {"GET", "POST"}


@pytest.mark.asyncio
async def test_rate_limit_answers_429_with_retry_after(make_client: MakeClient) -> None:
    client = await make_client(rate_limit_per_minute=60, rate_limit_burst=3)
    for _ in range(3):
        assert (await client.get("/api/v1/verdicts/" + "0" * 64)).status == 404
    limited = await client.get("/api/v1/verdicts/" + "0" * 64)
    await expect_error(limited, 429, "rate_limited")
    assert int(limited.headers["Retry-After"]) >= 1
    assert (await client.get("/healthz")).status == 200  # monitoring is never limited
    assert "invertornot_rate_limited_total 1" in await (await client.get("/metrics")).text()


@pytest.mark.asyncio
async def test_unexpected_errors_are_a_generic_500(
    make_client: MakeClient, upstream: Upstream, caplog: pytest.LogCaptureFixture
) -> None:
    client = await make_client(ExplodingClassifier())
    error = await expect_error(await get_classify(client, upstream.url(f"/img/{DIAGRAM}")), 500, "internal_error")
    assert "secret" not in error["message"]
    assert "secret internal detail" in caplog.text  # the traceback is logged, not sent
    batch = await client.post("/api/v1/classify", json={"urls": [upstream.url(f"/img/{DIAGRAM}")]})
    assert batch.status == 200
    assert (await batch.json())["results"][0]["error"]["code"] == "internal_error"


@pytest.mark.asyncio
async def test_rate_limit_keys_on_the_forwarded_client_only_when_told_to(make_client: MakeClient) -> None:
    path = "/api/v1/verdicts/" + "0" * 64
    trusting = await make_client(rate_limit_per_minute=60, rate_limit_burst=1, trust_forwarded_for=True)
    for client_ip in ("203.0.113.1", "203.0.113.2"):
        headers = {"X-Forwarded-For": f"198.51.100.9, {client_ip}"}
        assert (await trusting.get(path, headers=headers)).status == 404
    again = await trusting.get(path, headers={"X-Forwarded-For": "203.0.113.1"})
    await expect_error(again, 429, "rate_limited")

    untrusting = await make_client(rate_limit_per_minute=60, rate_limit_burst=1)
    assert (await untrusting.get(path, headers={"X-Forwarded-For": "203.0.113.1"})).status == 404
    spoofed = await untrusting.get(path, headers={"X-Forwarded-For": "203.0.113.2"})
    await expect_error(spoofed, 429, "rate_limited")  # a made-up header buys no new budget
