"""Encoded bytes -> loaded RGB or RGBA PIL image, safely and cheaply.

Untrusted bytes from the web go through here, so the order of operations matters:

1. sniff the format from magic bytes and refuse anything outside `ALLOWED_FORMATS`;
2. parse only the header (Pillow's image files are lazy) and refuse more than `max_pixels`
   *before* any pixel memory is allocated;
3. for JPEG, ask libjpeg to decode at 1/2, 1/4 or 1/8 scale (`draft`) when the image is much
   larger than the size we need: this skips most of the IDCT work;
4. load, telling truncated files apart from corrupt ones;
5. normalise the mode, downscale with premultiplied alpha, apply the EXIF orientation.

Alpha is kept: a transparent image is later judged on the dark page it will be shown on.

Nothing here changes Pillow's global state (`MAX_IMAGE_PIXELS`, `LOAD_TRUNCATED_IMAGES`, warning
filters), and every call works on its own objects, so `decode_image` is safe to call from many
executor threads at once.
"""

from __future__ import annotations

import io
import struct
import threading
from typing import Literal

import numpy as np
from PIL import (
    BmpImagePlugin,
    ExifTags,
    GifImagePlugin,
    Image,
    ImageFile,
    JpegImagePlugin,
    PngImagePlugin,
    WebPImagePlugin,
)

ImageErrorCode = Literal["unsupported_format", "too_many_pixels", "truncated", "empty", "undecodable"]


class ImageError(ValueError):
    """An image that cannot be judged; `code` is stable and shown to API clients."""

    def __init__(self, code: ImageErrorCode, message: str) -> None:
        super().__init__(message)
        self.code: ImageErrorCode = code
        self.message = message


# 50 MP is a 8660 x 5773 photo: beyond anything a web page shows, and 200 MB as RGBA.
DEFAULT_MAX_PIXELS = 50_000_000
# The training set's images are <= 384 px on the long side; features and backbones see no more.
DEFAULT_MAX_SIDE = 384
ALLOWED_FORMATS: frozenset[str] = frozenset({"PNG", "JPEG", "GIF", "WEBP", "BMP"})

# The plugin classes themselves, not `Image.open`: `Image.open` runs Pillow's own bomb check,
# which *warns* (DecompressionBombWarning) between MAX_IMAGE_PIXELS and twice that, and a warning
# can't be silenced thread-safely. We apply our own, stricter cap to the parsed header instead.
# JpegImageFile (not Pillow's jpeg_factory) also means an MPO camera file yields its first image.
_OPENERS: dict[str, type[ImageFile.ImageFile]] = {
    "PNG": PngImagePlugin.PngImageFile,
    "JPEG": JpegImagePlugin.JpegImageFile,
    "GIF": GifImagePlugin.GifImageFile,
    "WEBP": WebPImagePlugin.WebPImageFile,
    "BMP": BmpImagePlugin.BmpImageFile,
}
_WEBP_DECODER_PRESENT = bool(WebPImagePlugin.SUPPORTED)

# BILINEAR in Pillow is a true area-weighted (antialiased) filter when shrinking, and
# reducing_gap first box-averages by an integer factor with `reduce()`, which is several times
# cheaper on big images. The result is within about 1/255 (mean) of a full LANCZOS at 2-6x the
# speed (bench/decode.py); the statistics and backbones downstream can't tell the difference.
_RESAMPLE = Image.Resampling.BILINEAR
_REDUCING_GAP = 2.0

# Same table as ImageOps.exif_transpose; we apply it ourselves to the already-downscaled image
# and drop the metadata, instead of having exif_transpose rewrite an EXIF blob we don't keep.
_ORIENTATION_TRANSPOSE: dict[int, Image.Transpose] = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}

_PREMULTIPLIED = {"LA": "La", "RGBA": "RGBa"}
_SIXTEEN_BIT_GREY = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N"})

# The DIB header variants Pillow reads: OS/2 1.x, Windows 3.x (and its bitfield extensions),
# OS/2 2.x, Windows 4.x and 5.x.
_BMP_HEADER_SIZES = frozenset({12, 40, 52, 56, 64, 108, 124})
# SVG files often open with a long licence comment before the <svg> element.
_SNIFF_BYTES = 4096
_PILLOW_PLUGINS_LOCK = threading.Lock()


