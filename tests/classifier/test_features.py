import numpy as np
from PIL import Image, ImageDraw

from classifier.features import FEATURE_NAMES, colour_features


def feature(values, name):
    return float(values[FEATURE_NAMES.index(name)])


def line_art(ink, size=(200, 120), background=(0, 0, 0, 0)):
    image = Image.new("RGBA", size, background)
    draw = ImageDraw.Draw(image)
    for offset in range(0, 200, 20):
        draw.line([(offset, 0), (200 - offset, 119)], fill=ink, width=3)
    draw.text((10, 10), "y = f(x)", fill=ink)
    return image


def test_one_value_per_name_and_finite():
    values = colour_features(Image.new("RGB", (1, 1), "white"))
    assert values.shape == (len(FEATURE_NAMES),)
    assert np.isfinite(values).all()


def test_black_ink_on_transparency_vanishes_on_the_dark_page():
    values = colour_features(line_art((0, 0, 0, 255)))
    # Over white it is dark-on-light line art; over the dark page nearly everything is near-black.
    assert feature(values, "near_white_fraction_white") > 0.6
    assert feature(values, "near_black_fraction_dark") > 0.95
    assert feature(values, "visible_dark_ink_fraction") > 0.9


def test_light_icon_on_transparency_stands_out_on_the_dark_page():
    values = colour_features(line_art((240, 240, 240, 255)))
    assert feature(values, "visible_light_fraction") > 0.9
    assert feature(values, "visible_dark_ink_fraction") == 0.0
    assert feature(values, "near_black_fraction_dark") < 0.95


def test_opaque_images_look_the_same_on_both_pages():
    rng = np.random.default_rng(1)
    photo = Image.fromarray(rng.integers(0, 255, size=(64, 96, 3), dtype=np.uint8))
    values = colour_features(photo)
    assert feature(values, "transparent_fraction") == 0.0
    assert feature(values, "lightness_mean_white") == feature(values, "lightness_mean_dark")
    assert feature(values, "saturation_mean_white") > 0.2


def test_opaque_shortcuts_give_the_values_of_the_general_path():
    # Opaque images skip the alpha band, the premultiplied resize and the second background pass;
    # each shortcut must give exactly what the general RGBA path gives.
    from classifier.features import (
        _PER_BACKGROUND,
        DARK_PAGE_RGB,
        WHITE_RGB,
        _background_statistics,
        composite,
        thumbnail_bytes,
    )

    rng = np.random.default_rng(2)
    photo = Image.fromarray(rng.integers(0, 255, size=(150, 230, 3), dtype=np.uint8)).resize((460, 300))
    shortcut = thumbnail_bytes(photo)
    general = thumbnail_bytes(photo.convert("RGBA"))  # an RGBA image takes the premultiplied resize
    assert shortcut.shape == general.shape == (42, 64, 4)
    assert np.array_equal(shortcut, general)

    values = colour_features(photo)
    rgba = general.astype(np.float32) / 255.0
    for name, page in (("white", WHITE_RGB), ("dark", DARK_PAGE_RGB)):
        expected, _ = _background_statistics(composite(rgba, page))
        got = [feature(values, f"{stat}_{name}") for stat in _PER_BACKGROUND]
        np.testing.assert_allclose(got, expected[: len(_PER_BACKGROUND)], rtol=1e-6, atol=1e-7)
    assert np.array_equal(colour_features(photo.convert("RGBA")), values)
