"""Cheap colour and structure statistics of an image, as seen on a white and on a dark page.

A transparent image is shown on the page's own background, so the same RGBA pixels can be "black ink
that vanishes on a dark page" (invert) or "a light icon that reads fine" (don't invert). Every statistic
that depends on the background is therefore computed twice: over white, where the image was drawn, and
over the dark page colour, where it will be shown. The statistics run on a small thumbnail: they describe
the overall look, and on two cores every millisecond per image counts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from PIL import Image

#: The page colour a transparent image is judged on (the dataset was labelled on #121212).
DARK_PAGE_RGB = (0x12, 0x12, 0x12)
WHITE_RGB = (0xFF, 0xFF, 0xFF)
#: Longer side of the thumbnail the statistics are computed on.
THUMBNAIL_SIDE = 64

_LIGHTNESS_BINS = 8
_BACKGROUNDS = {"white": WHITE_RGB, "dark": DARK_PAGE_RGB}

_PER_BACKGROUND = (
    "saturation_mean",  # gwern.net's heuristic statistic (HSL saturation)
    "saturated_fraction",  # pixels with HSL saturation > 0.35: "colour carries meaning"
    "lightness_mean",
    "lightness_std",
    "near_white_fraction",
    "near_black_fraction",
    "mid_tone_fraction",  # neither near-white nor near-black: photo texture, gradients
    "colourfulness",  # Hasler & Suesstrunk's colourfulness metric, scaled to ~[0, 1]
    "dominant_colour_fraction",  # share of the most common quantised colour: flat background
    "distinct_colours_log",  # log2 of distinct quantised colours, scaled: line art has few
    "edge_density",  # share of pixels on a strong lightness edge: text, lines
    "edge_strength_mean",
    "border_lightness_mean",  # background estimate from the outermost pixels
    "border_lightness_std",
    "inverted_lightness_mean",  # how bright the CSS-inverted image looks on this background
)
#: Background / foreground layout and texture, measured as the image is shown (over the dark page).
#: The background is the most common quantised colour; the foreground everything clearly different.
_LAYOUT = (
    "background_fraction_shown",  # "mostly flat background": figures, text, icons on transparency
    "background_lightness_shown",  # "dark already": a dark canvas (dark plots, terminals, night photos)
    "foreground_lightness_shown",
    "foreground_contrast_shown",  # foreground minus background lightness: light-on-dark (< 0) or dark-on-light
    "foreground_saturation_shown",  # colour of the content itself, not diluted by a white background
    "foreground_colours_log_shown",  # distinct colours of the content: line art few, photos many
    "flat_fraction_shown",  # pixels with no lightness change at all: drawn, not photographed
    "texture_fraction_shown",  # small but non-zero changes: photo texture, noise, soft gradients
    "axis_aligned_edge_share_shown",  # strong edges running horizontally/vertically: text, axes, boxes, UIs
    "uniform_block_fraction_shown",  # 4x4 blocks without any lightness change: large uniform regions
    "ink_row_transitions_shown",  # rows alternating between ink and no ink: lines of text
    "ink_column_transitions_shown",
    "background_lightness_white",  # the authoring canvas: light for figures, also for transparent ones
    "foreground_contrast_white",
)
#: WCAG contrast of the visible (alpha >= 0.5) pixels against each page colour: is the ink legible?
#: Mid-grey symbolic icons (#444) are not "dark ink" by lightness but have contrast < 2 on #121212.
_LEGIBILITY = (
    "low_contrast_fraction_dark",  # contrast < 3 (WCAG's minimum for graphics) against the dark page
    "low_contrast_fraction_white",
    "median_contrast_dark",  # log contrast / log 21, in [0, 1]
    "median_contrast_white",
)
FEATURE_NAMES: tuple[str, ...] = (
    "transparent_fraction",  # alpha < 128
    "semi_transparent_fraction",  # 0 < alpha < 255: antialiased ink, soft shadows
    "alpha_mean",
    "visible_dark_ink_fraction",  # opaque pixels that would vanish on a dark page
    "visible_light_fraction",  # opaque pixels that stand out on a dark page
    "aspect_ratio_log",
    *(f"{stat}_{background}" for background in _BACKGROUNDS for stat in _PER_BACKGROUND),
    *(f"lightness_hist_{i}_white" for i in range(_LIGHTNESS_BINS)),
    *(f"lightness_hist_{i}_dark" for i in range(_LIGHTNESS_BINS)),
    *_LAYOUT,
    *_LEGIBILITY,
)

FloatArray = NDArray[np.float32]


def thumbnail_rgba(image: Image.Image, side: int = THUMBNAIL_SIDE) -> NDArray[np.float32]:
    """The image as a float RGBA array in [0, 1], longer side at most `side` pixels."""
    return thumbnail_bytes(image, side).astype(np.float32) / 255.0


def thumbnail_bytes(image: Image.Image, side: int = THUMBNAIL_SIDE) -> NDArray[np.uint8]:
    """The image as a uint8 RGBA array, longer side at most `side` pixels."""
    opaque = image.mode in ("RGB", "L")
    if image.mode not in ("RGB", "RGBA"):
        image = image.convert("RGB" if opaque else "RGBA")
    if max(image.size) > side:
        scale = side / max(image.size)
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        if opaque:
            image = image.resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0)
        else:
            # Premultiplied resize so transparent pixels' colours do not bleed into visible edges.
            image = image.convert("RGBa").resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0).convert("RGBA")
    if opaque:  # what an RGBA copy would give, without converting the image: alpha 255 everywhere
        pixels = np.empty((image.height, image.width, 4), dtype=np.uint8)
        pixels[..., :3] = np.asarray(image)
        pixels[..., 3] = 255
        return pixels
    return np.asarray(image)


def composite(rgba: FloatArray, background: tuple[int, int, int]) -> FloatArray:
    """RGB of the image drawn over a solid background colour."""
    alpha = rgba[..., 3:4]
    bg = np.asarray(background, dtype=np.float32) / 255.0
    return rgba[..., :3] * alpha + bg * (1.0 - alpha)


def _luma(rgb: FloatArray) -> FloatArray:
    return 0.2126 * rgb[..., 0] + 0.7152 * rgb[..., 1] + 0.0722 * rgb[..., 2]


def _hsl_saturation_lightness(rgb: FloatArray) -> tuple[FloatArray, FloatArray]:
    # Elementwise max/min of the three planes: reducing over a length-3 last axis is ~10x slower.
    red, green, blue = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    high = np.maximum(np.maximum(red, green), blue)
    low = np.minimum(np.minimum(red, green), blue)
    lightness = (high + low) / 2.0
    chroma = high - low
    denominator = 1.0 - np.abs(2.0 * lightness - 1.0)
    saturation = np.where(denominator > 1e-6, chroma / np.maximum(denominator, 1e-6), 0.0)
    return np.clip(saturation, 0.0, 1.0).astype(np.float32), lightness.astype(np.float32)


def hsl_saturation_mean(rgb: FloatArray) -> float:
    """Mean HSL saturation, the statistic of gwern.net's invert heuristic."""
    saturation, _ = _hsl_saturation_lightness(rgb)
    return float(saturation.mean())


