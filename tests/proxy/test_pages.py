"""The page proxy (GET /api/v1/page) over a real server, fetching pages and images from a real local upstream.

Every host name resolves to one upstream on 127.0.0.1 (a test resolver; the address policy allows only
127.0.0.0/8), which serves the repository's page fixtures, and the real Wikipedia pages of
../shared/pages when present, at their own URLs, and real dataset images at every other path. So the
images of the real pages, which point at upload.wikimedia.org, are fetched from 127.0.0.1 and nothing
outside this machine is ever contacted.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import socket
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import yarl
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.test_utils import TestClient, TestServer
from selectolax.lexbor import LexborDocumentOptions, LexborHTMLParser, LexborNode

from classifier.heuristic import SaturationHeuristic
from proxy.app import create_app
from proxy.appkeys import SERVICE
from proxy.page_cache import RenderedPage, RenderedPages
from proxy.pageimages import INVERT_MARKUP, INVERT_NOT_MARKUP
from proxy.pages import decode_html, page_source
from proxy.pages_routes import PAGE_CSP, PAGES
from proxy.rewrite import Page, find_images
from proxy.settings import Settings
from proxy.urls import parse_srcset, url_scheme
from tests.proxy.service_support import IMAGES, PHOTO, SMALL_PNGS, RecordingClassifier, settings

Client = TestClient[web.Request, web.Application]
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "pages"
SHARED_PAGES = Path(__file__).resolve().parents[3] / "shared" / "pages"

# Where each page would have been fetched from (http: the local upstream speaks no TLS, so served pages
# have their https: URLs turned into http: ones too).
FIXTURE_URLS = {
    "parsoid.html": "http://en.wikipedia.org/api/rest_v1/page/html/Lighthouse",
    "mobile-html.html": "http://en.wikipedia.org/api/rest_v1/page/mobile-html/Harbour",
    "mobilefrontend.html": "http://en.m.wikipedia.org/w/api.php?action=parse&page=Owl&format=json",
    "rtl.html": "http://ar.wikipedia.org/api/rest_v1/page/html/%D8%B1%D9%8A%D8%A7%D8%B6%D9%8A%D8%A7%D8%AA",
    "picture.html": "http://www.example.com/gallery/index.html",
    "manual.html": "http://example.org/manual/",
    "hostile.html": "http://example.org/hostile/page.html",
}
SHARED_URLS = {
    "arwiki-Mathematics.parsoid-page-html.html": "http://ar.wikipedia.org/api/rest_v1/page/html/Mathematics",
    "cswiki-NATO.mobile-html-fragment.html": "http://cs.wikipedia.org/api/rest_v1/page/mobile-html/NATO",
    "enwiki-Cat.mobilefrontend-parse-lazy.html": "http://en.m.wikipedia.org/wiki/Cat",
    "enwiki-Dog.mobile-html.html": "http://en.wikipedia.org/api/rest_v1/page/mobile-html/Dog",
    "enwiki-Dog.parsoid-page-html.html": "http://en.wikipedia.org/api/rest_v1/page/html/Dog",
    "enwiki-MCS_Test_Frankenstein.mobile-html.html": "http://en.wikipedia.org/api/rest_v1/page/mobile-html/MCS",
    "zhwiki-Cat.mobilefrontend-parse-lazy.html": "http://zh.m.wikipedia.org/wiki/Cat",
}
SUMMARY_URL = "http://en.wikipedia.org/api/rest_v1/page/summary/Lighthouse"
SHARED_SUMMARY = "enwiki-Tokyo.rest-page-summary.json"
SHARED_SUMMARY_URL = "http://en.wikipedia.org/api/rest_v1/page/summary/Tokyo"
URL_ATTRIBUTES = ("href", "src", "srcset", "data-src", "data-srcset", "poster", "action", "formaction", "cite")
MANUAL_CLASSES = INVERT_MARKUP | INVERT_NOT_MARKUP
ACTIVE_ELEMENTS = ("script", "iframe", "object", "embed", "frame", "frameset", "applet", "template")
INVISIBLE = ("script", "style", "template", "iframe", "noembed", "noframes", "textarea")
# Photos for .jpg paths, small PNGs (diagrams, icons) for the rest: both verdicts occur on every page.
PHOTOS = sorted(path.name for path in IMAGES.glob("*.jpg"))[:12]


# --- the local upstream -----------------------------------------------------------------------------------


@dataclass
class World:
    """The one upstream every host name resolves to, with what it was asked for."""

    port: int = 0
    pages: dict[str, tuple[bytes, str]] = field(default_factory=dict)  # raw path -> (body, content type)
    hits: Counter[str] = field(default_factory=Counter)  # "host/raw/path" -> requests
    in_flight: int = 0
    most_in_flight: int = 0

    def serve(self, url: str, body: str | bytes, content_type: str = "text/html; charset=utf-8") -> str:
        data = body.encode() if isinstance(body, str) else body
        self.pages[yarl.URL(url).raw_path] = (data, content_type)
        return url

    def image_hits(self) -> int:
        return sum(n for key, n in self.hits.items() if yarl.URL("http://" + key).raw_path not in self.pages)


def served_page(text: str) -> str:
    """A page as the local upstream serves it: every https: URL made http:."""
    return text.replace("https://", "http://")


def image_for(path: str) -> tuple[bytes, str]:
    """A real dataset image, the same one for the same path every time."""
    index = int(hashlib.sha256(path.encode()).hexdigest()[:8], 16)
    if path.lower().endswith((".jpg", ".jpeg")):
        return (IMAGES / PHOTOS[index % len(PHOTOS)]).read_bytes(), "image/jpeg"
    return (IMAGES / SMALL_PNGS[index % len(SMALL_PNGS)]).read_bytes(), "image/png"


def world_app(world: World) -> web.Application:
    async def any_path(request: web.Request) -> web.StreamResponse:
        raw_path = request.rel_url.raw_path
        world.hits[f"{request.host.split(':')[0]}{raw_path}"] += 1
        if raw_path in world.pages:
            body, content_type = world.pages[raw_path]
            return web.Response(body=body, headers={"Content-Type": content_type})
        if raw_path.startswith("/missing/"):
            raise web.HTTPNotFound()
        if raw_path.startswith("/broken/"):
            return web.Response(status=500, text="upstream bug")
        if raw_path.startswith("/text/"):
            return web.Response(text="<p>not an image</p>", content_type="text/html")
        if raw_path.startswith("/corrupt/"):
            return web.Response(body=b"\x89PNG\r\n\x1a\n" + bytes(64), content_type="image/png")
        if raw_path.startswith("/stall/"):
            await asyncio.sleep(30)
        body, content_type = image_for(raw_path)
        if raw_path.startswith("/slow/"):
            world.in_flight += 1
            world.most_in_flight = max(world.most_in_flight, world.in_flight)
            try:
                await asyncio.sleep(float(request.query.get("delay", "0.5")))
            finally:
                world.in_flight -= 1
        return web.Response(body=body, content_type=content_type)

    app = web.Application()
    app.router.add_get("/{tail:.*}", any_path)
    return app


class WorldResolver(AbstractResolver):
    """Every name is the local upstream: its address and its port, whatever port the URL said."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.asked: Counter[str] = Counter()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        self.asked[host] += 1
        return [
            ResolveResult(
                hostname=host, host="127.0.0.1", port=self.world.port, family=socket.AF_INET, proto=0, flags=0
            )
        ]

    async def close(self) -> None:
        pass


