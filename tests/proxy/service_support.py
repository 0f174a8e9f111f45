"""Shared parts of the service tests: a real upstream image server on 127.0.0.1, settings, small classifiers.

The upstream serves real dataset images and counts every request per path, so tests can prove how many
fetches the service made. It also misbehaves on request: slow, endless, oversize, wrong type, redirects.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer
from PIL import Image

from classifier.decode import ImageError
from classifier.heuristic import SaturationHeuristic
from classifier.verdict import Verdict
from proxy.settings import Settings

IMAGES = Path(__file__).resolve().parents[2] / "classifier" / "dataset" / "images"
# Clear-cut dataset images (labels: photo 0, engraved music score 1) that any sane model gets right.
PHOTO = "bb6dab709e95fb73.jpg"
DIAGRAM = "cec0396ca436c1bf.png"
SMALL_PNGS = [path.name for path in sorted(IMAGES.glob("*.png"), key=lambda p: (p.stat().st_size, p.name))[:40]]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def image_bytes(name: str) -> bytes:
    return (IMAGES / name).read_bytes()


def variant(name: str, n: int) -> bytes:
    """A different file (new SHA-256) that decodes to the same picture: decoders ignore trailing bytes."""
    return image_bytes(name) + f"variant-{n}".encode()


def pixel_bomb() -> bytes:
    """A small PNG declaring 60 million pixels (over the default 50 MP cap)."""
    buffer = io.BytesIO()
    Image.new("1", (60_000, 1_000)).save(buffer, format="PNG")
    return buffer.getvalue()


def tiff_bytes() -> bytes:
    """A real image in a format the classifier does not take (415 unsupported_format)."""
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), "white").save(buffer, format="TIFF")
    return buffer.getvalue()


def settings(**overrides: Any) -> Settings:
    """Test settings: the upstream lives on 127.0.0.1, so private networks are allowed; short timeouts."""
    values: dict[str, Any] = {
        "allow_private_networks": True,
        "rate_limit_per_minute": 0,
        "connect_timeout": 1.0,
        "read_timeout": 1.0,
        "total_timeout": 1.5,
        "batch_wait_ms": 2.0,
        # In memory: tests must not leave ./invertornot.db and ./invertornot-images/ behind.
        "database_url": "sqlite://",
    }
    values.update(overrides)
    return Settings(**values)


@dataclass
class Upstream:
    base: str
    hits: Counter[str] = field(default_factory=Counter)

    def url(self, path: str) -> str:
        return f"{self.base}{path}"


def _content_type(name: str) -> str:
    return "image/jpeg" if name.endswith(".jpg") else "image/png"


def upstream_app(hits: Counter[str]) -> web.Application:
    async def count(request: web.Request) -> None:
        hits[request.path] += 1

    async def image(request: web.Request) -> web.Response:
        await count(request)
        name = request.match_info["name"]
        if "/" in name or not (IMAGES / name).is_file():
            raise web.HTTPNotFound()
        delay = float(request.query.get("delay", "0"))
        if delay:
            await asyncio.sleep(delay)
        return web.Response(body=image_bytes(name), content_type=_content_type(name))

    async def variant_image(request: web.Request) -> web.Response:
        await count(request)
        n = int(request.match_info["n"])
        name = SMALL_PNGS[n % len(SMALL_PNGS)]
        return web.Response(body=variant(name, n), content_type="image/png")

    async def same(request: web.Request) -> web.Response:
        # Many URLs, one image.
        await count(request)
        return web.Response(body=image_bytes(DIAGRAM), content_type="image/png")

    async def stall(request: web.Request) -> web.Response:
        await count(request)
        await asyncio.sleep(30)
        return web.Response(body=b"")

    async def stream(request: web.Request) -> web.StreamResponse:
        # Chunked: no Content-Length for the service to trust; it must count while reading.
        await count(request)
        response = web.StreamResponse(headers={"Content-Type": "image/png"})
        await response.prepare(request)
        await response.write(image_bytes(DIAGRAM)[:64])
        with contextlib.suppress(ConnectionError):
            for _ in range(int(request.query["kib"])):
                await response.write(bytes(1024))
            await response.write_eof()
        return response

    async def redirect(request: web.Request) -> web.Response:
        await count(request)
        return web.Response(status=302, headers={"Location": request.query["to"]})

    async def page(request: web.Request) -> web.Response:
        await count(request)
        return web.Response(text="<!doctype html><p>not an image</p>", content_type="text/html")

    async def corrupt(request: web.Request) -> web.Response:
        await count(request)
        return web.Response(body=PNG_SIGNATURE + b"\x00" * 64, content_type="image/png")

    async def bomb(request: web.Request) -> web.Response:
        await count(request)
        return web.Response(body=pixel_bomb(), content_type="image/png")

    async def broken(request: web.Request) -> web.Response:
        await count(request)
        return web.Response(status=500, text="upstream bug")

    app = web.Application()
    app.router.add_get("/img/{name}", image)
    app.router.add_get("/variant/{n}.png", variant_image)
    app.router.add_get("/same/{anything}", same)
    app.router.add_get("/stall.png", stall)
    app.router.add_get("/stream.png", stream)
    app.router.add_get("/redirect", redirect)
    app.router.add_get("/page.html", page)
    app.router.add_get("/corrupt.png", corrupt)
    app.router.add_get("/bomb.png", bomb)
    app.router.add_get("/broken.png", broken)
    return app


@contextlib.asynccontextmanager
async def serving_on_loopback(app: web.Application) -> AsyncIterator[str]:
    """Runs `app` on a free port of 127.0.0.1 and yields its base URL."""
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield f"http://127.0.0.1:{server.port}"
    finally:
        await server.close()


@contextlib.asynccontextmanager
async def running_upstream() -> AsyncIterator[Upstream]:
    hits: Counter[str] = Counter()
    async with serving_on_loopback(upstream_app(hits)) as base:
        yield Upstream(base, hits)


class RecordingClassifier:
    """The saturation heuristic, recording each batch it is given (a real classifier, observed)."""

    def __init__(self, *, delay: float = 0.0) -> None:
        self.inner = SaturationHeuristic()
        self.version = self.inner.version
        self.delay = delay
        self.batches: list[int] = []
        self.threads: set[str] = set()
        self._lock = threading.Lock()

    def classify_bytes(self, blobs: Sequence[bytes]) -> list[Verdict | ImageError]:
        with self._lock:
            self.batches.append(len(blobs))
            self.threads.add(threading.current_thread().name)
        if self.delay:
            time.sleep(self.delay)  # stands for CPU-bound inference: blocks whatever thread runs it
        return self.inner.classify_bytes(blobs)


class ExplodingClassifier:
    """A classifier with a bug: every call raises."""

    version = "exploding-1"

    def classify_bytes(self, blobs: Sequence[bytes]) -> list[Verdict | ImageError]:
        raise RuntimeError("secret internal detail")
