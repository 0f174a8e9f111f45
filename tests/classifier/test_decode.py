"""decode_image / sniff_format on real encoded files: made here with Pillow or by hand, plus a few
from the dataset. pytest runs with warnings as errors, so any Pillow warning that escapes fails."""

from __future__ import annotations

import io
import random
import struct
import time
import warnings
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import GifImagePlugin, Image, ImageFile

from classifier.decode import (
    ALLOWED_FORMATS,
    DEFAULT_MAX_PIXELS,
    DEFAULT_MAX_SIDE,
    ImageError,
    _load,
    decode_image,
    sniff_format,
)

DATASET_IMAGES = Path(__file__).resolve().parents[2] / "classifier" / "dataset" / "images"
# From labels.csv: an RGBA icon (adwaita-icon-theme), a photo and an illustration (JPEG).
DATASET_FILES = ["706545316712919b.png", "cc631ddd1d7ad76d.jpg", "6bef31133e951329.jpg"]

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def handmade_png(width: int, height: int, bit_depth: int, colour_type: int, idat: bytes, *extra: bytes) -> bytes:
    """A PNG written byte by byte, for what Pillow won't save (16-bit RGBA, lying headers)."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + b"".join(extra)
        + png_chunk(b"IDAT", idat)
        + png_chunk(b"IEND", b"")
    )


def rows_to_idat(array: np.ndarray) -> bytes:
    """Big-endian samples, each row prefixed with filter type 0."""
    height = array.shape[0]
    raw = array.astype(">u2" if array.dtype == np.uint16 else np.uint8).reshape(height, -1).tobytes()
    row_bytes = len(raw) // height
    return zlib.compress(b"".join(b"\0" + raw[y * row_bytes : (y + 1) * row_bytes] for y in range(height)))


def noise_photo(width: int, height: int, seed: int = 0) -> Image.Image:
    """Gradients plus noise: JPEG-encodes like a photo (no large flat areas)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([xx / width * 255, yy / height * 255, (xx + yy) / (width + height) * 255], axis=-1)
    noisy = base + rng.normal(0, 25, base.shape)
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8), "RGB")


def assert_close(actual: tuple[int, ...], expected: tuple[int, ...], tolerance: int) -> None:
    assert all(abs(a - e) <= tolerance for a, e in zip(actual, expected, strict=True)), (actual, expected)


def pixel(image: Image.Image, xy: tuple[int, int]) -> tuple[int, ...]:
    """The RGBA value at `xy` (an opaque, mode-"RGB" result reads as alpha 255)."""
    value = image.convert("RGBA").getpixel(xy)
    assert isinstance(value, tuple)
    return value


def error_code(data: bytes, **kwargs: object) -> str:
    with pytest.raises(ImageError) as caught:
        decode_image(data, **kwargs)  # type: ignore[arg-type]
    return caught.value.code


@pytest.fixture(scope="module")
def big_jpeg() -> bytes:
    """2400 x 1600 (3.8 MP): a dataset photo upscaled, with noise so it isn't trivially smooth."""
    photo = Image.open(DATASET_IMAGES / "cc631ddd1d7ad76d.jpg").convert("RGB").resize((2400, 1600))
    blended = Image.blend(photo, noise_photo(2400, 1600), 0.3)
    return encode(blended, "JPEG", quality=90)


# --------------------------------------------------------------------------------------------
# sniff_format


SVG_SAMPLES = [
    b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>',
    b'\xef\xbb\xbf  <?xml version="1.0" encoding="UTF-8"?>\n<!-- Created with Inkscape -->\n'
    b'<!DOCTYPE svg PUBLIC "-//W3C//DTD SVG 1.1//EN" "http://www.w3.org/Graphics/SVG/1.1/DTD/svg11.dtd">\n'
    b'<svg version="1.1">',
    b'<!DOCTYPE svg [ <!ENTITY ns "http://www.w3.org/2000/svg"> ]>\n<svg xmlns="&ns;">',
]