def _border(values: FloatArray) -> FloatArray:
    if values.shape[0] < 3 or values.shape[1] < 3:
        return values.reshape(-1)
    return np.concatenate([values[0], values[-1], values[1:-1, 0], values[1:-1, -1]])


@dataclass(frozen=True)
class _Planes:
    """Per-pixel planes of one composite, shared by the statistics that need them."""

    rgb: FloatArray
    saturation: FloatArray
    lightness: FloatArray
    codes: NDArray[np.int32]  # quantised colour, 16 levels per channel
    counts: NDArray[np.intp]  # histogram of `codes`
    step_x: FloatArray  # |lightness change| to the right neighbour, (h, w - 1)
    step_y: FloatArray  # |lightness change| to the neighbour below, (h - 1, w)


def _background_statistics(rgb: FloatArray) -> tuple[list[float], _Planes]:
    """The per-background statistics, then the lightness histogram (one HSL pass for both)."""
    saturation, lightness = _hsl_saturation_lightness(rgb)
    size = max(lightness.size, 1)
    near_white = np.count_nonzero(lightness > 0.9)
    near_black = np.count_nonzero(lightness < 0.1)

    red, green, blue = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    rg = red - green
    yb = 0.5 * (red + green) - blue
    colourfulness = float(np.hypot(rg.std(), yb.std()) + 0.3 * np.hypot(rg.mean(), yb.mean()))

    quantised = (rgb * 15.0 + 0.5).astype(np.int32)
    codes = (quantised[..., 0] << 8) | (quantised[..., 1] << 4) | quantised[..., 2]
    counts = np.bincount(codes.reshape(-1), minlength=4096)
    distinct = int(np.count_nonzero(counts))

    step_x = np.abs(np.diff(lightness, axis=1))
    step_y = np.abs(np.diff(lightness, axis=0))
    n_steps = step_x.size + step_y.size
    edge_density = (np.count_nonzero(step_x > 0.25) + np.count_nonzero(step_y > 0.25)) / max(n_steps, 1)
    edge_strength = (float(step_x.sum()) + float(step_y.sum())) / max(n_steps, 1)

    border = _border(lightness)
    # The CSS-inverted image's lightness follows from lightness and luma already at hand: invert() flips
    # it, grayscale(50%) mixes in luma, brightness(95%) scales it; no second HSL pass needed.
    inverted_lightness = (1.0 - (0.5 * lightness + 0.5 * _luma(rgb))) * 0.95
    bins = np.minimum((lightness * _LIGHTNESS_BINS).astype(np.int32), _LIGHTNESS_BINS - 1)
    histogram = np.bincount(bins.reshape(-1), minlength=_LIGHTNESS_BINS) / size
    return [
        float(saturation.mean()),
        float(np.count_nonzero(saturation > 0.35) / size),
        float(lightness.mean()),
        float(lightness.std()),
        float(near_white / size),
        float(near_black / size),
        float(1.0 - (near_white + near_black) / size),
        min(colourfulness, 1.0),
        float(counts.max() / size),
        float(np.log2(distinct) / 12.0),
        float(edge_density),
        edge_strength,
        float(border.mean()),
        float(border.std()),
        float(inverted_lightness.mean()),
        *histogram.tolist(),
    ], _Planes(rgb, saturation, lightness, codes, counts, step_x, step_y)


