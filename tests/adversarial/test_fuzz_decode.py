"""Fuzzing the decoder with mutated real image bytes: only `ImageError`, never a hang.

The rewriter's fuzzing with mutated real pages lives in tests/proxy/test_rewrite.py; this covers the
other parser that reads bytes straight off the web.
"""

from __future__ import annotations

import io
import time
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from classifier.decode import ImageError, decode_image
from tests.proxy.service_support import IMAGES

SEEDS_DIR = IMAGES
# The documented `ImageError` codes (classifier/decode.py).
CODES = {"empty", "unsupported_format", "too_many_pixels", "truncated", "undecodable"}


def _seeds() -> dict[str, bytes]:
    """Small real files of every format the decoder takes: dataset PNG/JPEG, and GIF/WebP made from them."""
    pngs = sorted(SEEDS_DIR.glob("*.png"), key=lambda p: p.stat().st_size)[:2]
    jpegs = sorted(SEEDS_DIR.glob("*.jpg"), key=lambda p: p.stat().st_size)[:2]
    seeds = {path.name: path.read_bytes() for path in [*pngs, *jpegs]}
    with Image.open(pngs[0]) as picture:
        small = picture.convert("RGB").resize((48, 48))
    for fmt in ("GIF", "WEBP", "BMP"):
        buffer = io.BytesIO()
        small.save(buffer, format=fmt)
        seeds[f"seed.{fmt.lower()}"] = buffer.getvalue()
    return seeds


SEEDS = _seeds()
EDITS = st.lists(
    st.tuples(
        st.sampled_from(["flip", "set", "delete", "insert", "truncate"]),
        st.floats(0, 1, allow_nan=False),
        st.integers(0, 255),
        st.integers(1, 64),
    ),
    min_size=1,
    max_size=8,
)


def mutate(data: bytes, edits: list[tuple[str, float, int, int]]) -> bytes:
    buffer = bytearray(data)
    for action, where, value, length in edits:
        if not buffer:
            break
        # Headers hold the sizes and chunk lengths: bias edits toward the first 256 bytes half the time.
        at = int(where * (min(len(buffer), 256) if value % 2 else len(buffer))) % len(buffer)
        if action == "flip":
            buffer[at] ^= 1 << (value % 8)
        elif action == "set":
            buffer[at : at + 1] = bytes([value])
        elif action == "delete":
            del buffer[at : at + length]
        elif action == "insert":
            buffer[at:at] = bytes([value]) * length
        else:
            del buffer[at:]
    return bytes(buffer)


@settings(max_examples=60, deadline=2000, database=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(sorted(SEEDS)), EDITS)
def test_mutated_real_images_decode_or_raise_image_error(name: str, edits: list[tuple[str, float, int, int]]) -> None:
    data = mutate(SEEDS[name], edits)
    started = time.perf_counter()
    try:
        image = decode_image(data)
    except ImageError as error:
        assert error.code in CODES, error.code
    else:
        assert image.mode in ("RGB", "RGBA") and max(image.size) <= 384 and min(image.size) >= 1
    assert time.perf_counter() - started < 2


@settings(max_examples=40, deadline=1000, database=None, derandomize=True)
@given(st.sampled_from(sorted(SEEDS)), st.binary(max_size=512))
def test_real_headers_followed_by_random_bytes(name: str, tail: bytes) -> None:
    data = SEEDS[name][:64] + tail
    try:
        image = decode_image(data)
    except ImageError as error:
        assert error.code in CODES, error.code
    else:
        assert image.mode in ("RGB", "RGBA")


def test_seeds_decode_unmutated() -> None:
    # The fuzzing starts from images that work: a mutation, not a broken seed, is what fails.
    assert {Path(name).suffix for name in SEEDS} >= {".png", ".jpg", ".gif", ".webp", ".bmp"}
    for data in SEEDS.values():
        assert decode_image(data).mode in ("RGB", "RGBA")