@pytest.mark.parametrize(
    ("fmt", "params"),
    [("PNG", {}), ("JPEG", {}), ("GIF", {}), ("WEBP", {}), ("BMP", {}), ("TIFF", {}), ("ICO", {})],
)
def test_sniff_format_names_what_pillow_wrote(fmt: str, params: dict[str, object]) -> None:
    data = encode(Image.new("RGB", (16, 16), RED), fmt, **params)
    assert sniff_format(data) == fmt
    if fmt in ALLOWED_FORMATS:
        # decode_image relies on the same names
        assert decode_image(data).size == (16, 16)


@pytest.mark.parametrize("svg", SVG_SAMPLES)
def test_sniff_format_recognises_svg(svg: bytes) -> None:
    assert sniff_format(svg) == "SVG"


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x89PN",
        random.Random(1).randbytes(2000),
        b"<!DOCTYPE html><html><body><svg></svg></body></html>",
        b"<svgfoo/>",
        b'{"error": "not found"}',
        b"\x00" * 64,
    ],
)
def test_sniff_format_rejects_non_images(data: bytes) -> None:
    assert sniff_format(data) is None


def test_sniff_format_knows_avif_and_never_raises() -> None:
    assert sniff_format(b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00") == "AVIF"
    assert sniff_format(b"\x00\x00\x00\x18ftypheic") == "HEIF"
    assert sniff_format(None) is None  # type: ignore[arg-type]
    assert sniff_format(bytearray(b"GIF89a\x01\x00")) == "GIF"


# --------------------------------------------------------------------------------------------
# Refusals


def test_empty_bytes() -> None:
    assert error_code(b"") == "empty"


@pytest.mark.parametrize(
    "data",
    [
        random.Random(2).randbytes(5000),
        b"<html><body>404</body></html>",
        b"BM" + random.Random(3).randbytes(500),
    ],
)
def test_garbage_is_undecodable(data: bytes) -> None:
    assert error_code(data) == "undecodable"


@pytest.mark.parametrize("svg", SVG_SAMPLES)
def test_svg_is_unsupported_with_a_clear_message(svg: bytes) -> None:
    with pytest.raises(ImageError) as caught:
        decode_image(svg)
    assert caught.value.code == "unsupported_format"
    assert "SVG" in caught.value.message
    assert "rasteris" in caught.value.message


@pytest.mark.parametrize("fmt", ["TIFF", "ICO", "PPM"])
def test_formats_outside_the_allow_list_are_unsupported(fmt: str) -> None:
    data = encode(Image.new("RGB", (16, 16), RED), fmt)
    with pytest.raises(ImageError) as caught:
        decode_image(data)
    assert caught.value.code == "unsupported_format"
    assert fmt in caught.value.message


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "GIF", "WEBP", "BMP"])
@pytest.mark.parametrize("keep", [0.5, 0.9])
def test_truncated_pixel_data(fmt: str, keep: float) -> None:
    image = noise_photo(120, 80)
    data = encode(image.convert("P") if fmt == "GIF" else image, fmt)
    assert error_code(data[: int(len(data) * keep)]) == "truncated"


@pytest.mark.parametrize(("fmt", "keep"), [("PNG", 20), ("PNG", 40), ("JPEG", 20), ("GIF", 10), ("WEBP", 16)])
def test_truncated_header(fmt: str, keep: int) -> None:
    image = noise_photo(64, 64)
    data = encode(image.convert("P") if fmt == "GIF" else image, fmt)
    assert error_code(data[:keep]) == "truncated"


def test_corrupt_but_complete_png_is_undecodable_not_truncated() -> None:
    rows = np.zeros((8, 8), np.uint8)
    broken_zlib = bytearray(rows_to_idat(rows))
    broken_zlib[2:6] = b"\xff\xff\xff\xff"
    assert error_code(handmade_png(8, 8, 8, 0, bytes(broken_zlib))) == "undecodable"
    bad_crc = bytearray(handmade_png(8, 8, 8, 0, rows_to_idat(rows)))
    bad_crc[29] ^= 0xFF  # the IHDR checksum
    assert error_code(bytes(bad_crc)) == "undecodable"


