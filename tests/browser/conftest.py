"""Fixtures of the browser tests: Debian's Chromium driven by Playwright, a local "site" serving test pages and
real dataset images, and the real classification service with the shipped model, all on 127.0.0.1.

Everything runs on one event loop for this package (Playwright's async API beside the aiohttp servers), so
the model loads and the browser starts once, and both are gone before other tests run. Tests mark
themselves `pytest.mark.asyncio(loop_scope="package")`.
"""

from __future__ import annotations

import json
import os
import socket
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestServer
from playwright.async_api import Browser, BrowserContext, Page, async_playwright

from proxy.app import create_app
from proxy.settings import Settings
from tests.proxy.service_support import IMAGES, settings

ROOT = Path(__file__).resolve().parents[2]
USERSCRIPT = ROOT / "userscript" / "invertornot.user.js"
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = Path("/usr/bin/chromium")
# Flags that work as root in containers (see ENVIRONMENT.md); Playwright adds a fresh profile directory.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

# Dataset images whose verdicts from the shipped model were checked: p_invert >= 0.98 for the diagrams and
# plots, <= 0.01 for the photos and the painting (labels.csv: diagram/plot 1, photo/painting 0).
DIAGRAM = "d77455be2c49c3fa.png"
PLOT = "02ec741b4f54fa64.png"
PHOTO = "1ad3439e3f622be7.jpg"
PAINTING = "49c434b9397fdfbb.jpg"
MANUAL_PLOT = "75ca53e4208c3d94.png"  # a plot the model would invert, marked invert-not by the page
MANUAL_PHOTO = "d71e4e0341e7f691.jpg"  # a photo inside a .skin-invert figure: the page says invert
LAZY_DIAGRAM = "518c0fb19824d7bf.png"  # added by script after the page loaded
UPLOAD_DIAGRAM = "b7be0004a080b28b.jpg"  # the demo page's upload
SITE_IMAGES = frozenset({DIAGRAM, PLOT, PHOTO, PAINTING, MANUAL_PLOT, MANUAL_PHOTO, LAZY_DIAGRAM, UPLOAD_DIAGRAM})
# Images the scripts must classify on the test page, by element id, and the verdict expected.
EXPECTED = {"diagram": True, "plot": True, "photo": False, "painting": False}
INVERT_FILTER = "grayscale(0.5) invert(1) brightness(0.95) hue-rotate(180deg)"
DIM_FILTER = "grayscale(0.5)"
ONE_PIXEL_GIF = "data:image/gif;base64,R0lGODlhAQABAIAAAP///wAAACH5BAEAAAAALAAAAAABAAEAAAICRAEAOw=="

BODY = f"""<h1>A test page</h1>
<img id="diagram" src="/img/{DIAGRAM}" alt="diagram">
<img id="plot" src="/img/{PLOT}" alt="plot">
<img id="photo" src="/img/{PHOTO}" alt="photo">
<img id="painting" src="/img/{PAINTING}" alt="painting">
<img id="manual-not" class="invert-not" src="/img/{MANUAL_PLOT}" alt="plot marked invert-not">
<figure class="skin-invert"><img id="manual-ancestor" src="/img/{MANUAL_PHOTO}" alt="photo in skin-invert"></figure>
<img id="inline" src="{ONE_PIXEL_GIF}" width="40" height="40" alt="inline data URL">
<img id="tiny" src="/img/{PHOTO}?tiny" width="12" height="12" alt="a spacer-sized image">
<img id="proxied" class="invert" data-invertornot="invert" src="/img/{DIAGRAM}?proxied" alt="marked by the page proxy">
"""
PAGE = """<!doctype html>
<html class="{html_class}" lang="en">
<head><meta charset="utf-8"><title>InvertOrNot test page</title>{head}
<style>img {{ display: inline-block; max-width: 200px; margin: 4px; }}</style></head>
<body>
{body}
</body>
</html>
"""


def chromium_or_skip() -> Path:
    """Chromium must be there in CI (.ci/run installs it); elsewhere its absence skips the browser tests."""
    if CHROMIUM.exists():
        return CHROMIUM
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{CHROMIUM} is missing in CI: install Debian's chromium package")
    pytest.skip(f"{CHROMIUM} is not installed (apt-get install -y chromium)")