@pytest_asyncio.fixture
async def world() -> AsyncIterator[World]:
    world = World()
    server = TestServer(world_app(world), host="127.0.0.1")
    await server.start_server()
    assert server.port is not None
    world.port = server.port
    try:
        yield world
    finally:
        await server.close()


MakeClient = Callable[..., Awaitable[Client]]


@pytest.fixture
def make_client(aiohttp_client: Any, world: World) -> MakeClient:
    async def make(classifier: Any = None, **overrides: Any) -> Client:
        # The production address policy, except that the upstream's loopback network is allowed.
        values: dict[str, Any] = {"allow_private_networks": False, "allowed_networks": ("127.0.0.0/8",)}
        values.update(overrides)
        app = create_app(
            settings(**values), classifier=classifier or SaturationHeuristic(), resolver=WorldResolver(world)
        )
        return await aiohttp_client(app)

    return make


async def get_page(client: Client, url: str, **params: Any) -> tuple[int, dict[str, str], bytes]:
    response = await client.get("/api/v1/page", params={"url": url, **params})
    return response.status, dict(response.headers), await response.read()


def outcome_counts(headers: dict[str, str]) -> dict[str, int]:
    return {name: int(n) for name, n in (part.split("=") for part in headers["X-InvertOrNot-Images"].split(", "))}


