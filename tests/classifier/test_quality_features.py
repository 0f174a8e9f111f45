"""The layout/legibility statistics and the synthetic generators say what they are meant to say."""

import random

import numpy as np
from PIL import Image, ImageDraw

from classifier.features import FEATURE_NAMES, colour_features
from classifier.synthetic import GENERATORS, SYNTHETIC_PREFIX, generate, icon_dark_ink, plot_dark, plot_light


def feature(values, name):
    return float(values[FEATURE_NAMES.index(name)])


def symbolic_icon(grey):
    image = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    draw = ImageDraw.Draw(image)
    draw.rounded_rectangle([8, 8, 56, 56], radius=8, outline=(grey, grey, grey, 255), width=6)
    draw.ellipse([22, 22, 42, 42], fill=(grey, grey, grey, 255))
    return image


def test_mid_grey_symbolic_icon_is_illegible_on_the_dark_page_only():
    # #444: not "dark ink" by lightness, yet contrast ~1.9 on #121212: the case the legibility features add.
    grey = colour_features(symbolic_icon(0x44))
    assert feature(grey, "low_contrast_fraction_dark") > 0.95
    assert feature(grey, "low_contrast_fraction_white") < 0.05
    light = colour_features(symbolic_icon(0xEE))
    assert feature(light, "low_contrast_fraction_dark") < 0.05
    assert feature(light, "median_contrast_dark") > feature(grey, "median_contrast_dark") + 0.4


def test_dark_plot_is_light_on_dark_and_light_plot_dark_on_light():
    dark = colour_features(plot_dark(random.Random(3)).image.convert("RGB"))
    light = colour_features(plot_light(random.Random(3)).image.convert("RGB"))
    assert feature(dark, "background_lightness_shown") < 0.25
    assert feature(dark, "foreground_contrast_shown") > 0.1
    assert feature(light, "background_lightness_shown") > 0.85
    assert feature(light, "foreground_contrast_shown") < -0.1


def test_photo_texture_versus_flat_line_art():
    rng = np.random.default_rng(5)
    smooth = np.cumsum(rng.normal(0, 2, size=(96, 96, 3)), axis=1)
    photo = Image.fromarray(np.clip(128 + smooth, 0, 255).astype(np.uint8))
    art = Image.new("RGB", (96, 96), "white")
    ImageDraw.Draw(art).rectangle([20, 20, 70, 70], outline="black", width=2)
    photo_values, art_values = colour_features(photo), colour_features(art)
    assert feature(photo_values, "texture_fraction_shown") > 0.5
    assert feature(art_values, "flat_fraction_shown") > 0.8
    assert feature(art_values, "axis_aligned_edge_share_shown") > 0.9
    assert feature(art_values, "uniform_block_fraction_shown") > feature(photo_values, "uniform_block_fraction_shown")


def test_lines_of_text_alternate_between_ink_rows_and_gaps():
    page = Image.new("RGB", (200, 200), "white")
    draw = ImageDraw.Draw(page)
    for y in range(10, 190, 20):
        draw.text((10, y), "the quick brown fox jumps", fill="black")
    block = Image.new("RGB", (200, 200), "white")
    ImageDraw.Draw(block).rectangle([40, 40, 160, 160], fill="black")
    assert feature(colour_features(page), "ink_row_transitions_shown") > 4 * feature(
        colour_features(block), "ink_row_transitions_shown"
    )


def test_generation_is_deterministic_and_labelled_by_kind():
    first, second = generate(2, seed=11), generate(2, seed=11)
    assert len(first) == 2 * len(GENERATORS)
    for a, b in zip(first, second, strict=True):
        assert a.image.tobytes() == b.image.tobytes()
        assert a.source_package == SYNTHETIC_PREFIX + a.kind
        assert a.label == (0 if a.kind.endswith(("-dark", "-light-ink")) else 1)
    assert generate(1, seed=12)[0].image.tobytes() != first[0].image.tobytes()


def test_dark_ink_icons_vanish_on_the_dark_page():
    icon = icon_dark_ink(random.Random(1)).image
    assert icon.mode == "RGBA"
    assert feature(colour_features(icon), "low_contrast_fraction_dark") > 0.9