def free_port() -> int:
    """A port nothing listens on (bound, then closed): an unreachable API."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- the site: test pages and images -------------------------------------------------------------------


@dataclass
class Site:
    base: str
    hits: Counter[str] = field(default_factory=Counter)

    def url(self, path: str) -> str:
        return f"{self.base}{path}"


def site_app(hits: Counter[str]) -> web.Application:
    async def image(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        hits[request.path] += 1
        if name not in SITE_IMAGES:
            raise web.HTTPNotFound()
        content_type = "image/jpeg" if name.endswith(".jpg") else "image/png"
        return web.Response(body=(IMAGES / name).read_bytes(), content_type=content_type)

    async def page(request: web.Request) -> web.Response:
        # ?theme=night|day|os sets Wikipedia's dark-mode class; ?snippet=API includes the site snippet.
        html_class = f"skin-theme-clientpref-{request.query['theme']}" if "theme" in request.query else ""
        head = ""
        if "snippet" in request.query:
            api = request.query["snippet"]
            css = request.query.get("css", "")
            if css == "link":
                head += f'\n<link rel="stylesheet" href="{api}/userscript/invertornot.css">'
            head += f'\n<script src="{api}/userscript/invertornot.js" data-api="{api}"'
            head += ' data-css="none"' if css == "link" else ""
            head += " defer></script>"
        html = PAGE.format(html_class=html_class, head=head, body=BODY)
        return web.Response(text=html, content_type="text/html")

    async def favicon(request: web.Request) -> web.Response:
        return web.Response(status=204)  # browsers ask; a 404 would be console noise

    app = web.Application()
    app.router.add_get("/favicon.ico", favicon)
    app.router.add_get("/img/{name}", image)
    app.router.add_get("/page.html", page)
    return app


@pytest_asyncio.fixture(scope="package", loop_scope="package")
async def site() -> AsyncIterator[Site]:
    hits: Counter[str] = Counter()
    server = TestServer(site_app(hits), host="127.0.0.1")
    await server.start_server()
    try:
        yield Site(f"http://127.0.0.1:{server.port}", hits)
    finally:
        await server.close()


# -- the service: the real app with the shipped model -------------------------------------------------


@pytest_asyncio.fixture(scope="package", loop_scope="package")
async def service(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[str]:
    """The classification service with the default model; it may fetch from the loopback site. Corrections
    (the demo's report button) go to an in-memory store and a temporary image folder."""
    overrides: dict[str, Any] = {"total_timeout": 5.0, "read_timeout": 5.0}
    storage = {"database_url": "sqlite://", "correction_images_dir": tmp_path_factory.mktemp("correction-images")}
    overrides.update({name: value for name, value in storage.items() if name in Settings.__dataclass_fields__})
    server = TestServer(create_app(settings(**overrides)), host="127.0.0.1")
    await server.start_server()
    try:
        yield f"http://127.0.0.1:{server.port}"
    finally:
        await server.close()


@pytest_asyncio.fixture(scope="package", loop_scope="package")
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


# -- the browser ------------------------------------------------------------------------------------


@pytest_asyncio.fixture(scope="package", loop_scope="package")
async def browser() -> AsyncIterator[Browser]:
    executable = chromium_or_skip()
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=str(executable), args=CHROMIUM_FLAGS)
        try:
            yield launched
        finally:
            await launched.close()


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


# -- a userscript manager, as far as the script can tell ---------------------------------------------

GM_SHIM = """
(() => {
  const menu = {};
  window.__gmMenu = menu;
  window.GM = {
    info: { script: { name: 'InvertOrNot', version: 'test' } },
    xmlHttpRequest(details) {
      const request = { method: details.method || 'GET', url: details.url, headers: details.headers || {},
                        data: details.data === undefined ? null : details.data, timeout: details.timeout || 0 };
      window.__gmXhr(request).then(
        (response) => details.onload && details.onload(Object.assign({ finalUrl: details.url }, response)),
        (error) => details.onerror && details.onerror({ error: String(error) }));
    },
    getValue: async (key, fallback) => {
      const value = await window.__gmGetValue(key);
      return value === null ? fallback : value;
    },
    setValue: (key, value) => window.__gmSetValue(key, value),
    registerMenuCommand: (name, action) => { menu[name] = action; },
  };
})();
"""
SETTINGS_KEY = "invertornot.settings"
CACHE_KEY = "invertornot.cache"