# --------------------------------------------------------------------------------------------
# Sniffing


def sniff_format(data: bytes | bytearray | memoryview) -> str | None:
    """The image format the bytes announce: "PNG", "JPEG", "GIF", "WEBP", "BMP", "SVG", another
    Pillow format name ("TIFF", "ICO", ...), "AVIF"/"HEIF", or None.

    Reads only magic bytes (no decoding) and never raises, so the HTTP fetcher can use it to
    confirm a Content-Type.
    """
    try:
        head = bytes(data[:_SNIFF_BYTES])
        return _sniff_common(head) or _sniff_svg(head) or _sniff_pillow(head)
    except Exception:  # a sniffer must never take the caller down, whatever it is handed
        return None


def _sniff_common(head: bytes) -> str | None:
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    # Pillow only tests "BM"; the DIB header size too keeps text that starts "BM" out.
    if head.startswith(b"BM") and int.from_bytes(head[14:18], "little") in _BMP_HEADER_SIZES:
        return "BMP"
    if head[4:8] == b"ftyp":  # ISO-BMFF: common on the web, and Pillow may lack a decoder
        brand = head[8:12]
        if brand in (b"avif", b"avis"):
            return "AVIF"
        if brand in (b"heic", b"heix", b"hevc", b"hevx", b"mif1", b"msf1"):
            return "HEIF"
    return None


def _sniff_svg(head: bytes) -> str | None:
    """SVG when the first element is <svg>, after an optional BOM, XML declaration, comments,
    processing instructions and doctype (an HTML page with inline SVG is not an SVG file)."""
    text = head.removeprefix(b"\xef\xbb\xbf").lstrip()
    while text.startswith((b"<?", b"<!")):
        if text.startswith(b"<!--"):
            end = text.find(b"-->") + 3
        elif text[:9].upper() == b"<!DOCTYPE" and b"[" in text[: text.find(b">") + 1]:
            end = text.find(b"]>") + 2  # internal subset: its entities contain '>'
        else:
            end = text.find(b">") + 1
        if end <= 0:
            return None
        text = text[end:].lstrip()
    tag = text[:5].lower()
    if tag == b"<svg" or (tag.startswith(b"<svg") and tag[4:5] in b" \t\r\n>/:"):
        return "SVG"
    return None


def _sniff_pillow(head: bytes) -> str | None:
    """Ask the `accept` test of every Pillow plugin (the rarer formats: TIFF, ICO, PSD, ...)."""
    with _PILLOW_PLUGINS_LOCK:  # init() imports ~40 plugin modules once; don't race it
        Image.init()
    for name in list(Image.ID):  # list() snapshots the registry atomically
        entry = Image.OPEN.get(name)
        accept = entry[1] if entry else None
        # Plugins without a test (TGA, PCD, ...) would claim anything; the allowed formats were
        # already tested, more strictly, by _sniff_common. A str result from `accept` means
        # "this format, but its decoder is not installed": still this format's name.
        if accept is not None and name not in ALLOWED_FORMATS and accept(head):
            return name
    return None


# --------------------------------------------------------------------------------------------
# Decoding


def decode_image(
    data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS, max_side: int | None = DEFAULT_MAX_SIDE
) -> Image.Image:
    """Decode untrusted image bytes into a loaded, detached image: mode "RGBA" when the image has
    transparency data (alpha band, tRNS, transparent GIF colour), "RGB" when it is opaque.

    Opaque images stay RGB because every later step is cheaper without an alpha band that is 255
    everywhere (and gives exactly the values it would with one).

    The longer side is at most `max_side` (None keeps the full size); the aspect ratio is kept.
    The first frame of animations is used, EXIF orientation is applied, metadata is dropped.
    Raises `ImageError` with a stable code: "empty", "unsupported_format" (SVG included: no
    rasteriser is installed), "too_many_pixels" (checked from the header, before decoding,
    against the smaller of `max_pixels` and Pillow's MAX_IMAGE_PIXELS), "truncated" or
    "undecodable".
    """
    if max_side is not None and max_side < 1:
        raise ValueError(f"max_side must be positive or None, not {max_side}")
    if not data:
        raise ImageError("empty", "the image is empty (0 bytes)")
    fmt = _allowed_format(data)
    cap = max_pixels if Image.MAX_IMAGE_PIXELS is None else min(max_pixels, Image.MAX_IMAGE_PIXELS)
    image = _load(data, fmt, cap, max_side)
    try:
        orientation = _orientation(image)
        rgba = _downscale(_normalise_mode(image), max_side)
        if rgba is image:  # already RGB(A) at the right size: detach it from the file object
            rgba = image.copy()
    finally:
        image.close()

    transpose = _ORIENTATION_TRANSPOSE.get(orientation)
    if transpose is not None:
        rgba = rgba.transpose(transpose)
    rgba.info = {}  # an orientation tag left behind would get the image rotated twice
    return rgba