#: Colours within this distance (max over channels) of the background colour count as background.
_BACKGROUND_TOLERANCE = 0.08
#: Lightness steps on the 64 px thumbnail: below FLAT nothing changes (drawn fills), below TEXTURE the
#: change is gentle (photo texture, gradients), above STRONG it is an edge (ink, lines, text).
_FLAT_STEP, _TEXTURE_STEP, _STRONG_STEP = 0.004, 0.08, 0.1
_BLOCK = 4
#: WCAG 2's minimum contrast ratio for graphical objects.
_LEGIBLE_CONTRAST = 3.0


def _background_split(planes: _Planes) -> tuple[NDArray[np.bool_], float, float]:
    """Background mask (near the most common colour), background lightness, foreground lightness."""
    code = int(planes.counts.argmax())
    colour = np.asarray([(code >> 8) & 15, (code >> 4) & 15, code & 15], dtype=np.float32) / 15.0
    rgb = planes.rgb
    # Elementwise over the three planes: reducing over a length-3 last axis is ~10x slower.
    distance = np.maximum(
        np.maximum(np.abs(rgb[..., 0] - colour[0]), np.abs(rgb[..., 1] - colour[1])), np.abs(rgb[..., 2] - colour[2])
    )
    background = distance < _BACKGROUND_TOLERANCE
    lightness = planes.lightness
    background_lightness = float(lightness[background].mean()) if background.any() else float(lightness.mean())
    foreground = ~background
    foreground_lightness = float(lightness[foreground].mean()) if foreground.any() else background_lightness
    return background, background_lightness, foreground_lightness


