"""Augmentation keeps what decides the label: geometry is exact, photometric changes are small, alpha keeps its
meaning, concatenations pair like with like, and the shipped model still judges clear-cut images the same."""

from __future__ import annotations

import random

import numpy as np
import pytest
from PIL import Image

from classifier.augment import (
    MIN_CROP,
    TINT,
    add_noise,
    augment,
    augment_set,
    blur,
    concatenate,
    crop,
    flip,
    rotate90,
    tint,
)
from classifier.decode import decode_image
from classifier.model import InvertModel, sha256_hex
from tests.conftest import DATASET_IMAGES

PHOTO = "bb6dab709e95fb73.jpg"
DIAGRAM = "cec0396ca436c1bf.png"


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGBA"), dtype=np.int16)


def sample_image(seed: int = 0, size: tuple[int, int] = (40, 24)) -> Image.Image:
    """Random colours with a transparent band, so alpha handling shows."""
    generator = np.random.default_rng(seed)
    data = generator.integers(0, 256, size=(size[1], size[0], 4), dtype=np.uint8)
    data[..., 3] = 255
    data[: size[1] // 3, :, 3] = 0
    return Image.fromarray(data, "RGBA")


def test_flips_and_rotations_are_exact_permutations() -> None:
    image = sample_image()
    assert np.array_equal(pixels(flip(flip(image, horizontal=True), horizontal=True)), pixels(image))
    assert np.array_equal(pixels(flip(image, horizontal=False)), pixels(image)[::-1])
    quarter = rotate90(image, 1)
    assert quarter.size == (image.height, image.width)
    assert np.array_equal(pixels(quarter), np.rot90(pixels(image)))
    assert np.array_equal(pixels(rotate90(rotate90(image, 3), 1)), pixels(image))
    assert (pixels(quarter)[..., 3] == 0).sum() == (pixels(image)[..., 3] == 0).sum()


def test_crops_keep_most_of_the_picture_as_a_window_of_it() -> None:
    image = sample_image(size=(100, 80))
    for seed in range(20):
        cropped = crop(image, random.Random(seed))
        assert MIN_CROP * 100 - 1 <= cropped.width <= 100 and MIN_CROP * 80 - 1 <= cropped.height <= 80
        whole = pixels(image)
        window = pixels(cropped)
        found = [
            (top, left)
            for top in range(whole.shape[0] - window.shape[0] + 1)
            for left in range(whole.shape[1] - window.shape[1] + 1)
            if np.array_equal(whole[top : top + window.shape[0], left : left + window.shape[1]], window)
        ]
        assert found


def test_photometric_changes_are_small_and_leave_alpha_alone() -> None:
    white = Image.new("RGBA", (32, 32), (255, 255, 255, 255))
    for seed in range(10):
        tinted = pixels(tint(white, random.Random(seed)))
        assert tinted[..., :3].min() >= 255 * (1 - TINT) - 1  # a white ground stays white
    image = sample_image()
    noisy = add_noise(image, random.Random(3))
    difference = np.abs(pixels(noisy)[..., :3] - pixels(image)[..., :3])
    assert 0.5 < difference.mean() < 6
    assert np.array_equal(pixels(noisy)[..., 3], pixels(image)[..., 3])
    assert np.array_equal(pixels(add_noise(image, random.Random(3))), pixels(noisy))  # seeded


def test_blur_does_not_bleed_colour_from_invisible_pixels() -> None:
    data = np.zeros((20, 20, 4), dtype=np.uint8)
    data[:, :10] = (255, 0, 0, 0)  # invisible red
    data[:, 10:] = (255, 255, 255, 255)  # opaque white
    blurred = pixels(blur(Image.fromarray(data, "RGBA"), random.Random(1)))
    visible = blurred[..., 3] > 16
    assert (blurred[visible][:, 0] - blurred[visible][:, 1]).max() <= 3  # no pink fringe


def test_concatenation_adds_no_background() -> None:
    tall = Image.new("RGBA", (20, 40), (0, 0, 0, 255))
    other = Image.new("RGBA", (30, 30), (255, 255, 255, 255))
    side_by_side = concatenate(tall, other)
    assert side_by_side.size == (60, 40)
    assert pixels(side_by_side)[..., 3].min() == 255
    assert np.array_equal(pixels(side_by_side)[:, :20], pixels(tall))
    wide = Image.new("RGBA", (40, 20), (0, 0, 0, 255))
    assert concatenate(wide, other).size == (40, 60)


def test_augment_set_pairs_like_with_like_and_is_reproducible() -> None:
    images = [sample_image(seed) for seed in range(8)]
    labels = [0, 0, 1, 1, 0, 1, 0, 1]
    groups = ["a", "a", "a", "a", "b", "b", "b", "b"]
    first = augment_set(images, labels, random.Random(5), per_image=2, concatenations=0.5, groups=groups)
    again = augment_set(images, labels, random.Random(5), per_image=2, concatenations=0.5, groups=groups)
    assert len(first) == 8 * 2 + 4
    assert all(entry.label == labels[entry.source] for entry in first)
    assert [pixels(entry.image).tobytes() for entry in first] == [pixels(entry.image).tobytes() for entry in again]
    for entry in first[16:]:  # concatenations: wider or taller than their first image
        source = images[entry.source]
        assert entry.image.width > source.width or entry.image.height > source.height
    with pytest.raises(ValueError):
        augment_set(images, labels[:3], random.Random(0))


def test_the_shipped_model_judges_augmented_clear_cut_images_like_the_originals(default_model: InvertModel) -> None:
    rng = random.Random(7)
    for name, expected in ((PHOTO, False), (DIAGRAM, True)):
        original = decode_image((DATASET_IMAGES / name).read_bytes())
        variants = [augment(original, rng) for _ in range(6)]
        variants.append(concatenate(original, flip(original, horizontal=True)))
        hashes = [sha256_hex(f"{name}-{index}".encode()) for index in range(len(variants))]
        verdicts = default_model.predict(variants, hashes)
        assert [verdict.invert for verdict in verdicts] == [expected] * len(variants), [v.p_invert for v in verdicts]