# --------------------------------------------------------------------------------------------
# Pixel bombs: refused from the header, before anything is allocated, and without letting
# Pillow's own DecompressionBombWarning/Error escape.


def png_bomb(width: int, height: int) -> bytes:
    return handmade_png(width, height, 8, 0, zlib.compress(b"\0" * 1000))


@pytest.mark.parametrize("max_pixels", [DEFAULT_MAX_PIXELS, 10**12])
def test_png_pixel_bomb_is_refused_from_the_header(max_pixels: int) -> None:
    # 30000 x 30000 = 900 MP: far over Pillow's own error threshold (2 x 89.5 MP) too, so with
    # max_pixels=10**12 Pillow's global limit still applies.
    data = png_bomb(30_000, 30_000)
    assert len(data) < 200
    started = time.perf_counter()
    with pytest.raises(ImageError) as caught:
        decode_image(data, max_pixels=max_pixels)
    assert caught.value.code == "too_many_pixels"  # had load() run, this would say "truncated"
    assert "30000x30000" in caught.value.message
    assert time.perf_counter() - started < 0.5


def refused_without_warnings(data: bytes, **kwargs: object) -> str:
    """The error code, having checked that no warning was emitted, not even a filtered one."""
    with warnings.catch_warnings(record=True) as emitted:
        warnings.simplefilter("always")
        code = error_code(data, **kwargs)
    assert [str(warning.message) for warning in emitted] == []
    return code


def test_png_in_pillows_warning_band_raises_no_warning() -> None:
    # 10000 x 10000 = 100 MP lies between Image.MAX_IMAGE_PIXELS and twice that, where
    # Image.open would emit DecompressionBombWarning.
    assert Image.MAX_IMAGE_PIXELS is not None
    assert Image.MAX_IMAGE_PIXELS < 100_000_000 < 2 * Image.MAX_IMAGE_PIXELS
    assert refused_without_warnings(png_bomb(10_000, 10_000), max_pixels=10**9) == "too_many_pixels"


def test_pixel_cap_is_a_parameter() -> None:
    data = encode(Image.new("RGB", (100, 100), RED), "PNG")
    assert error_code(data, max_pixels=9_999) == "too_many_pixels"
    assert decode_image(data, max_pixels=10_000).size == (100, 100)


@pytest.mark.parametrize("side", [10_000, 60_000])
def test_gif_whose_first_frame_outgrows_the_screen_is_refused(side: int) -> None:
    # Screen 1x1, first frame side x side: Pillow grows the canvas while parsing the header and
    # runs its bomb check there (a warning at 10000: 100 MP; an error at 60000: 3.6 GP).
    gif = (
        b"GIF89a"
        + struct.pack("<HHBBB", 1, 1, 0x80, 0, 0)
        + b"\0\0\0\xff\xff\xff"  # 2-entry global palette
        + b"!\xf9\x04\x01\x00\x00\x00\x00"  # graphic control extension, then its terminator
        + b","
        + struct.pack("<HHHHB", 0, 0, side, side, 0)
        + b"\x02\x02\x44\x01\x00;"
    )
    assert sniff_format(gif) == "GIF"
    assert refused_without_warnings(gif, max_pixels=10**12) == "too_many_pixels"


def test_webp_canvas_is_checked_before_libwebp_allocates_it() -> None:
    # A VP8X header declaring 9000 x 9000 (81 MP: over our cap, under Pillow's own limit).
    vp8x = b"VP8X" + struct.pack("<I", 10) + b"\x10\0\0\0" + (8999).to_bytes(3, "little") * 2
    data = b"RIFF" + struct.pack("<I", 4 + len(vp8x)) + b"WEBP" + vp8x
    assert refused_without_warnings(data) == "too_many_pixels"


# --------------------------------------------------------------------------------------------
# Formats and modes


def test_one_pixel_image() -> None:
    image = decode_image(encode(Image.new("RGB", (1, 1), (10, 20, 30)), "PNG"))
    assert (image.mode, image.size) == ("RGB", (1, 1))  # opaque: no alpha band to carry around
    assert pixel(image, (0, 0)) == (10, 20, 30, 255)