# --- checks on a rewritten page ---------------------------------------------------------------------------


def parse(html: str) -> LexborHTMLParser:
    fragment = re.search(r"<(?:!doctype|html|head|body)[\t\n\f\r />]", html, re.IGNORECASE) is None
    return LexborHTMLParser(html, is_fragment=fragment, options=LexborDocumentOptions.WO_EVENTS, scripting=False)


def elements(tree: LexborHTMLParser) -> Iterator[LexborNode]:
    root = tree.root
    if root is not None:
        yield from (node for node in root.traverse() if node.is_element_node)


def visible_text(html: str) -> str:
    tree = parse(html)
    for name in INVISIBLE:
        for node in tree.css(name):
            node.decompose()
    return " ".join(tree.text(separator=" ").split())


def classes(node: LexborNode) -> list[str]:
    return (node.attributes.get("class") or "").split()


def has_markup(node: LexborNode | None) -> bool:
    """Manual invert markup on the element or an ancestor."""
    while node is not None and node.is_element_node:
        if "data-invertornot" not in node.attributes and MANUAL_CLASSES.intersection(classes(node)):
            return True
        node = node.parent
    return False


def canonical(src: str) -> str:
    return str(yarl.URL(src).with_fragment(None))


def check_page(source: str, url: str, output: str, *, pending_ok: bool = False) -> None:
    """Every image marked exactly once (or left alone for its manual markup), URLs absolute, nothing
    active left, the same text."""
    images = find_images(source, url)
    to_classify = {image.url for image in images if image.manual is None}
    manual_urls = {url for image in images if image.manual is not None for url in image.urls}
    tree = parse(output)
    marked: set[str] = set()
    for node in tree.css("img"):
        names = classes(node)
        ours = [name for name in names if name in ("invert", "invert-not")]
        verdict = node.attributes.get("data-invertornot")
        if verdict is None:  # left alone: markup (or a dark-mode <source>) decides, or nothing to classify
            src = node.attributes.get("src") or ""
            assert not src.startswith("http") or canonical(src) in manual_urls or has_markup(node), node.html
            continue
        assert len(ours) == 1, node.html
        if verdict == "pending":
            assert pending_ok and ours == ["invert-not"] and "data-invertornot-pending" in node.attributes
        else:
            assert ours == [verdict], node.html
            assert "data-invertornot-pending" not in node.attributes
        src = node.attributes.get("src") or ""
        marked.add(next(image.url for image in images if canonical(src) in image.urls))
    assert marked == to_classify
    for node in elements(tree):
        assert node.tag not in ACTIVE_ELEMENTS, node.html
        for name, value in node.attributes.items():
            assert not name.lower().startswith("on"), node.html
            if name in URL_ATTRIBUTES and value:
                refs = [c.url for c in parse_srcset(value)] if name.endswith("srcset") else [value]
                for ref in refs:
                    # Same-document fragments stay: they work in any context.
                    assert ref.startswith("#") or url_scheme(ref) in ("http", "https", "mailto", "data", "mw-data"), (
                        name,
                        ref,
                    )
                    assert url_scheme(ref) != "data" or name in ("src", "srcset"), (name, ref)
    assert visible_text(output) == visible_text(source)


