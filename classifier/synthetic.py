"""Synthetic training images whose label follows from how they are drawn.

The development set comes from a few dozen Debian packages; a package with a style nobody else shares
(Graphviz's small shapes, symbolic icons in mid-grey, sheet-music snippets) is hard to get right when
it is held out. These generators draw the *kinds* of picture the label rule in `dataset/README.md`
talks about, in many colours, sizes and backgrounds, so the label is known by construction:

- dark ink, lines and text on white, on a light tint or on transparency: invert (1);
- the same content drawn light on a dark canvas, or light ink on transparency: already reads on a dark
  page, don't invert (0).

Everything is drawn with Pillow and its bundled font from one seed, so the images are regenerated
identically at training time and nothing binary is committed. They are training rows only: metrics
are always computed on the real images.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Callable
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFont

#: Source-package name prefix of the generated rows (each kind is its own group).
SYNTHETIC_PREFIX = "synthetic-"
DEFAULT_PER_KIND = 40
DEFAULT_SEED = 8

RGBA = tuple[int, int, int, int]
# fmt: off
_WORDS = (
    "the", "model", "input", "layer", "output", "signal", "value", "time", "frequency", "error", "sample", "mean",
    "node", "edge", "graph", "state", "process", "data", "flow", "request", "response", "server", "client",
    "cache", "figure", "table", "result", "energy", "density",
)
# fmt: on
_SERIES = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (23, 190, 207))


@dataclass(frozen=True)
class SyntheticImage:
    image: Image.Image
    label: int  # 1 invert, 0 do not invert
    kind: str  # e.g. "plot-light"; the source package is SYNTHETIC_PREFIX + kind
    category: str

    @property
    def source_package(self) -> str:
        return SYNTHETIC_PREFIX + self.kind


def _font(rng: random.Random, low: int = 9, high: int = 18) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=rng.randint(low, high))


def _grey(rng: random.Random, low: int, high: int, alpha: int = 255) -> RGBA:
    value = rng.randint(low, high)
    tint = rng.randint(-6, 6)  # themes use slightly bluish or warm greys
    return (max(0, min(255, value + tint)), value, max(0, min(255, value - tint)), alpha)


def _size(rng: random.Random, low: int = 96, high: int = 384) -> tuple[int, int]:
    width = rng.randint(low, high)
    ratio = rng.choice((0.5, 0.62, 0.75, 1.0, 1.0, 1.33))
    return width, max(32, int(width * ratio))


def _words(rng: random.Random, count: int) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(count))


def _light_canvas(rng: random.Random, size: tuple[int, int]) -> tuple[Image.Image, bool]:
    """White, a light tint, or transparency: all read as 'drawn for a light page'."""
    choice = rng.random()
    if choice < 0.3:
        return Image.new("RGBA", size, (0, 0, 0, 0)), True
    if choice < 0.45:
        return Image.new("RGBA", size, _grey(rng, 236, 250)), False
    return Image.new("RGBA", size, (255, 255, 255, 255)), False


def _dark_canvas(rng: random.Random, size: tuple[int, int]) -> Image.Image:
    if rng.random() < 0.25:
        return Image.new("RGBA", size, (0, 0, 0, 0))
    base = rng.choice(((0, 0, 0), (18, 18, 18), (30, 30, 30), (40, 44, 52), (0, 43, 54), (25, 25, 45)))
    return Image.new("RGBA", size, (*base, 255))


def _plot(rng: random.Random, canvas: Image.Image, ink: RGBA, series_scale: float) -> None:
    """Axes, ticks, labels and a few series: lines, scatter or bars."""
    draw = ImageDraw.Draw(canvas)
    width, height = canvas.size
    left, bottom = int(width * 0.14), int(height * 0.84)
    right, top = int(width * 0.96), int(height * 0.08)
    font = _font(rng, 8, 13)
    if rng.random() < 0.4:  # light grid
        grid = (*ink[:3], 60)
        for step in range(1, 5):
            y = bottom - (bottom - top) * step // 5
            draw.line([(left, y), (right, y)], fill=grid, width=1)
    draw.line([(left, top), (left, bottom), (right, bottom)], fill=ink, width=rng.choice((1, 1, 2)))
    for step in range(6):
        x = left + (right - left) * step // 5
        draw.line([(x, bottom), (x, bottom + 3)], fill=ink)
        draw.text((x - 4, bottom + 4), str(step * rng.choice((1, 2, 5, 10))), fill=ink, font=font)
    style = rng.choice(("line", "line", "scatter", "bars"))
    for index in range(rng.randint(1, 4)):
        colour = _scaled(rng.choice(_SERIES) if rng.random() < 0.8 else ink[:3], series_scale)
        phase, frequency = rng.uniform(0, 6), rng.uniform(0.5, 3)
        points = [
            (
                left + (right - left) * i / 60,
                bottom
                - (bottom - top) * (0.5 + 0.4 * math.sin(phase + frequency * i / 10) * math.exp(-index * i / 200)),
            )
            for i in range(61)
        ]
        if style == "line":
            draw.line(points, fill=colour, width=rng.choice((1, 2, 2, 3)))
        elif style == "scatter":
            for point_x, point_y in points[:: rng.randint(1, 3)]:
                jittered = point_y + rng.uniform(-8, 8)
                draw.ellipse([point_x - 2, jittered - 2, point_x + 2, jittered + 2], fill=colour)
        else:
            bar_width = (right - left) / 12
            for bar in range(10):
                bar_left = left + bar_width * (bar + 0.5 + 0.25 * index)
                bar_top = points[bar * 6][1]
                draw.rectangle([bar_left, bar_top, bar_left + bar_width / 2, bottom - 1], fill=colour)
    if rng.random() < 0.6:
        draw.text((width // 3, 2), _words(rng, 3), fill=ink, font=font)


def _scaled(colour: tuple[int, int, int], scale: float) -> RGBA:
    # Dark styles brighten series colours (as matplotlib's dark_background style and dark themes do).
    if scale == 1.0:
        return (*colour, 255)
    red, green, blue = (min(255, int(c * scale + 60)) for c in colour)
    return (red, green, blue, 255)


def _text(rng: random.Random, canvas: Image.Image, ink: RGBA) -> None:
    """A block of text lines, sometimes with a formula-like line and indentation."""
    draw = ImageDraw.Draw(canvas)
    font = _font(rng)
    size = font.size if isinstance(font, ImageFont.FreeTypeFont) else 11
    y = rng.randint(2, 10)
    while y < canvas.height - size:
        indent = rng.choice((4, 4, 4, 20))
        line = _words(rng, rng.randint(2, 9))
        if rng.random() < 0.15:
            line = f"f(x) = {rng.randint(2, 9)}x^{rng.randint(2, 4)} + {rng.randint(1, 9)} / (1 + e^-x)"
        draw.text((indent, y), line, fill=ink, font=font)
        y += int(size * rng.uniform(1.3, 1.8))


def _diagram(rng: random.Random, canvas: Image.Image, ink: RGBA, fills: list[RGBA]) -> None:
    """Boxes and ellipses with labels, joined by arrows (Graphviz-, UML- and flowchart-like)."""
    draw = ImageDraw.Draw(canvas)
    width, height = canvas.size
    font = _font(rng, 8, 14)
    nodes = []
    for _ in range(rng.randint(2, 7)):
        w, h = rng.randint(width // 6, width // 3), rng.randint(height // 8, height // 4)
        x, y = rng.randint(2, max(3, width - w - 2)), rng.randint(2, max(3, height - h - 2))
        nodes.append((x + w // 2, y + h // 2))
        shape = draw.ellipse if rng.random() < 0.4 else draw.rectangle
        shape([x, y, x + w, y + h], fill=rng.choice(fills), outline=ink, width=rng.choice((1, 1, 2)))
        draw.text((x + 4, y + h // 2 - 6), rng.choice(_WORDS), fill=ink, font=font)
    for (x0, y0), (x1, y1) in itertools.pairwise(nodes):
        draw.line([(x0, y0), (x1, y1)], fill=ink, width=1)
        angle = math.atan2(y1 - y0, x1 - x0)
        tip = [
            (x1, y1),
            (x1 - 8 * math.cos(angle - 0.4), y1 - 8 * math.sin(angle - 0.4)),
            (x1 - 8 * math.cos(angle + 0.4), y1 - 8 * math.sin(angle + 0.4)),
        ]
        draw.polygon(tip, fill=ink)


def _icon(rng: random.Random, ink: RGBA) -> Image.Image:
    """A symbolic icon: a few solid shapes and strokes in one colour on transparency."""
    side = rng.choice((16, 22, 24, 32, 48, 64, 96, 128, 256))
    scale = 4  # drawn large and downsampled: antialiased edges like real icon renderings
    big = side * scale
    image = Image.new("RGBA", (big, big), (0, 0, 0, 0))
    draw = ImageDraw.Draw(image)
    for _ in range(rng.randint(1, 4)):
        x0, y0 = rng.randint(0, big // 2), rng.randint(0, big // 2)
        x1, y1 = rng.randint(x0 + big // 6, big - 1), rng.randint(y0 + big // 6, big - 1)
        shape = rng.choice(("rect", "ellipse", "ring", "line", "polygon"))
        if shape == "rect":
            draw.rounded_rectangle([x0, y0, x1, y1], radius=big // 12, fill=ink)
        elif shape == "ellipse":
            draw.ellipse([x0, y0, x1, y1], fill=ink)
        elif shape == "ring":
            draw.ellipse([x0, y0, x1, y1], outline=ink, width=max(2, big // 12))
        elif shape == "line":
            draw.line([(x0, y0), (x1, y1)], fill=ink, width=max(2, big // 10))
        else:
            draw.polygon([(x0, y1), ((x0 + x1) // 2, y0), (x1, y1)], fill=ink)
    return image.resize((side, side), Image.Resampling.LANCZOS)


Generator = Callable[[random.Random], SyntheticImage]


def plot_light(rng: random.Random) -> SyntheticImage:
    canvas, _ = _light_canvas(rng, _size(rng, 160))
    _plot(rng, canvas, _grey(rng, 0, 70), 1.0)
    return SyntheticImage(canvas, 1, "plot-light", "plot")


def plot_dark(rng: random.Random) -> SyntheticImage:
    canvas = _dark_canvas(rng, _size(rng, 160))
    _plot(rng, canvas, _grey(rng, 190, 255), rng.uniform(0.8, 1.1))
    return SyntheticImage(canvas, 0, "plot-dark", "dark-plot")


def text_light(rng: random.Random) -> SyntheticImage:
    canvas, _ = _light_canvas(rng, _size(rng, 64))
    _text(rng, canvas, _grey(rng, 0, 80))
    return SyntheticImage(canvas, 1, "text-light", "text")


def text_dark(rng: random.Random) -> SyntheticImage:
    canvas = _dark_canvas(rng, _size(rng, 64))
    ink = _grey(rng, 180, 255) if rng.random() < 0.7 else (*rng.choice(_SERIES), 255)
    _text(rng, canvas, ink)
    return SyntheticImage(canvas, 0, "text-dark", "screenshot")


def diagram_light(rng: random.Random) -> SyntheticImage:
    canvas, _ = _light_canvas(rng, _size(rng, 80))
    pastel = [(255, 255, 255, 255), (0, 0, 0, 0), *(_grey(rng, 200, 240) for _ in range(2))]
    pastel += [(min(255, c + 140), min(255, g + 140), min(255, b + 140), 255) for c, g, b in _SERIES[:4]]
    _diagram(rng, canvas, _grey(rng, 0, 60), pastel)
    return SyntheticImage(canvas, 1, "diagram-light", "diagram")


def diagram_dark(rng: random.Random) -> SyntheticImage:
    canvas = _dark_canvas(rng, _size(rng, 80))
    fills = [(0, 0, 0, 0), _grey(rng, 30, 70), *((c // 3, g // 3, b // 3, 255) for c, g, b in _SERIES[:4])]
    _diagram(rng, canvas, _grey(rng, 190, 255), fills)
    return SyntheticImage(canvas, 0, "diagram-dark", "diagram")


def icon_dark_ink(rng: random.Random) -> SyntheticImage:
    # Symbolic icons are drawn in dark to mid greys (#2e3436, #474747, ...): barely visible on #121212.
    return SyntheticImage(_icon(rng, _grey(rng, 20, 95)), 1, "icon-dark-ink", "icon")


def icon_light_ink(rng: random.Random) -> SyntheticImage:
    return SyntheticImage(_icon(rng, _grey(rng, 190, 255)), 0, "icon-light-ink", "icon")


GENERATORS: dict[str, Generator] = {
    "plot-light": plot_light,
    "plot-dark": plot_dark,
    "text-light": text_light,
    "text-dark": text_dark,
    "diagram-light": diagram_light,
    "diagram-dark": diagram_dark,
    "icon-dark-ink": icon_dark_ink,
    "icon-light-ink": icon_light_ink,
}


def generate(
    per_kind: int = DEFAULT_PER_KIND, *, seed: int = DEFAULT_SEED, kinds: tuple[str, ...] | None = None
) -> list[SyntheticImage]:
    """`per_kind` images of every kind, identical for the same arguments."""
    images: list[SyntheticImage] = []
    for kind in kinds or tuple(GENERATORS):
        rng = random.Random(f"{seed}:{kind}")  # per kind: adding a kind does not change the others
        images.extend(GENERATORS[kind](rng) for _ in range(per_kind))
    return images