@dataclass
class GmShim:
    """The GM.* APIs a manager gives the userscript, backed by Python: GM.xmlHttpRequest goes out through
    aiohttp (like a manager's, it ignores CORS) and is recorded; GM storage is a dict the test can read
    and preload. It outlives page loads, like a manager's storage."""

    http: aiohttp.ClientSession
    values: dict[str, Any] = field(default_factory=dict)
    requests: list[dict[str, Any]] = field(default_factory=list)
    reads: list[str] = field(default_factory=list)

    async def install(self, context: BrowserContext) -> None:
        await context.expose_function("__gmXhr", self.xhr)
        await context.expose_function("__gmGetValue", self.get_value)
        await context.expose_function("__gmSetValue", self.set_value)
        source = USERSCRIPT.read_text()
        # @run-at document-end: the manager runs the script once the document is parsed.
        await context.add_init_script(
            GM_SHIM + "document.addEventListener('DOMContentLoaded', () => {\n" + source + "\n}, { once: true });"
        )

    async def xhr(self, request: dict[str, Any]) -> dict[str, Any]:
        body = json.loads(request["data"]) if request["data"] else None
        self.requests.append({"method": request["method"], "url": request["url"], "body": body})
        timeout = aiohttp.ClientTimeout(total=(request["timeout"] or 30000) / 1000)
        async with self.http.request(
            request["method"], request["url"], data=request["data"], headers=request["headers"], timeout=timeout
        ) as response:
            return {"status": response.status, "responseText": await response.text()}

    async def get_value(self, key: str) -> Any:
        self.reads.append(key)
        return self.values.get(key)

    async def set_value(self, key: str, value: Any) -> None:
        self.values[key] = value

    def settings(self, **values: Any) -> None:
        self.values[SETTINGS_KEY] = json.dumps(values)

    def cache(self) -> dict[str, Any] | None:
        text = self.values.get(CACHE_KEY)
        return json.loads(text) if text else None

    def classified_urls(self) -> list[list[str]]:
        """The URL list of every classification request the script made, in order."""
        return [r["body"]["urls"] for r in self.requests if r["url"].endswith("/api/v1/classify")]


@dataclass
class ScriptPage:
    """A page with the userscript installed, its manager shim, and what the page logged."""

    page: Page
    shim: GmShim
    console: list[str]

    def complaints(self) -> list[str]:
        """Console warnings and errors, and uncaught exceptions: the script must cause none."""
        return [line for line in self.console if line.startswith(("warning", "error", "pageerror"))]


OpenUserscriptPage = Callable[..., Awaitable[ScriptPage]]


@pytest_asyncio.fixture(loop_scope="package")
async def open_userscript_page(
    browser: Browser, http: aiohttp.ClientSession, service: str
) -> AsyncIterator[OpenUserscriptPage]:
    """A factory: a fresh browser context with the userscript installed and a page of it. The script's API
    is the real service unless the given shim or `script_settings` say otherwise."""
    contexts: list[BrowserContext] = []

    async def open_page(
        *, color_scheme: Literal["dark", "light"] = "dark", shim: GmShim | None = None, **script_settings: Any
    ) -> ScriptPage:
        context = await browser.new_context(color_scheme=color_scheme)
        contexts.append(context)
        shim = shim or GmShim(http)
        if SETTINGS_KEY not in shim.values:
            shim.settings(**{"apiUrl": service, **script_settings})
        await shim.install(context)
        page = await context.new_page()
        console: list[str] = []
        page.on("console", lambda message: console.append(f"{message.type}: {message.text}"))
        page.on("pageerror", lambda error: console.append(f"pageerror: {error}"))
        return ScriptPage(page, shim, console)

    yield open_page
    for context in contexts:
        await context.close()


# -- reading the page -----------------------------------------------------------------------------------


async def image_state(page: Page, element_id: str) -> dict[str, Any]:
    """What a reader's browser shows for one image: classes, our mark, the computed filter."""
    state: dict[str, Any] = await page.evaluate(
        """(id) => {
            const img = document.getElementById(id);
            return { classes: img.className, mark: img.getAttribute('data-invertornot'),
                     p: img.getAttribute('data-invertornot-p'), model: img.getAttribute('data-invertornot-model'),
                     filter: getComputedStyle(img).filter };
        }""",
        element_id,
    )
    return state


async def wait_for_marks(page: Page, ids: list[str], marks: tuple[str, ...] = ("invert", "invert-not")) -> None:
    """Until every image in `ids` carries one of `marks` in data-invertornot."""
    await page.wait_for_function(
        """([ids, marks]) => ids.every((id) => {
            const img = document.getElementById(id);
            return img && marks.includes(img.getAttribute('data-invertornot'));
        })""",
        arg=[ids, list(marks)],
        timeout=15000,
    )