# --- pages in every shape ---------------------------------------------------------------------------------


def every_page() -> Iterator[Any]:
    for name, url in sorted(FIXTURE_URLS.items()):
        yield pytest.param(FIXTURES / name, url, id=name)
    for name, url in sorted(SHARED_URLS.items()):
        present = (SHARED_PAGES / name).exists()
        yield pytest.param(
            SHARED_PAGES / name,
            url,
            id=f"shared/{name}",
            marks=pytest.mark.skipif(not present, reason="no ../shared/pages checkout"),
        )


@pytest.mark.asyncio
@pytest.mark.parametrize(("path", "url"), list(every_page()))
async def test_every_page_shape_comes_back_marked_safe_and_whole(
    make_client: MakeClient, world: World, path: Path, url: str
) -> None:
    source = served_page(path.read_text(encoding="utf-8"))
    world.serve(url, source)
    client = await make_client(page_concurrency=16)
    status, headers, body = await get_page(client, url, deadline_ms=15_000)  # a loaded CI machine is slow
    assert status == 200, body[:300]
    assert headers["Content-Type"] == "text/html; charset=utf-8"
    assert headers["Content-Security-Policy"] == PAGE_CSP
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Referrer-Policy"] == "no-referrer"
    assert headers["Cache-Control"] == "public, max-age=300"
    counts = outcome_counts(headers)
    assert counts["pending"] == 0 and counts["failed"] == 0, counts
    check_page(source, url, body.decode())
    # Every image came from the local upstream; upload.wikimedia.org was resolved to it, never contacted.
    assert world.image_hits() == counts["classified"] + counts["cached"]
    if path.parent == SHARED_PAGES:
        assert counts["classified"] > 0
        assert {key.split("/")[0] for key in world.hits} >= {"upload.wikimedia.org"}


@pytest.mark.asyncio
async def test_manual_markup_is_respected_and_reported(make_client: MakeClient, world: World) -> None:
    url = world.serve(FIXTURE_URLS["manual.html"], served_page((FIXTURES / "manual.html").read_text()))
    client = await make_client()
    response = await client.get("/api/v1/page", params={"url": url, "format": "images"})
    assert response.status == 200 and response.headers["Content-Security-Policy"] == PAGE_CSP
    report = await response.json()
    by_url = {image["url"]: image for image in report["images"]}
    assert report["complete"] is True and report["url"] == url
    assert by_url["http://example.org/img/plot.png"] == {
        "url": "http://example.org/img/plot.png",
        "count": 1,
        "invert": True,
        "source": "page-markup",
        "markup": "invert",
    }
    assert by_url["http://example.org/img/photo.jpg"]["invert"] is False
    assert by_url["http://example.org/img/scan.png"]["markup"] == "skin-invert-image"
    assert by_url["http://example.org/img/formula.png"]["markup"] == "skin-invert"  # from an ancestor
    assert by_url["http://example.org/img/swatch.png"]["markup"] == "notheme"  # the nearest ancestor wins
    assert by_url["http://example.org/img/both.png"]["invert"] is False  # don't-invert wins a tie
    manual = [image for image in report["images"] if image.get("source") == "page-markup"]
    assert len(manual) == 9
    # The one image shown once without markup is classified; nothing with markup was even fetched.
    plain = by_url["http://example.org/img/plain.png"]
    assert plain["source"] == "heuristic" and plain["count"] == 2 and len(plain["sha256"]) == 64
    assert set(world.hits) == {"example.org/manual/", "example.org/img/plain.png"}

    _, _, body = await get_page(client, url)
    tree = parse(body.decode())
    for identifier in ("m-invert", "m-invert-not", "m-ancestor", "m-notheme", "m-both", "m-plain-again"):
        node = tree.css_first(f"#{identifier}")
        assert node is not None and "data-invertornot" not in node.attributes, identifier
    photo = tree.css_first("#m-invert-not")
    assert photo is not None and classes(photo) == ["photo", "invert-not"]
    plain_node = tree.css_first("#m-plain")
    assert plain_node is not None and plain_node.attributes["data-invertornot-model"] == plain["model"]


