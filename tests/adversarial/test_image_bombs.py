"""Image bombs end to end: refused from their headers, before the process's memory grows.

Peak RSS is measured in-process: the kernel's high-water mark (VmHWM) is reset through
/proc/self/clear_refs before each bomb, so an earlier test's peak cannot hide this one's.
"""

from __future__ import annotations

import gzip
import io
import struct
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestClient
from PIL import Image

from classifier.heuristic import SaturationHeuristic
from proxy.app import create_app
from tests.proxy.service_support import serving_on_loopback, settings

Client = TestClient[web.Request, web.Application]
MAX_GROWTH = 100 * 1024 * 1024


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"{field} not in /proc/self/status")


def reset_peak() -> int:
    """Reset the peak-RSS mark to the current RSS; returns that RSS in bytes."""
    Path("/proc/self/clear_refs").write_text("5")
    return _status_kib("VmRSS") * 1024


def peak() -> int:
    return _status_kib("VmHWM") * 1024


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_declaring(width: int, height: int) -> bytes:
    """A tiny, valid-looking PNG whose header declares width x height 8-bit grey pixels (data: a few rows)."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    rows = zlib.compress(b"\x00" * (width + 1) * 4)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", rows) + _png_chunk(b"IEND", b"")


def jpeg_declaring(width: int, height: int) -> bytes:
    """A real 16x16 JPEG with its frame header rewritten to declare width x height."""
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), "red").save(buffer, format="JPEG")
    data = bytearray(buffer.getvalue())
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def gif_with_frames(frames: int) -> bytes:
    images = [Image.new("P", (64, 64), i % 256) for i in range(frames)]
    buffer = io.BytesIO()
    images[0].save(buffer, format="GIF", save_all=True, append_images=images[1:], duration=10, optimize=False)
    return buffer.getvalue()


PNG_BOMB = png_declaring(30_000, 30_000)
JPEG_BOMB = jpeg_declaring(60_000, 60_000)
GIF_FRAMES = gif_with_frames(3000)


def gzip_bomb(mib: int) -> bytes:
    """`mib` MiB of zeros behind a PNG signature, gzip'd piecewise (the test itself never holds them)."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)  # wbits 31: a gzip wrapper
    chunk = bytes(1024 * 1024)
    parts = [packer.compress(b"\x89PNG\r\n\x1a\n")]
    parts += [packer.compress(chunk) for _ in range(mib)]
    return b"".join(parts) + packer.flush()


# 200 MiB of zeros compress to about 200 kB: a gzip bomb for the fetcher's decompressed-size cap.
GZIP_BOMB = gzip_bomb(200)


def bomb_upstream() -> web.Application:
    bodies = {"png": PNG_BOMB, "jpg": JPEG_BOMB, "gif": GIF_FRAMES}
    types = {"png": "image/png", "jpg": "image/jpeg", "gif": "image/gif"}

    async def bomb(request: web.Request) -> web.Response:
        kind = request.match_info["kind"]
        return web.Response(body=bodies[kind], content_type=types[kind])

    async def gzip_bomb(request: web.Request) -> web.Response:
        return web.Response(body=GZIP_BOMB, headers={"Content-Type": "image/png", "Content-Encoding": "gzip"})

    app = web.Application()
    app.router.add_get("/bomb.{kind}", bomb)
    app.router.add_get("/gzip.png", gzip_bomb)
    return app


@pytest_asyncio.fixture
async def upstream() -> AsyncIterator[str]:
    async with serving_on_loopback(bomb_upstream()) as base:
        yield base


@pytest_asyncio.fixture
async def client(aiohttp_client: Callable[..., Awaitable[Client]]) -> Client:
    app = create_app(
        settings(database_url="sqlite://", allowed_networks=("127.0.0.1/32",), allow_private_networks=False),
        classifier=SaturationHeuristic(),
    )
    return await aiohttp_client(app)


def test_the_bombs_are_what_they_claim() -> None:
    # Read the declared sizes from the headers: Pillow itself refuses to open images this big.
    assert struct.unpack(">II", PNG_BOMB[16:24]) == (30_000, 30_000)
    sof = JPEG_BOMB.index(b"\xff\xc0")
    assert struct.unpack(">HH", JPEG_BOMB[sof + 5 : sof + 9]) == (60_000, 60_000)
    assert len(gzip.decompress(GZIP_BOMB)) == 200 * 1024 * 1024 + 8
    with Image.open(io.BytesIO(GIF_FRAMES)) as gif:
        assert getattr(gif, "n_frames", 1) == 3000
    assert len(PNG_BOMB) < 1000 and len(JPEG_BOMB) < 1000 and len(GZIP_BOMB) < 1_000_000


@pytest.mark.parametrize(("name", "status", "code"), [("png", 413, "too_many_pixels"), ("jpg", 413, "too_many_pixels")])
@pytest.mark.asyncio
async def test_pixel_bombs_are_refused_without_memory_growth(
    client: Client, upstream: str, name: str, status: int, code: str
) -> None:
    body = {"png": PNG_BOMB, "jpg": JPEG_BOMB}[name]
    before = reset_peak()
    uploaded = await client.post("/api/v1/classify/image", data=body, headers={"Content-Type": f"image/{name}"})
    fetched = await client.get("/api/v1/classify", params={"url": f"{upstream}/bomb.{name}"})
    grown = peak() - before
    for response in (uploaded, fetched):
        answer = await response.json()
        assert (response.status, answer["error"]["code"]) == (status, code), answer
    assert grown < MAX_GROWTH, f"peak RSS grew {grown / 2**20:.0f} MiB"
    assert (await client.get("/healthz")).status == 200


@pytest.mark.asyncio
async def test_gif_with_thousands_of_frames_is_judged_on_its_first(client: Client, upstream: str) -> None:
    before = reset_peak()
    uploaded = await client.post("/api/v1/classify/image", data=GIF_FRAMES, headers={"Content-Type": "image/gif"})
    fetched = await client.get("/api/v1/classify", params={"url": f"{upstream}/bomb.gif"})
    grown = peak() - before
    for response in (uploaded, fetched):
        assert response.status == 200, await response.text()
        assert "invert" in await response.json()
    assert grown < MAX_GROWTH, f"peak RSS grew {grown / 2**20:.0f} MiB"


@pytest.mark.asyncio
async def test_gzip_content_encoding_bomb_is_capped(client: Client, upstream: str) -> None:
    before = reset_peak()
    response = await client.get("/api/v1/classify", params={"url": f"{upstream}/gzip.png"})
    grown = peak() - before
    answer = await response.json()
    assert (response.status, answer["error"]["code"]) == (413, "too_large"), answer
    assert grown < MAX_GROWTH, f"peak RSS grew {grown / 2**20:.0f} MiB"
    assert (await client.get("/healthz")).status == 200


def test_peak_measurement_can_see_growth() -> None:
    # The instrument itself: a 200 MiB allocation must show, or the checks above prove nothing.
    before = reset_peak()
    block = bytearray(200 * 1024 * 1024)
    block[::4096] = b"\x01" * len(block[::4096])
    assert peak() - before > MAX_GROWTH
    del block
