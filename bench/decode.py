"""How long decode_image takes, and what JPEG draft mode and the resize filter buy.

Run from the repository root: `.venv/bin/python bench/decode.py [--repeat N]`.
Prints the median milliseconds per image for:
  * a 2.5 MP JPEG decoded to 384 px with draft mode (decode_image) and without it (the same
    pipeline with a full-size decode);
  * a 6 MP transparent PNG diagram through decode_image;
  * the downscale step on that PNG with other Pillow filters, and how far each lands from LANCZOS.
"""

from __future__ import annotations

import argparse
import functools
import io
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # a script, not a package: make `classifier` importable

from classifier.decode import DEFAULT_MAX_SIDE, decode_image  # noqa: E402

PHOTO = ROOT / "classifier" / "dataset" / "images" / "cc631ddd1d7ad76d.jpg"


def median_ms(work: Callable[[], object], repeat: int) -> float:
    work()  # warm caches and lazy imports
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        work()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def photo_jpeg(size: tuple[int, int]) -> bytes:
    """A dataset photo upscaled, with noise and gradients so it has photo-like entropy."""
    rng = np.random.default_rng(0)
    base = np.asarray(Image.open(PHOTO).convert("RGB").resize(size, Image.Resampling.BICUBIC), np.float32)
    ramp = np.linspace(-30, 30, size[0], dtype=np.float32)[None, :, None]
    noisy = base + ramp + rng.normal(0, 4, base.shape).astype(np.float32)
    buffer = io.BytesIO()
    Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=85)
    return buffer.getvalue()


def diagram_png(size: tuple[int, int]) -> bytes:
    """Black lines and red labels on transparency: the kind of image we are asked to invert."""
    image = Image.new("RGBA", size, (255, 255, 255, 0))
    draw = ImageDraw.Draw(image)
    for x in range(0, size[0], 37):
        draw.line([(x, 0), (size[0] - x, size[1])], fill=(0, 0, 0, 255), width=3)
    for y in range(0, size[1], 53):
        draw.text((y % size[0], y), f"label {y}", fill=(200, 30, 30, 255))
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def without_draft(data: bytes) -> Image.Image:
    """decode_image's JPEG path minus draft(): full-size IDCT, then the same resize."""
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        scale = DEFAULT_MAX_SIDE / max(image.size)
        target = (round(image.width * scale), round(image.height * scale))
        small = image.convert("RGB").resize(target, Image.Resampling.BILINEAR, reducing_gap=2.0)
    return small.convert("RGBA")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=15, help="timed runs per case (median reported)")
    args = parser.parse_args()

    jpeg = photo_jpeg((1936, 1296))  # 2.5 MP
    drafted = median_ms(lambda: decode_image(jpeg), args.repeat)
    full = median_ms(lambda: without_draft(jpeg), args.repeat)
    print(f"JPEG 1936x1296 ({len(jpeg) // 1024} KiB) -> {DEFAULT_MAX_SIDE} px")
    print(f"  with draft    {drafted:7.1f} ms/image")
    print(f"  without draft {full:7.1f} ms/image   (draft is {full / drafted:.1f}x faster)")

    png = diagram_png((3000, 2000))
    print(f"PNG 3000x2000 RGBA diagram ({len(png) // 1024} KiB) -> {DEFAULT_MAX_SIDE} px")
    print(f"  decode_image  {median_ms(lambda: decode_image(png), args.repeat):7.1f} ms/image")
    with Image.open(io.BytesIO(png)) as opened:
        premultiplied = opened.convert("RGBa")
    target = (DEFAULT_MAX_SIDE, DEFAULT_MAX_SIDE * 2 // 3)
    reference = np.asarray(premultiplied.resize(target, Image.Resampling.LANCZOS), np.int16)
    print("  downscale step alone (premultiplied), by filter; mean abs. difference from LANCZOS:")
    filters = [
        ("BILINEAR, reducing_gap=2 (used)", Image.Resampling.BILINEAR, 2.0),
        ("BILINEAR", Image.Resampling.BILINEAR, None),
        ("BICUBIC, reducing_gap=2", Image.Resampling.BICUBIC, 2.0),
        ("LANCZOS, reducing_gap=2", Image.Resampling.LANCZOS, 2.0),
        ("LANCZOS", Image.Resampling.LANCZOS, None),
    ]
    for name, resample, gap in filters:
        resize = functools.partial(premultiplied.resize, target, resample, reducing_gap=gap)
        ms = median_ms(resize, args.repeat)
        diff = np.abs(np.asarray(resize(), np.int16) - reference)
        print(f"    {name:32s} {ms:7.1f} ms   {diff.mean():.2f} / 255")


if __name__ == "__main__":
    main()
