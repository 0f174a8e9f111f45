"""The browser-facing routes over a real server: the demo page and its assets, the userscript set up for the
server that hands it out, caching validators, and JSON 404s (also when the userscript is not installed)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from classifier.heuristic import SaturationHeuristic
from proxy.app import create_app
from proxy.metrics import Metrics
from proxy.middleware import edge_middleware
from proxy.static_routes import (
    DEFAULT_ORIGIN,
    STATIC_DIR,
    USERSCRIPT_DIR,
    add_static_routes,
    personalise_userscript,
)
from tests.proxy.service_support import settings

Client = TestClient[web.Request, web.Application]
MakeClient = Callable[..., Awaitable[Client]]


@pytest.fixture
def make_client(aiohttp_client: Any) -> MakeClient:
    async def make(**overrides: Any) -> Client:
        return await aiohttp_client(create_app(settings(**overrides), classifier=SaturationHeuristic()))

    return make


@pytest.mark.asyncio
async def test_demo_page_and_assets_are_served_with_a_strict_policy(make_client: MakeClient) -> None:
    client = await make_client()
    page = await client.get("/")
    assert page.status == 200 and page.content_type == "text/html"
    html = await page.text()
    assert html == (STATIC_DIR / "index.html").read_text()
    policy = page.headers["Content-Security-Policy"]
    assert "script-src 'self'" in policy and "connect-src 'self'" in policy and "default-src 'none'" in policy
    assert page.headers["X-Content-Type-Options"] == "nosniff"
    for asset in ("demo.js", "demo.css"):
        assert f"/static/{asset}" in html
        response = await client.get(f"/static/{asset}")
        assert response.status == 200 and await response.read() == (STATIC_DIR / asset).read_bytes()
    assert (await client.get("/static/demo.js")).content_type == "text/javascript"
    assert (await client.get("/static/demo.css")).content_type == "text/css"


@pytest.mark.asyncio
async def test_unchanged_files_revalidate_to_304(make_client: MakeClient) -> None:
    client = await make_client()
    first = await client.get("/static/demo.js")
    etag = first.headers["ETag"]
    assert first.headers["Cache-Control"] == "no-cache"
    again = await client.get("/static/demo.js", headers={"If-None-Match": etag})
    assert again.status == 304 and await again.read() == b""
    changed = await client.get("/static/demo.js", headers={"If-None-Match": '"something-else"'})
    assert changed.status == 200


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "path", ["/static/nope.js", "/static/.hidden", "/userscript/nope.js", "/userscript/x%2F..%2Fapp.py"]
)
async def test_unknown_files_are_json_404s(make_client: MakeClient, path: str) -> None:
    response = await (await make_client()).get(path)
    assert response.status == 404
    assert (await response.json())["error"]["code"] == "not_found"


@pytest.mark.asyncio
async def test_userscript_is_handed_out_set_up_for_this_server(make_client: MakeClient) -> None:
    client = await make_client()
    response = await client.get("/userscript/invertornot.user.js")
    assert response.status == 200 and response.content_type == "text/javascript"
    text = await response.text()
    origin = f"http://127.0.0.1:{client.port}"
    shipped = (USERSCRIPT_DIR / "invertornot.user.js").read_text()
    assert text == shipped.replace(DEFAULT_ORIGIN, origin)
    assert f"// @updateURL    {origin}/userscript/invertornot.user.js" in text
    assert f"const DEFAULT_API_URL = '{origin}';" in text

    # The snippet and its CSS are served as shipped: the snippet finds its server from its own URL.
    for name in ("invertornot.js", "invertornot.css"):
        served = await client.get(f"/userscript/{name}")
        assert await served.read() == (USERSCRIPT_DIR / name).read_bytes()


@pytest.mark.asyncio
async def test_forwarded_host_is_used_only_when_trusted(make_client: MakeClient) -> None:
    forwarded = {"X-Forwarded-Host": "dark.example.org", "X-Forwarded-Proto": "https"}
    untrusted = await make_client()
    text = await (await untrusted.get("/userscript/invertornot.user.js", headers=forwarded)).text()
    assert "dark.example.org" not in text

    trusted = await make_client(trust_forwarded_for=True)
    response = await trusted.get("/userscript/invertornot.user.js", headers=forwarded)
    text = await response.text()
    assert "const DEFAULT_API_URL = 'https://dark.example.org';" in text
    assert "// @connect      dark.example.org\n" in text
    assert "X-Forwarded-Host" in response.headers["Vary"]

    # A host that is no host name (it would plant a path, or more, in the script) is refused: the shipped
    # file is served.
    hostile = {"X-Forwarded-Host": "evil.example/x.js?// @require http://evil.example/x.js"}
    text = await (await trusted.get("/userscript/invertornot.user.js", headers=hostile)).text()
    assert "evil" not in text and DEFAULT_ORIGIN in text


def test_personalise_keeps_the_default_and_adds_connect_once() -> None:
    shipped = (USERSCRIPT_DIR / "invertornot.user.js").read_text()
    assert personalise_userscript(shipped, DEFAULT_ORIGIN) == shipped
    local = personalise_userscript(shipped, "http://localhost:9000")
    assert local.count("// @connect") == shipped.count("// @connect")
    remote = personalise_userscript(shipped, "https://[2001:db8::1]:8443")
    assert "// @connect      2001:db8::1\n" in remote and "https://[2001:db8::1]:8443/userscript/" in remote


@pytest.mark.asyncio
async def test_an_install_without_the_userscript_answers_a_json_404(aiohttp_client: Any, tmp_path: Path) -> None:
    app = web.Application(middlewares=[edge_middleware(Metrics())])  # the service's JSON error rendering
    add_static_routes(app, static_dir=tmp_path / "no-static", userscript_dir=tmp_path / "no-userscript")
    client = await aiohttp_client(app)
    for path in ("/", "/userscript/invertornot.user.js"):
        response = await client.get(path)
        assert response.status == 404 and response.content_type == "application/json"
        assert (await response.json())["error"]["code"] == "not_installed"