async def renders(client: Client) -> dict[str, int]:
    """The page proxy's renders so far, from /metrics: {"rendered": n, "reused": m}."""
    text = await (await client.get("/metrics")).text()
    found = re.findall(r'^invertornot_page_renders_total\{how="(\w+)"\} (\d+)$', text, re.MULTILINE)
    return {"rendered": 0, "reused": 0, **{how: int(n) for how, n in found}}


@pytest.mark.asyncio
@pytest.mark.parametrize("kept_bytes", [0, 2**20], ids=["parse-every-time", "reuse-renderings"])
async def test_second_request_is_served_from_the_caches(make_client: MakeClient, world: World, kept_bytes: int) -> None:
    url = world.serve(FIXTURE_URLS["parsoid.html"], served_page((FIXTURES / "parsoid.html").read_text()))
    classifier = RecordingClassifier()
    client = await make_client(classifier, page_render_cache_bytes=kept_bytes)
    status, headers, first = await get_page(client, url)
    assert status == 200
    counts = outcome_counts(headers)
    assert counts["classified"] == 3 and counts["cached"] == 0 and counts["manual"] == 2, counts
    image_hits, batches = world.image_hits(), list(classifier.batches)
    assert image_hits == 3 and sum(batches) == 3

    status, headers, second = await get_page(client, url)
    assert status == 200 and second == first
    assert outcome_counts(headers) == {**counts, "classified": 0, "cached": 3}
    assert world.image_hits() == image_hits  # no new image fetch
    assert classifier.batches == batches  # no new classification
    assert world.hits["en.wikipedia.org/api/rest_v1/page/html/Lighthouse"] == 2  # the page itself is fetched again
    assert await renders(client) == ({"rendered": 1, "reused": 1} if kept_bytes else {"rendered": 2, "reused": 0})


class RenamedHeuristic(SaturationHeuristic):
    """The heuristic under another version, as after a model reload."""

    version = "heuristic-reloaded"


@pytest.mark.asyncio
async def test_a_kept_rendering_is_reused_only_for_the_same_bytes_and_verdicts(
    make_client: MakeClient, world: World
) -> None:
    source = served_page((FIXTURES / "parsoid.html").read_text())
    url = world.serve(FIXTURE_URLS["parsoid.html"], source)
    client = await make_client()
    first = (await get_page(client, url))[2]
    assert (await get_page(client, url))[2] == first and await renders(client) == {"rendered": 1, "reused": 1}

    world.serve(url, source.replace("emits light", "shines"))  # the page changed upstream
    changed = (await get_page(client, url))[2].decode()
    assert "shines" in changed and await renders(client) == {"rendered": 2, "reused": 1}

    world.serve(url, source)
    client.app[SERVICE].replace_classifier(RenamedHeuristic())  # every verdict now comes from another model
    status, headers, reloaded = await get_page(client, url)
    assert status == 200 and outcome_counts(headers)["classified"] == 3
    assert reloaded.count(b'data-invertornot-model="heuristic-reloaded"') == 4
    assert b"saturation-heuristic" not in reloaded
    assert await renders(client) == {"rendered": 3, "reused": 1}


def slow_page(world: World, n: int, *, delay: float, fast: int = 1) -> str:
    images = "".join(f'<img src="/slow/{i}.png?delay={delay}" alt="slow {i}">' for i in range(n))
    images += "".join(f'<img src="/fast/{i}.png" alt="fast {i}">' for i in range(fast))
    return world.serve("http://slow.example/page", f"<!doctype html><title>t</title><p>Slow {images} done.</p>")