@pytest.mark.parametrize(("side", "progressive"), [(64, False), (64, True), (1024, False)])
def test_cmyk_jpeg_colours_come_out_right(side: int, progressive: bool) -> None:
    # Pillow writes CMYK JPEGs as Photoshop does: inverted, with an Adobe APP14 marker.
    cmyk = Image.new("CMYK", (side, side), (0, 255, 255, 0))  # red
    cmyk.paste((255, 0, 255, 0), (side // 2, 0, side, side))  # green
    data = encode(cmyk, "JPEG", quality=95, progressive=progressive)
    assert b"Adobe" in data
    image = decode_image(data, max_side=64)  # the 1024 px one goes through draft()
    assert image.size == (64, 64)
    assert_close(pixel(image, (10, 32)), (*RED, 255), 12)
    assert_close(pixel(image, (54, 32)), (*GREEN, 255), 12)


def test_grayscale_and_progressive_jpeg() -> None:
    grey = decode_image(encode(Image.new("L", (40, 30), 200), "JPEG"))
    assert_close(pixel(grey, (20, 15)), (200, 200, 200, 255), 2)
    colour = decode_image(encode(Image.new("RGB", (40, 30), BLUE), "JPEG", progressive=True))
    assert_close(pixel(colour, (20, 15)), (*BLUE, 255), 4)


def test_palette_png_with_transparency_keeps_alpha() -> None:
    image = Image.new("P", (20, 10), 0)
    image.putpalette([255, 255, 255, *RED])
    image.paste(1, (10, 0, 20, 10))
    decoded = decode_image(encode(image, "PNG", transparency=0))
    assert pixel(decoded, (2, 2))[3] == 0
    assert pixel(decoded, (15, 5)) == (*RED, 255)


def test_animated_gif_yields_its_first_frame() -> None:
    frames = [Image.new("P", (30, 20), 0) for _ in range(3)]
    for frame, colour in zip(frames, (RED, GREEN, BLUE), strict=True):
        frame.putpalette(list(colour))
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    with Image.open(io.BytesIO(data)) as gif:
        assert isinstance(gif, GifImagePlugin.GifImageFile)
        assert gif.n_frames == 3
    decoded = decode_image(data)
    assert decoded.size == (30, 20)
    assert pixel(decoded, (5, 5)) == (*RED, 255)


def test_gif_transparency_keeps_alpha() -> None:
    image = Image.new("P", (10, 10), 1)
    image.putpalette([*GREEN, *BLUE])
    image.paste(0, (0, 0, 5, 10))
    decoded = decode_image(encode(image, "GIF", transparency=0))
    assert pixel(decoded, (1, 1))[3] == 0
    assert pixel(decoded, (8, 8)) == (*BLUE, 255)


def test_sixteen_bit_grey_png_is_scaled_not_clipped() -> None:
    values = np.array([[0, 0x1000, 0x8000, 0xFFFF]], np.uint16)
    decoded = decode_image(handmade_png(4, 1, 16, 0, rows_to_idat(values)))
    # Pillow's own I;16 -> L conversion would clip 0x1000 and 0x8000 to 255.
    assert [pixel(decoded, (x, 0)) for x in range(4)] == [
        (0, 0, 0, 255),
        (16, 16, 16, 255),
        (128, 128, 128, 255),
        (255, 255, 255, 255),
    ]


def test_sixteen_bit_grey_png_with_trns_gets_alpha() -> None:
    values = np.array([[0x1234, 0x8000]], np.uint16)
    trns = png_chunk(b"tRNS", struct.pack(">H", 0x1234))
    decoded = decode_image(handmade_png(2, 1, 16, 0, rows_to_idat(values), trns))
    assert pixel(decoded, (0, 0))[3] == 0
    assert pixel(decoded, (1, 0)) == (128, 128, 128, 255)


def test_sixteen_bit_rgba_png() -> None:
    pixels = np.array([[[0xFFFF, 0, 0, 0xFFFF], [0, 0x8000, 0xFFFF, 0x8000]]], np.uint16)
    decoded = decode_image(handmade_png(2, 1, 16, 6, rows_to_idat(pixels)))
    assert pixel(decoded, (0, 0)) == (255, 0, 0, 255)
    assert pixel(decoded, (1, 0)) == (0, 128, 255, 128)


def test_grey_with_alpha_png() -> None:
    image = Image.new("LA", (10, 10), (60, 0))
    image.paste((200, 255), (5, 0, 10, 10))
    decoded = decode_image(encode(image, "PNG"))
    assert pixel(decoded, (1, 1))[3] == 0
    assert pixel(decoded, (8, 8)) == (200, 200, 200, 255)


def test_lossless_webp_with_alpha() -> None:
    image = Image.new("RGBA", (20, 10), (*GREEN, 255))
    image.paste((0, 0, 0, 0), (0, 0, 10, 10))
    decoded = decode_image(encode(image, "WEBP", lossless=True))
    assert pixel(decoded, (15, 5)) == (*GREEN, 255)
    assert pixel(decoded, (5, 5))[3] == 0


def test_bmp() -> None:
    image = Image.new("RGB", (7, 5), BLUE)
    image.putpixel((0, 0), RED)
    decoded = decode_image(encode(image, "BMP"))
    assert pixel(decoded, (0, 0)) == (*RED, 255)
    assert pixel(decoded, (6, 4)) == (*BLUE, 255)


@pytest.mark.parametrize("name", DATASET_FILES)
def test_dataset_images_decode_to_exactly_what_pillow_sees(name: str) -> None:
    data = (DATASET_IMAGES / name).read_bytes()
    decoded = decode_image(data)
    with Image.open(io.BytesIO(data)) as reference:
        assert max(reference.size) <= DEFAULT_MAX_SIDE  # so no resizing is involved
        mode = "RGBA" if reference.has_transparency_data else "RGB"
        expected = reference.convert(mode)
    assert decoded.mode == mode
    assert decoded.tobytes() == expected.tobytes()


# --------------------------------------------------------------------------------------------
# Orientation, size, alpha-aware resizing


def orientation_6_jpeg(width: int, height: int) -> bytes:
    """Stored landscape with a red top-left quarter; EXIF says "rotate 90° clockwise to view"."""
    image = Image.new("RGB", (width, height), BLUE)
    image.paste(RED, (0, 0, width // 2, height // 2))
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(image, "JPEG", quality=95, exif=exif)


def test_exif_orientation_is_applied() -> None:
    decoded = decode_image(orientation_6_jpeg(60, 40))
    assert decoded.size == (40, 60)
    # Rotating clockwise takes the stored top-left corner to the top-right.
    assert_close(pixel(decoded, (35, 5)), (*RED, 255), 10)
    assert_close(pixel(decoded, (5, 5)), (*BLUE, 255), 10)
    assert_close(pixel(decoded, (35, 55)), (*BLUE, 255), 10)
    assert decoded.info == {}  # no orientation tag left to be applied a second time


def test_exif_orientation_with_draft_and_downscale() -> None:
    decoded = decode_image(orientation_6_jpeg(1600, 800), max_side=100)
    assert decoded.size == (50, 100)
    assert_close(pixel(decoded, (40, 10)), (*RED, 255), 10)
    assert_close(pixel(decoded, (10, 10)), (*BLUE, 255), 10)


@pytest.mark.parametrize(
    ("size", "max_side", "expected"),
    [
        ((1000, 500), 100, (100, 50)),
        ((300, 900), 100, (33, 100)),
        ((2000, 3), 384, (384, 1)),
        ((200, 100), 384, (200, 100)),  # never enlarged
        ((1000, 500), None, (1000, 500)),
    ],
)
def test_max_side_keeps_aspect_ratio(size: tuple[int, int], max_side: int | None, expected: tuple[int, int]) -> None:
    image = Image.new("RGB", size, GREEN)
    image.paste(RED, (0, 0, size[0] // 2, size[1]))
    decoded = decode_image(encode(image, "PNG"), max_side=max_side)
    assert decoded.size == expected
    assert decoded.mode == "RGB"
    assert pixel(decoded, (0, 0)) == (*RED, 255)
    assert pixel(decoded, (expected[0] - 1, expected[1] - 1)) == (*GREEN, 255)


def test_max_side_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_side"):
        decode_image(encode(Image.new("RGB", (4, 4)), "PNG"), max_side=0)


def test_downscaling_leaves_no_fringe_from_transparent_pixels() -> None:
    # Black ink next to transparent *white*: without premultiplied alpha the edge pixels
    # would come out grey, i.e. lighter ink that no longer reads as "invert me".
    image = Image.new("RGBA", (1000, 1000), (255, 255, 255, 0))
    for x in range(0, 1000, 40):
        image.paste((0, 0, 0, 255), (x, 0, x + 7, 1000))
    decoded = np.asarray(decode_image(encode(image, "PNG"), max_side=100))
    visible = decoded[..., 3] > 0
    assert visible.any() and (~visible).any()
    assert decoded[visible][:, :3].max() <= 2
    alpha = decoded[..., 3]
    assert ((alpha > 0) & (alpha < 255)).any()  # edges with partial coverage do exist


def test_draft_decodes_large_jpegs_at_a_reduced_scale(big_jpeg: bytes) -> None:
    # 2400x1600 -> 384x256 target: libjpeg can decode at 1/4 (600x400) but not 1/8 (300x200).
    loaded = _load(big_jpeg, "JPEG", DEFAULT_MAX_PIXELS, 384)
    assert loaded.size == (600, 400)
    loaded.close()
    # 700x467 target: 1/2 scale, never below the target on either side.
    loaded = _load(big_jpeg, "JPEG", DEFAULT_MAX_PIXELS, 700)
    assert loaded.size == (1200, 800)
    loaded.close()
    loaded = _load(big_jpeg, "JPEG", DEFAULT_MAX_PIXELS, None)
    assert loaded.size == (2400, 1600)
    loaded.close()


def test_draft_result_matches_a_full_decode(big_jpeg: bytes) -> None:
    drafted = np.asarray(decode_image(big_jpeg), np.int16)
    assert drafted.shape == (256, 384, 3)  # a JPEG is opaque: RGB
    full = decode_image(big_jpeg, max_side=None)
    assert full.size == (2400, 1600)
    # The same filter on the full-size decode: libjpeg's scaled IDCT must not shift or blur it.
    reference = full.resize((384, 256), Image.Resampling.BILINEAR, reducing_gap=2.0)
    assert np.abs(drafted - np.asarray(reference, np.int16)).mean() < 3


# --------------------------------------------------------------------------------------------
# The result object, concurrency, global state


def test_result_is_a_detached_loaded_image() -> None:
    data = bytearray(encode(Image.new("P", (50, 40), 3), "GIF"))
    decoded = decode_image(bytes(data))
    del data
    assert type(decoded) is Image.Image  # not a lazy ImageFile bound to the bytes
    assert decoded.mode == "RGB"  # a palette image without a transparent colour is opaque
    assert pixel(decoded, (49, 39))[3] == 255


def test_concurrent_decoding_matches_serial(big_jpeg: bytes) -> None:
    blobs = [
        big_jpeg,
        orientation_6_jpeg(300, 200),
        encode(noise_photo(500, 300, seed=4).convert("RGBA"), "PNG"),
        encode(noise_photo(200, 200, seed=5), "WEBP"),
        *((DATASET_IMAGES / name).read_bytes() for name in DATASET_FILES),
    ]
    serial = [decode_image(blob).tobytes() for blob in blobs]
    with ThreadPoolExecutor(max_workers=4) as pool:
        parallel = list(pool.map(lambda blob: decode_image(blob).tobytes(), blobs * 3))
    assert parallel == serial * 3


def test_pillow_globals_are_left_alone() -> None:
    before = (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES)
    for data in (png_bomb(30_000, 30_000), encode(noise_photo(50, 50), "PNG")[:300]):
        with pytest.raises(ImageError):
            decode_image(data)
    assert before == (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES)