def _allowed_format(data: bytes) -> str:
    fmt = sniff_format(data)
    if fmt is None:
        raise ImageError("undecodable", "not a recognised image format")
    if fmt == "SVG":
        raise ImageError(
            "unsupported_format",
            "SVG is a vector format and must be rasterised first; no SVG rasteriser is installed",
        )
    if fmt not in ALLOWED_FORMATS or (fmt == "WEBP" and not _WEBP_DECODER_PRESENT):
        allowed = ", ".join(sorted(ALLOWED_FORMATS))
        raise ImageError("unsupported_format", f"{fmt} images are not supported (supported: {allowed})")
    return fmt


def _load(data: bytes, fmt: str, cap: int, max_side: int | None) -> ImageFile.ImageFile:
    """Open lazily, check the pixel count, pick the JPEG draft scale, then decode the pixels.

    A JPEG comes back at the smallest 1/1, 1/2, 1/4 or 1/8 scale whose sides are still at
    least the final size's, so its longer side is never below `max_side`.
    """
    # GIF and WebP openers do work proportional to the canvas (or run Pillow's bomb check) while
    # parsing the header, so those two are checked from our own header read first.
    _check_pixels(_early_size(data, fmt), cap)
    stream = io.BytesIO(data)
    try:
        image = _OPENERS[fmt](stream)
    except Exception as exc:  # Pillow raises many types on hostile input; map each to a code
        # A header parser that failed after reading to the end of the data wanted more of it.
        raise _decode_failure(exc, fmt, data, read_to_end=stream.tell() >= len(data)) from exc
    try:
        _check_pixels(image.size, cap)
        if fmt == "JPEG" and max_side is not None:
            target = _fit(image.size, max_side)
            if target != image.size:
                # The aspect-correct target (not a square) lets the shorter side shrink too.
                image.draft("RGB", target)
        image.load()
    except ImageError:
        image.close()
        raise
    except Exception as exc:
        image.close()
        raise _decode_failure(exc, fmt, data, read_to_end=False) from exc
    return image


def _check_pixels(size: tuple[int, int] | None, cap: int) -> None:
    if size is not None and size[0] * size[1] > cap:
        raise ImageError(
            "too_many_pixels", f"{size[0]}x{size[1]} is {size[0] * size[1]:,} pixels; the limit is {cap:,}"
        )


def _decode_failure(exc: Exception, fmt: str, data: bytes, *, read_to_end: bool) -> ImageError:
    if isinstance(exc, Image.DecompressionBombError | Image.DecompressionBombWarning):
        return ImageError("too_many_pixels", str(exc))
    if _looks_truncated(exc, fmt, data, read_to_end):
        return ImageError("truncated", f"the {fmt} file is truncated: it ends before its image data does")
    return ImageError("undecodable", f"cannot decode the {fmt} file: {exc}")


def _looks_truncated(exc: Exception, fmt: str, data: bytes, read_to_end: bool) -> bool:
    if fmt == "WEBP":
        # libwebp reads everything and only says "could not create decoder object"; the RIFF
        # header knows how long the file should be.
        return int.from_bytes(data[4:8], "little") + 8 > len(data)
    # Pillow says so when pixel data runs out: "image file is truncated (N bytes not
    # processed)", "Truncated File Read".
    return read_to_end or "truncated" in str(exc).lower()


def _early_size(data: bytes, fmt: str) -> tuple[int, int] | None:
    if fmt == "GIF":
        return _gif_first_frame_size(data)
    if fmt == "WEBP":
        return _webp_canvas_size(data)
    return None