def _layout_statistics(shown: _Planes, white: _Planes) -> list[float]:
    """`_LAYOUT`, in order: background/foreground split, texture and text structure of the shown image."""
    background, background_lightness, foreground_lightness = _background_split(shown)
    foreground = ~background
    if foreground.any():
        foreground_saturation = float(shown.saturation[foreground].mean())
        foreground_colours = np.count_nonzero(np.bincount(shown.codes[foreground], minlength=4096))
        foreground_colours_log = float(np.log2(foreground_colours) / 12.0)
    else:
        foreground_saturation, foreground_colours_log = 0.0, 0.0

    lightness = shown.lightness
    height, width = lightness.shape
    flat, texture, axis_aligned = 1.0, 0.0, 0.0
    if height >= 2 and width >= 2:
        step_x = shown.step_x[:-1, :]
        step_y = shown.step_y[:, :-1]
        step = step_x + step_y
        flat = float(np.count_nonzero(step < _FLAT_STEP) / step.size)
        texture = float(np.count_nonzero((step >= _FLAT_STEP) & (step < _TEXTURE_STEP)) / step.size)
        strong = step > _STRONG_STEP
        if strong.any():
            # An edge is axis-aligned when its gradient points (nearly) along x or y.
            low = np.minimum(step_x[strong], step_y[strong])
            high = np.maximum(step_x[strong], step_y[strong])
            axis_aligned = float(np.count_nonzero(low < 0.25 * high) / low.size)
    rows, columns = height // _BLOCK, width // _BLOCK
    uniform = 0.0
    if rows and columns:
        blocks = lightness[: rows * _BLOCK, : columns * _BLOCK].reshape(rows, _BLOCK, columns, _BLOCK)
        spread = blocks.max(axis=(1, 3)) - blocks.min(axis=(1, 3))
        uniform = float(np.count_nonzero(spread < 0.02) / spread.size)
    ink_rows = foreground.mean(axis=1) > 0.02
    ink_columns = foreground.mean(axis=0) > 0.02
    row_transitions = np.count_nonzero(ink_rows[1:] != ink_rows[:-1]) / max(height, 1)
    column_transitions = np.count_nonzero(ink_columns[1:] != ink_columns[:-1]) / max(width, 1)

    # An opaque image's planes are the same object over both backgrounds: so is its split.
    if white is shown:
        white_background, white_foreground = background_lightness, foreground_lightness
    else:
        _, white_background, white_foreground = _background_split(white)
    return [
        float(background.mean()),
        background_lightness,
        foreground_lightness,
        foreground_lightness - background_lightness,
        foreground_saturation,
        foreground_colours_log,
        flat,
        texture,
        axis_aligned,
        uniform,
        float(row_transitions),
        float(column_transitions),
        white_background,
        white_foreground - white_background,
    ]


#: sRGB byte -> linear light (WCAG 2), so luminance needs no per-pixel power function.
_SRGB = np.arange(256, dtype=np.float64) / 255.0
_LINEAR_CHANNEL = np.where(_SRGB <= 0.04045, _SRGB / 12.92, ((_SRGB + 0.055) / 1.055) ** 2.4).astype(np.float32)


def relative_luminance(rgb_bytes: NDArray[np.uint8]) -> FloatArray:
    """WCAG relative luminance of sRGB byte triples (last axis)."""
    linear = _LINEAR_CHANNEL
    return (
        0.2126 * linear[rgb_bytes[..., 0]] + 0.7152 * linear[rgb_bytes[..., 1]] + 0.0722 * linear[rgb_bytes[..., 2]]
    ).astype(np.float32)


_DARK_LUMINANCE = float(relative_luminance(np.asarray(DARK_PAGE_RGB, dtype=np.uint8)))
_WHITE_LUMINANCE = 1.0