@pytest.mark.asyncio
async def test_deadline_marks_pending_then_the_next_request_is_complete(make_client: MakeClient, world: World) -> None:
    url = slow_page(world, 3, delay=1.5)
    client = await make_client(total_timeout=5, read_timeout=5)
    status, headers, body = await get_page(client, url, deadline_ms=600)  # room for the fast one on a busy CI
    assert status == 200
    assert outcome_counts(headers) == {"manual": 0, "cached": 0, "classified": 1, "pending": 3, "failed": 0}
    assert headers["Cache-Control"] == "no-store"  # the complete page is moments away
    tree = parse(body.decode())
    pending = [node for node in tree.css("img") if node.attributes.get("data-invertornot") == "pending"]
    assert len(pending) == 3
    for node in pending:
        assert classes(node) == ["invert-not"] and "data-invertornot-pending" in node.attributes
        assert "data-invertornot-p" not in node.attributes
    check_page(served_page(world.pages["/page"][0].decode()), url, body.decode(), pending_ok=True)

    await client.app[PAGES].background.wait()  # the slow images finish in the background
    status, headers, body = await get_page(client, url, deadline_ms=0)
    assert outcome_counts(headers) == {"manual": 0, "cached": 4, "classified": 0, "pending": 0, "failed": 0}
    assert headers["Cache-Control"] == "public, max-age=300"
    assert "data-invertornot-pending" not in body.decode()
    assert all(world.hits[f"slow.example/slow/{i}.png"] == 1 for i in range(3))


@pytest.mark.asyncio
async def test_images_are_classified_concurrently_up_to_the_per_page_cap(make_client: MakeClient, world: World) -> None:
    url = slow_page(world, 9, delay=0.15, fast=0)
    client = await make_client(page_concurrency=3)
    status, headers, _ = await get_page(client, url)
    counts = outcome_counts(headers)
    assert status == 200 and counts["classified"] + counts["cached"] == 9  # two paths may serve one image
    assert world.most_in_flight == 3  # concurrent, and never more than the cap


@pytest.mark.asyncio
async def test_background_work_is_bounded_and_cancelled_at_shutdown(make_client: MakeClient, world: World) -> None:
    images = "".join(f'<img src="/stall/{i}.png" alt="">' for i in range(4))
    url = world.serve("http://stall.example/page", f"<p>{images}</p>")
    client = await make_client(max_background_images=2, page_concurrency=4, total_timeout=20, read_timeout=20)
    pages = client.app[PAGES]
    status, headers, _ = await get_page(client, url, deadline_ms=100)
    assert status == 200 and outcome_counts(headers)["pending"] == 4
    assert len(pages.background) == 2 and pages.background.dropped == 2
    started = time.perf_counter()
    await client.close()
    assert time.perf_counter() - started < 10  # the 30 s stalls did not hold up shutdown
    assert len(pages.background) == 0


@pytest.mark.asyncio
async def test_one_image_failing_never_fails_the_page(make_client: MakeClient, world: World) -> None:
    paths = ["/missing/a.png", "/broken/b.png", "/text/c.png", "/corrupt/d.png", "/fine/e.png"]
    images = "".join(f'<img src="{path}" alt="">' for path in paths)
    url = world.serve("http://mixed.example/page", f"<p>Mixed {images}</p>")
    client = await make_client()
    response = await client.get("/api/v1/page", params={"url": url, "format": "images"})
    assert response.status == 200
    report = {image["url"].removeprefix("http://mixed.example"): image for image in (await response.json())["images"]}
    assert report["/missing/a.png"]["error"]["code"] == "not_found"
    assert report["/broken/b.png"]["error"]["code"] == "upstream_error"
    assert report["/text/c.png"]["error"]["code"] == "unsupported_type"
    assert report["/corrupt/d.png"]["error"]["code"] == "undecodable"
    assert all(report[path]["invert"] is False for path in paths[:4])
    assert "error" not in report["/fine/e.png"] and report["/fine/e.png"]["source"] == "heuristic"

    status, headers, body = await get_page(client, url)
    assert status == 200 and outcome_counts(headers)["failed"] == 4
    tree = parse(body.decode())
    assert [node.attributes.get("data-invertornot") for node in tree.css("img")][:4] == ["invert-not"] * 4