def _gif_first_frame_size(data: bytes) -> tuple[int, int] | None:
    """Logical screen grown to cover the first frame, as Pillow's GIF opener computes it."""
    if len(data) < 13:
        return None
    width, height = struct.unpack_from("<HH", data, 6)
    flags = data[10]
    pos = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)  # skip the global colour table
    while pos < len(data):
        marker = data[pos]
        if marker == 0x3B:  # trailer
            break
        if marker == 0x21:  # extension: label byte, then length-prefixed sub-blocks up to a 0
            pos += 2
            while pos < len(data) and data[pos]:
                pos += data[pos] + 1
            pos += 1
        elif marker == 0x2C:  # image descriptor
            if pos + 9 > len(data):
                break
            left, top, frame_width, frame_height = struct.unpack_from("<HHHH", data, pos + 1)
            return max(width, left + frame_width), max(height, top + frame_height)
        else:  # Pillow skips stray bytes one at a time
            pos += 1
    return width, height


def _webp_canvas_size(data: bytes) -> tuple[int, int] | None:
    """Canvas size from the first chunk header (VP8X, VP8L or VP8), before libwebp allocates it."""
    chunk = data[12:16]
    if chunk == b"VP8X" and len(data) >= 30:
        return int.from_bytes(data[24:27], "little") + 1, int.from_bytes(data[27:30], "little") + 1
    if chunk == b"VP8L" and len(data) >= 25 and data[20] == 0x2F:
        bits = int.from_bytes(data[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8 " and len(data) >= 30 and data[23:26] == b"\x9d\x01\x2a":
        width, height = struct.unpack_from("<HH", data, 26)
        return width & 0x3FFF, height & 0x3FFF
    return None


def _orientation(image: Image.Image) -> int:
    try:
        return int(image.getexif().get(ExifTags.Base.Orientation, 1))
    except Exception:  # corrupt EXIF is common in the wild and must not cost us the pixels
        return 1


def _normalise_mode(image: Image.Image) -> Image.Image:
    """The image in one of "L", "LA", "RGB", "RGBA" (8 bits per channel); itself if it already is."""
    if image.mode in _SIXTEEN_BIT_GREY:
        return _grey16_to_8(image)
    has_alpha = image.has_transparency_data  # alpha band, tRNS/GIF transparency, RGBA palette
    grey = image.mode in ("1", "L", "LA")
    mode = ("LA" if has_alpha else "L") if grey else ("RGBA" if has_alpha else "RGB")
    # A conversion to the same mode is a full copy: big images are copied once, later, if at all.
    return image if image.mode == mode else image.convert(mode)


def _grey16_to_8(image: Image.Image) -> Image.Image:
    # Pillow's own I;16 -> L conversion clips at 255 (nearly everything turns white); keep the
    # high byte instead. A 16-bit tRNS grey value becomes an alpha channel.
    values = np.asarray(image).astype(np.uint32)
    grey = Image.fromarray((values >> 8).astype(np.uint8), "L")
    transparent = image.info.get("transparency")
    if not isinstance(transparent, int):
        return grey
    alpha = Image.fromarray(np.where(values == transparent, 0, 255).astype(np.uint8), "L")
    return Image.merge("LA", (grey, alpha))


def _fit(size: tuple[int, int], max_side: int | None) -> tuple[int, int]:
    """`size` shrunk (never grown) so that its longer side is `max_side`, aspect ratio kept."""
    width, height = size
    if max_side is None or max(width, height) <= max_side:
        return size
    scale = max_side / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def _downscale(image: Image.Image, max_side: int | None) -> Image.Image:
    """Shrunk to `max_side`, in "RGBA" if it has transparency data and "RGB" otherwise."""
    target = _fit(image.size, max_side)
    if target == image.size:
        return image if image.mode in ("RGB", "RGBA") else image.convert("RGBA" if image.mode == "LA" else "RGB")
    premultiplied = _PREMULTIPLIED.get(image.mode)
    if premultiplied is None:
        small = image.resize(target, _RESAMPLE, reducing_gap=_REDUCING_GAP)
        return small if small.mode == "RGB" else small.convert("RGB")
    # Premultiplied: the (arbitrary, often black or white) colour of fully transparent pixels
    # must not bleed into the visible edge next to them.
    small = image.convert(premultiplied).resize(target, _RESAMPLE, reducing_gap=_REDUCING_GAP)
    return small.convert(image.mode).convert("RGBA")  # Pillow has no La -> RGBA conversion
