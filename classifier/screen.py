"""The colour screen: a forest on colour statistics alone that answers the images whose colours decide.

Most images are easy: a photograph, a text page, a plot on white, black ink on transparency. For them the
colour statistics (cheap: a 64 px thumbnail) give the same verdict as the whole model, and running the
backbone (about half of an image's CPU time) changes nothing. The screen is a second forest trained on the
colour features only; where its p_invert is at or below `below`, or at or above `above`, its answer is
final and the backbone is skipped. Only images in between go on to the full model.

The bounds are chosen on package-grouped cross-validation (see `choose_bounds`): as wide as possible
while the screen's decisions change none of the full model's out-of-fold "don't invert" verdicts into
"invert" (the costly mistake) and at most a tiny share the other way. They
always bracket the model's threshold (`below < threshold <= above`), so "p_invert >= threshold means
invert" holds for every answer, wherever it came from.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from classifier.forest import PackedForest

SCREEN_FILE = "screen.npz"
#: At most this share of the full model's cross-validated "invert" verdicts may the screen turn into
#: "don't invert". The other way round no change is allowed: scored on two batches no model had seen, the
#: few verdicts a 0.001 budget let the screen turn into "invert" were mostly new false inverts, while
#: its "don't invert" answers were right (see README, "Colour screen").
MAX_CHANGED_SHARE = 0.001
#: Candidate bounds, coarse on purpose: a bound tuned to the last image would be noise.
#: Bounds that no probability reaches: the screen never decides on that side.
NEVER_BELOW = -1.0
NEVER_ABOVE = 2.0
_BELOW_GRID = tuple(round(value, 2) for value in np.arange(0.0, 0.5, 0.02))
ABOVE_GRID = tuple(round(value, 2) for value in np.arange(1.0, 0.5, -0.02))


@dataclass(frozen=True)
class ColourScreen:
    forest: PackedForest
    below: float
    above: float

    def __post_init__(self) -> None:
        if not NEVER_BELOW <= self.below < self.above <= NEVER_ABOVE:
            raise ValueError(f"screen bounds must satisfy below < above, got {self.below}, {self.above}")

    def decide(self, colours: NDArray[np.float32]) -> tuple[NDArray[np.float64], NDArray[np.bool_]]:
        """The screen's p_invert for each row, and which rows it decides (the others need the full model)."""
        p_invert = self.forest.predict_proba(colours) if len(colours) else np.zeros(0)
        return p_invert, decided(p_invert, self)

    def to_json(self) -> dict[str, Any]:
        return {"below": self.below, "above": self.above, "n_features": self.forest.n_features}

    def save(self, directory: Path) -> None:
        self.forest.save(directory / SCREEN_FILE)

    @classmethod
    def load(cls, directory: Path, bounds: dict[str, Any]) -> ColourScreen:
        return cls(PackedForest.load(directory / SCREEN_FILE), float(bounds["below"]), float(bounds["above"]))


@dataclass(frozen=True)
class ScreenBounds:
    below: float
    above: float
    decided_share: float  # of the cross-validated images, the share the screen answers
    changed: int  # verdicts that differ from the full model's at its threshold


def choose_bounds(
    screen_p: NDArray[np.float64],
    model_p: NDArray[np.float64],
    threshold: float,
    *,
    max_changed_share: float = MAX_CHANGED_SHARE,
) -> ScreenBounds:
    """The widest bounds that keep the model's verdicts: none turned into "invert", at most
    `max_changed_share` of all turned into "don't invert".

    `screen_p` and `model_p` are out-of-fold probabilities from the same package-grouped folds, so the
    bounds are judged on packages neither forest saw.
    """
    model_invert = model_p >= threshold
    budget = max_changed_share * len(model_p)
    below = NEVER_BELOW
    for candidate in _BELOW_GRID:
        if candidate >= threshold:
            break
        if int(np.count_nonzero(model_invert & (screen_p <= candidate))) > budget:
            break
        below = candidate
    above = NEVER_ABOVE
    for candidate in ABOVE_GRID:
        if candidate < threshold:
            break
        if np.any(~model_invert & (screen_p >= candidate)):
            break
        above = candidate
    return counted_bounds(screen_p, model_p, threshold, below, above)


def counted_bounds(
    screen_p: NDArray[np.float64], model_p: NDArray[np.float64], threshold: float, below: float, above: float
) -> ScreenBounds:
    """``below`` / ``above`` with the share of images the screen answers and the verdicts it changes."""
    bounds = ScreenBounds(below, above, 0.0, 0)
    answered = decided(screen_p, bounds)
    changed = int(np.count_nonzero(answered & ((screen_p >= above) != (model_p >= threshold))))
    share = float(answered.mean()) if len(answered) else 0.0
    return ScreenBounds(below, above, share, changed)


def decided(screen_p: NDArray[np.float64], bounds: ScreenBounds | ColourScreen) -> NDArray[np.bool_]:
    """Where the screen's answer is final: at or below `below`, or at or above `above`."""
    return (screen_p <= bounds.below) | (screen_p >= bounds.above)


def combine(
    screen_p: NDArray[np.float64], model_p: NDArray[np.float64], bounds: ScreenBounds | ColourScreen
) -> NDArray[np.float64]:
    """The cascade's p_invert: the screen's where it decides, the model's elsewhere."""
    return np.where(decided(screen_p, bounds), screen_p, model_p)