def _contrast_ratio(luminance: float, page_luminance: float) -> float:
    return (max(luminance, page_luminance) + 0.05) / (min(luminance, page_luminance) + 0.05)


def _legibility_statistics(rgba_bytes: NDArray[np.uint8], opaque: bool) -> list[float]:
    """`_LEGIBILITY`, in order: how legible the visible pixels are on the dark page and on white."""
    if opaque:
        luminance = relative_luminance(rgba_bytes[..., :3]).reshape(-1)
    else:
        visible = rgba_bytes[..., 3] >= 128  # alpha >= 0.5
        if not visible.any():
            return [0.0, 0.0, 0.0, 0.0]
        luminance = relative_luminance(rgba_bytes[visible, :3])
    median = float(np.median(luminance))
    values: list[float] = []
    medians: list[float] = []
    for page_luminance in (_DARK_LUMINANCE, _WHITE_LUMINANCE):
        # contrast < 3 <=> luminance inside ((page + 0.05) / 3 - 0.05, 3 * (page + 0.05) - 0.05)
        low = (page_luminance + 0.05) / _LEGIBLE_CONTRAST - 0.05
        high = _LEGIBLE_CONTRAST * (page_luminance + 0.05) - 0.05
        values.append(float(np.count_nonzero((luminance > low) & (luminance < high)) / luminance.size))
        # Contrast of the median visible pixel (contrast is monotonic in luminance on either side of the page).
        medians.append(float(np.log(_contrast_ratio(median, page_luminance)) / np.log(21.0)))
    return values + medians


def _alpha_statistics(rgba: FloatArray, opaque_image: bool) -> list[float]:
    """The first five of `FEATURE_NAMES`: how much is transparent, and what the opaque part is made of."""
    if opaque_image:  # the values the general case gives for alpha 1 everywhere
        return [0.0, 0.0, 1.0, 0.0, 0.0]
    alpha = rgba[..., 3]
    opaque = alpha >= 0.5
    luma = _luma(rgba)
    opaque_count = max(int(opaque.sum()), 1)
    return [
        float((alpha < 0.5).mean()),
        float(((alpha > 0.0) & (alpha < 1.0)).mean()),
        float(alpha.mean()),
        float((opaque & (luma < 0.25)).sum() / opaque_count),
        float((opaque & (luma > 0.6)).sum() / opaque_count),
    ]


def colour_features(image: Image.Image, *, side: int = THUMBNAIL_SIDE) -> FloatArray:
    """The statistics named by `FEATURE_NAMES`, in that order, for one RGBA (or any mode) image."""
    rgba_bytes = thumbnail_bytes(image, side)
    rgba = rgba_bytes.astype(np.float32) / 255.0
    opaque_image = bool(rgba_bytes[..., 3].min() == 255)
    values = [*_alpha_statistics(rgba, opaque_image), float(np.log(image.width / max(image.height, 1)))]
    histograms: list[float] = []
    planes: dict[str, _Planes] = {}
    shared: tuple[list[float], _Planes] | None = None
    for name, colour in _BACKGROUNDS.items():
        if opaque_image:
            # An opaque image looks the same on any page: compute once (identical values), reuse.
            shared = shared or _background_statistics(np.ascontiguousarray(rgba[..., :3]))
            statistics, planes[name] = shared
        else:
            statistics, planes[name] = _background_statistics(composite(rgba, colour))
        values.extend(statistics[: len(_PER_BACKGROUND)])
        histograms.extend(statistics[len(_PER_BACKGROUND) :])
    values.extend(histograms)
    values.extend(_layout_statistics(planes["dark"], planes["white"]))
    values.extend(_legibility_statistics(rgba_bytes, opaque_image))
    features = np.asarray(values, dtype=np.float32)
    if features.shape != (len(FEATURE_NAMES),):  # pragma: no cover - guards edits of the list above
        raise AssertionError(f"{features.shape[0]} feature values for {len(FEATURE_NAMES)} names")
    return features