@pytest.mark.asyncio
async def test_summary_json_gets_verdicts(make_client: MakeClient, world: World) -> None:
    summary = json.loads(served_page((FIXTURES / "summary.json").read_text()))
    world.serve(SUMMARY_URL, json.dumps(summary), "application/json; charset=utf-8")
    client = await make_client()
    status, headers, body = await get_page(client, SUMMARY_URL)
    assert status == 200
    assert headers["Content-Type"] == "application/json; charset=utf-8"
    assert headers["Content-Security-Policy"] == PAGE_CSP and headers["X-Content-Type-Options"] == "nosniff"
    result = json.loads(body)
    for key in ("thumbnail", "originalimage"):
        image = result[key]
        assert isinstance(image["invert"], bool) and 0 <= image["p_invert"] <= 1, image
        assert image["model"] == SaturationHeuristic.version
        assert image["invert"] is False  # both are .jpg paths, served as dataset photos
        assert {k: v for k, v in image.items() if k not in ("invert", "p_invert", "model")} == summary[key]
    assert {k: v for k, v in result.items() if k not in ("thumbnail", "originalimage")} == {
        k: v for k, v in summary.items() if k not in ("thumbnail", "originalimage")
    }
    assert world.image_hits() == 2


@pytest.mark.asyncio
@pytest.mark.skipif(not (SHARED_PAGES / SHARED_SUMMARY).exists(), reason="no ../shared/pages checkout")
async def test_real_summary_json_gets_verdicts(make_client: MakeClient, world: World) -> None:
    source = served_page((SHARED_PAGES / SHARED_SUMMARY).read_text())
    world.serve(SHARED_SUMMARY_URL, source, "application/json")
    client = await make_client()
    status, _, body = await get_page(client, SHARED_SUMMARY_URL)
    assert status == 200
    result = json.loads(body)
    assert isinstance(result["thumbnail"]["invert"], bool) and isinstance(result["originalimage"]["invert"], bool)
    assert result["extract"] == json.loads(source)["extract"]
    assert {key.split("/")[0] for key in world.hits} == {"en.wikipedia.org", "upload.wikimedia.org"}


# --- failures of the page itself --------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_page_failures_have_precise_statuses(make_client: MakeClient, world: World) -> None:
    client = await make_client(max_page_bytes=2000, total_timeout=0.5, read_timeout=0.5)
    world.serve("http://site.example/image", (IMAGES / PHOTO).read_bytes(), "image/jpeg")
    world.serve("http://site.example/text", "plain words", "text/plain")
    world.serve("http://site.example/big", "<p>" + "x" * 3000 + "</p>")
    world.serve("http://site.example/list", "[1, 2]", "application/json")
    world.serve("http://site.example/bad-json", "{nope", "application/json")
    cases = [
        ("http://site.example/image", 415, "unsupported_type"),
        ("http://site.example/text", 415, "unsupported_type"),
        ("http://site.example/list", 415, "unsupported_json"),
        ("http://site.example/big", 413, "too_large"),
        ("http://site.example/missing/page", 404, "not_found"),
        ("http://site.example/broken/page", 502, "upstream_error"),
        ("http://site.example/bad-json", 502, "malformed_upstream_json"),
        ("http://site.example/stall/page", 504, "upstream_timeout"),
        ("http://10.1.2.3/page", 403, "address_refused"),
        ("http://localhost/page", 403, "address_refused"),
        ("ftp://site.example/page", 400, "bad_request"),
    ]
    for url, status, code in cases:
        response = await client.get("/api/v1/page", params={"url": url})
        assert response.status == status, (url, await response.text())
        assert (await response.json())["error"]["code"] == code, url
    for params, code in [
        ({}, "missing_url"),
        ({"url": "http://site.example/big", "deadline_ms": "soon"}, "invalid_deadline"),
        ({"url": "http://site.example/big", "deadline_ms": "-1"}, "invalid_deadline"),
        ({"url": "http://site.example/big", "deadline_ms": "60001"}, "invalid_deadline"),
        ({"url": "http://site.example/big", "format": "pdf"}, "invalid_format"),
    ]:
        response = await client.get("/api/v1/page", params=params)
        assert response.status == 400 and (await response.json())["error"]["code"] == code, params


