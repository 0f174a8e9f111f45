"""Label-preserving augmentation: more training images that a person would label exactly as the original.

Whether an image should be inverted depends on what it is (ink on a light ground, or a photograph) and how
its colours and transparency sit on a dark page, not on its orientation, framing or exact pixel values. So:

* geometry: horizontal and vertical flips, rotations by 90 degrees, crops keeping most of the picture;
* photometry, kept small so a white ground stays white and a photo stays a photo: a slight colour tint,
  mild Gaussian noise, a light blur;
* composition: two images with the same label side by side (a diagram beside a diagram is still a diagram).

The alpha channel is carried through every step with its meaning intact (a transparent pixel stays
transparent; blur and resizing work in premultiplied alpha so no colour bleeds in from invisible pixels).
All randomness comes from the `random.Random` passed in, so a seed reproduces a training set.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
from PIL import Image, ImageFilter

T = TypeVar("T")

#: Crops keep at least this share of each side (the subject stays in the frame).
MIN_CROP = 0.75
#: Largest tint: the share of a random colour mixed into every pixel (white stays >= 255 * (1 - TINT)).
TINT = 0.06
NOISE_SIGMA = (1.5, 5.0)  # in 0-255 units
BLUR_RADIUS = (0.4, 1.1)  # pixels, on images of a few hundred pixels


def _rgba(image: Image.Image) -> Image.Image:
    return image if image.mode == "RGBA" else image.convert("RGBA")


def flip(image: Image.Image, *, horizontal: bool) -> Image.Image:
    method = Image.Transpose.FLIP_LEFT_RIGHT if horizontal else Image.Transpose.FLIP_TOP_BOTTOM
    return _rgba(image).transpose(method)


def rotate90(image: Image.Image, turns: int) -> Image.Image:
    """Rotate by `turns` quarter turns counter-clockwise (exact: no resampling, no new pixels)."""
    methods = {1: Image.Transpose.ROTATE_90, 2: Image.Transpose.ROTATE_180, 3: Image.Transpose.ROTATE_270}
    turns %= 4
    return _rgba(image) if turns == 0 else _rgba(image).transpose(methods[turns])


def crop(image: Image.Image, rng: random.Random, *, keep: float = MIN_CROP) -> Image.Image:
    """A random window keeping between `keep` and all of each side."""
    image = _rgba(image)
    width = max(1, round(image.width * rng.uniform(keep, 1.0)))
    height = max(1, round(image.height * rng.uniform(keep, 1.0)))
    left = rng.randint(0, image.width - width)
    top = rng.randint(0, image.height - height)
    return image.crop((left, top, left + width, top + height))


def tint(image: Image.Image, rng: random.Random, *, strength: float = TINT) -> Image.Image:
    """Mix a little of a random colour into every visible pixel (like a scan on slightly coloured paper)."""
    image = _rgba(image)
    pixels = np.asarray(image, dtype=np.float32)
    colour = np.array([rng.uniform(0, 255) for _ in range(3)], dtype=np.float32)
    share = rng.uniform(0.3, 1.0) * strength
    pixels[..., :3] = pixels[..., :3] * (1.0 - share) + colour * share
    return Image.fromarray(np.clip(pixels + 0.5, 0, 255).astype(np.uint8), "RGBA")


def add_noise(image: Image.Image, rng: random.Random, *, sigma: tuple[float, float] = NOISE_SIGMA) -> Image.Image:
    """Gaussian noise on the colour channels (sensor or compression noise); alpha untouched."""
    image = _rgba(image)
    pixels = np.asarray(image, dtype=np.float32).copy()
    generator = np.random.default_rng(rng.getrandbits(64))
    pixels[..., :3] += generator.normal(0.0, rng.uniform(*sigma), size=pixels[..., :3].shape)
    return Image.fromarray(np.clip(pixels + 0.5, 0, 255).astype(np.uint8), "RGBA")


def blur(image: Image.Image, rng: random.Random, *, radius: tuple[float, float] = BLUR_RADIUS) -> Image.Image:
    """A light Gaussian blur, in premultiplied alpha so invisible pixels' colours do not bleed in."""
    premultiplied = _rgba(image).convert("RGBa")
    return premultiplied.filter(ImageFilter.GaussianBlur(rng.uniform(*radius))).convert("RGBA")


def concatenate(first: Image.Image, second: Image.Image) -> Image.Image:
    """The two images side by side (or stacked, for wide ones), the second scaled to fit exactly: no padding,
    so no background is invented that neither image had."""
    first, second = _rgba(first), _rgba(second)
    if first.width >= first.height:  # wide: stack, to keep the result's aspect ratio moderate
        size = (first.width, max(1, round(second.height * first.width / second.width)))
        canvas = Image.new("RGBA", (first.width, first.height + size[1]))
        offset = (0, first.height)
    else:
        size = (max(1, round(second.width * first.height / second.height)), first.height)
        canvas = Image.new("RGBA", (first.width + size[0], first.height))
        offset = (first.width, 0)
    scaled = second.convert("RGBa").resize(size, Image.Resampling.BILINEAR).convert("RGBA")
    canvas.paste(first, (0, 0))
    canvas.paste(scaled, offset)
    return canvas


_GEOMETRIC: tuple[Callable[[Image.Image, random.Random], Image.Image], ...] = (
    lambda image, rng: flip(image, horizontal=True),
    lambda image, rng: flip(image, horizontal=False),
    lambda image, rng: rotate90(image, rng.randint(1, 3)),
    crop,
)
_PHOTOMETRIC: tuple[Callable[[Image.Image, random.Random], Image.Image], ...] = (tint, add_noise, blur)


def augment(image: Image.Image, rng: random.Random) -> Image.Image:
    """One random variant: a geometric change, then, half of the time, a small photometric one."""
    variant = rng.choice(_GEOMETRIC)(image, rng)
    if rng.random() < 0.5:
        variant = rng.choice(_PHOTOMETRIC)(variant, rng)
    return variant


@dataclass(frozen=True)
class Augmented:
    image: Image.Image
    label: int
    source: int  # index of the original (for concatenations, of the first one): its CV group applies


def augment_set(
    images: Sequence[Image.Image],
    labels: Sequence[int],
    rng: random.Random,
    *,
    per_image: int = 1,
    concatenations: float = 0.25,
    groups: Sequence[T] | None = None,
) -> list[Augmented]:
    """`per_image` variants of every image, plus `concatenations` x len(images) pairs of same-label images.

    With `groups`, pairs are drawn within one group, so a concatenated image never mixes two sources
    (package-grouped CV stays honest when the augmented rows join their first image's group)."""
    if len(images) != len(labels) or (groups is not None and len(groups) != len(images)):
        raise ValueError("images, labels and groups must have the same length")
    augmented = [
        Augmented(augment(image, rng), labels[index], index)
        for index, image in enumerate(images)
        for _ in range(per_image)
    ]
    pools: dict[tuple[int, object], list[int]] = {}
    for index, label in enumerate(labels):
        pools.setdefault((label, None if groups is None else groups[index]), []).append(index)
    pairable = [pool for pool in pools.values() if len(pool) >= 2]
    for _ in range(round(concatenations * len(images)) if pairable else 0):
        pool = rng.choice(pairable)
        first, second = rng.sample(pool, 2)
        augmented.append(Augmented(concatenate(images[first], images[second]), labels[first], first))
    return augmented
