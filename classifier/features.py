"""Cheap colour and structure statistics of an image, as seen on a white and on a dark page.

A transparent image is shown on the page's own background, so the same RGBA pixels can be "black ink
that vanishes on a dark page" (invert) or "a light icon that reads fine" (don't invert). Every statistic
that depends on the background is therefore computed twice: over white, where the image was drawn, and
over the dark page colour, where it will be shown. The statistics run on a small thumbnail: they describe
the overall look, and on two cores every millisecond per image counts.
"""

from __future__ import annotations

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
)

FloatArray = NDArray[np.float32]


def thumbnail_rgba(image: Image.Image, side: int = THUMBNAIL_SIDE) -> NDArray[np.float32]:
    """The image as a float RGBA array in [0, 1], longer side at most `side` pixels."""
    if image.mode != "RGBA":
        image = image.convert("RGBA")
    if max(image.size) > side:
        scale = side / max(image.size)
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        # Premultiplied resize so transparent pixels' colours do not bleed into visible edges.
        image = image.convert("RGBa").resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0).convert("RGBA")
    return np.asarray(image, dtype=np.float32) / 255.0


def composite(rgba: FloatArray, background: tuple[int, int, int]) -> FloatArray:
    """RGB of the image drawn over a solid background colour."""
    alpha = rgba[..., 3:4]
    bg = np.asarray(background, dtype=np.float32) / 255.0
    return rgba[..., :3] * alpha + bg * (1.0 - alpha)


def css_invert(rgb: FloatArray) -> FloatArray:
    """Approximate `grayscale(50%) invert(100%) brightness(95%) hue-rotate(180deg)`.

    The hue rotation roughly undoes the hue flip of invert(), so lightness is what matters here.
    """
    luma = _luma(rgb)
    grey_half = 0.5 * rgb + 0.5 * luma[..., None]
    return ((1.0 - grey_half) * 0.95).astype(np.float32)


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


def _background_statistics(rgb: FloatArray) -> list[float]:
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

    edges = np.concatenate(
        [np.abs(np.diff(lightness, axis=1)).reshape(-1), np.abs(np.diff(lightness, axis=0)).reshape(-1)]
    )
    if edges.size == 0:
        edges = np.zeros(1, dtype=np.float32)

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
        float(np.count_nonzero(edges > 0.25) / edges.size),
        float(edges.mean()),
        float(border.mean()),
        float(border.std()),
        float(inverted_lightness.mean()),
        *histogram.tolist(),
    ]


def colour_features(image: Image.Image, *, side: int = THUMBNAIL_SIDE) -> FloatArray:
    """The statistics named by `FEATURE_NAMES`, in that order, for one RGBA (or any mode) image."""
    rgba = thumbnail_rgba(image, side)
    alpha = rgba[..., 3]
    opaque = alpha >= 0.5
    luma = _luma(rgba)
    opaque_count = max(int(opaque.sum()), 1)
    over = {name: composite(rgba, colour) for name, colour in _BACKGROUNDS.items()}
    values = [
        float((alpha < 0.5).mean()),
        float(((alpha > 0.0) & (alpha < 1.0)).mean()),
        float(alpha.mean()),
        float((opaque & (luma < 0.25)).sum() / opaque_count) if (alpha < 1.0).any() else 0.0,
        float((opaque & (luma > 0.6)).sum() / opaque_count) if (alpha < 1.0).any() else 0.0,
        float(np.log(image.width / max(image.height, 1))),
    ]
    histograms: list[float] = []
    for name in _BACKGROUNDS:
        statistics = _background_statistics(over[name])
        values.extend(statistics[: len(_PER_BACKGROUND)])
        histograms.extend(statistics[len(_PER_BACKGROUND) :])
    values.extend(histograms)
    features = np.asarray(values, dtype=np.float32)
    if features.shape != (len(FEATURE_NAMES),):  # pragma: no cover - guards edits of the list above
        raise AssertionError(f"{features.shape[0]} feature values for {len(FEATURE_NAMES)} names")
    return features