@pytest.mark.asyncio
async def test_class_names_and_image_cap_are_settings(make_client: MakeClient, world: World) -> None:
    images = "".join(f'<img src="/fine/{i}.png" alt="">' for i in range(5))
    url = world.serve("http://cap.example/page", f"<p>{images}</p>")
    client = await make_client(max_images_per_page=3, invert_class="dark-invert", invert_not_class="dark-keep")
    status, headers, body = await get_page(client, url)
    assert status == 200 and outcome_counts(headers)["classified"] == 3
    tree = parse(body.decode())
    marks = [node.attributes.get("data-invertornot") for node in tree.css("img")]
    assert marks[3:] == [None, None] and None not in marks[:3]
    for node in tree.css("img")[:3]:
        assert classes(node) in (["dark-invert"], ["dark-keep"])
    assert world.image_hits() == 3


def test_page_settings_are_validated() -> None:
    with pytest.raises(ValueError, match="invert_class"):
        Settings(invert_class="not a class")
    with pytest.raises(ValueError, match="must differ"):
        Settings(invert_class="x", invert_not_class="x")
    with pytest.raises(ValueError, match="page_concurrency"):
        Settings(page_concurrency=0)
    assert Settings(max_page_bytes=1234).fetch_policy().max_page_bytes == 1234


def test_page_text_is_decoded_by_its_declared_charset() -> None:
    text = "<p>Café</p>"
    assert decode_html(text.encode("latin-1"), "iso-8859-1") == text
    assert decode_html(b'<meta charset="windows-1252"><p>Caf\xe9</p>', None).endswith(text)
    assert decode_html(b"\xef\xbb\xbf" + text.encode(), "iso-8859-1") == text  # a BOM wins
    assert decode_html(b"<p>Caf\xff</p>", "no-such-charset") == "<p>Caf\ufffd</p>"


def test_kept_renderings_know_their_urls_through_evictions() -> None:
    """A page with no kept rendering is parsed while its bytes are hashed: `holds` must be right."""
    pages = RenderedPages(max_bytes=3000)
    page = RenderedPage(b"x" * 1000, (), ())
    pages.put(("u1", "a"), page)
    pages.put(("u1", "b"), page)
    pages.put(("u2", "c"), page)
    pages.put(("u1", "b"), page)  # stored again: the first in line goes, not u1
    assert pages.holds("u1") and pages.holds("u2") and not pages.holds("u3")
    pages.put(("u3", "d"), page)  # the least recently used goes: u1's "a", then...
    pages.put(("u4", "e"), page)  # ...u2's "c"
    assert pages.holds("u1") and not pages.holds("u2") and pages.holds("u4")
    assert not RenderedPages(max_bytes=0).holds("u1")


def test_utf8_pages_are_parsed_from_their_bytes() -> None:
    """UTF-8 pages (nearly all) go to the parser as they came, without decoding and encoding again; the
    parse is the same as the text's, also for bytes that are not UTF-8 (`Page` checks them)."""
    text = "<p>Café <img src='/a.png'></p>"
    assert page_source(text.encode(), "utf-8") == text.encode()
    assert page_source(text.encode(), None) == text.encode()  # UTF-8 unless something says otherwise
    assert page_source(b"\xef\xbb\xbf" + text.encode(), None) == text.encode()  # BOM dropped
    assert page_source(text.encode("latin-1"), "iso-8859-1") == text
    assert page_source(text.encode("utf-16-le"), "utf-16-le") == text
    url = "https://example.org/dir/page"
    for body in (text.encode(), b"<p>Caf\xff \xf0\x9f\x98<a href='x\xc3\x00y'>\xed\xa0\x80</a></p>\x00\xc3\x00\xa9"):
        source = page_source(body, "utf-8")
        assert isinstance(source, bytes)
        assert Page(source, url).rewrite({}) == Page(decode_html(body, "utf-8"), url).rewrite({})
