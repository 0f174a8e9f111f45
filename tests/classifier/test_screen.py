from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from classifier.decode import decode_image
from classifier.features import colour_features
from classifier.metrics import binary_metrics
from classifier.model import MANIFEST_FILE, InvertModel, ModelError
from classifier.screen import (
    NEVER_ABOVE,
    NEVER_BELOW,
    SCREEN_FILE,
    ColourScreen,
    choose_bounds,
    combine,
)
from classifier.train import choose_cascade
from tests.helpers import copy_model, edit_manifest


class CountingBackbone:
    """The model's real backbone, counting the images it is asked to embed."""

    def __init__(self, backbone) -> None:
        self.backbone = backbone
        self.input_size = backbone.input_size
        self.dim = backbone.dim
        self.embedded = 0

    def embed(self, images: Sequence[Image.Image]) -> np.ndarray:
        self.embedded += len(images)
        return self.backbone.embed(images)


def test_bounds_widen_until_the_screen_would_change_a_verdict() -> None:
    screen_p = np.array([0.0, 0.05, 0.1, 0.2, 0.3, 0.6, 0.8, 0.9, 0.95, 1.0])
    model_p = np.array([0.1, 0.2, 0.3, 0.8, 0.1, 0.5, 0.9, 0.9, 0.9, 0.9])  # row 3: the model says invert
    bounds = choose_bounds(screen_p, model_p, threshold=0.7, max_changed_share=0.0)
    assert bounds.below == pytest.approx(0.18)  # 0.2 would take row 3 away from the model
    assert bounds.above == pytest.approx(0.7)  # as low as the threshold: everything above agrees
    assert bounds.changed == 0
    assert bounds.decided_share == pytest.approx(0.7)
    combined = combine(screen_p, model_p, bounds)
    assert combined.tolist() == [0.0, 0.05, 0.1, 0.8, 0.1, 0.5, 0.8, 0.9, 0.95, 1.0]


def _cascade_case(screen_says_invert_label: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """1,000 "don't invert" and 200 "invert" images both forests get right, and 50 images where the model
    says "don't invert" (p 0.3) and the colour screen is sure of "invert" (p 0.95)."""
    screen_p = np.concatenate([np.full(1000, 0.1), np.full(200, 0.99), np.full(50, 0.95)])
    model_p = np.concatenate([np.full(1000, 0.1), np.full(200, 0.9), np.full(50, 0.3)])
    labels = np.concatenate([np.zeros(1000), np.ones(200), np.full(50, screen_says_invert_label)]).astype(np.int64)
    return screen_p, model_p, labels


def test_the_cascade_widens_the_invert_side_where_the_screen_is_right() -> None:
    screen_p, model_p, labels = _cascade_case(screen_says_invert_label=1)
    assert choose_bounds(screen_p, model_p, 0.5).above == pytest.approx(0.96)  # the strict rule stops above 0.95
    threshold, bounds = choose_cascade(screen_p, model_p, labels, 0.02)
    assert bounds.below < threshold <= bounds.above < 0.95
    cascade = binary_metrics(combine(screen_p, model_p, bounds), labels, threshold)
    assert cascade.accuracy == 1.0 and cascade.false_invert_rate <= 0.02
    assert bounds.changed == 50 and bounds.decided_share == 1.0


def test_the_cascade_keeps_the_strict_bound_where_the_screen_would_invert_photos() -> None:
    screen_p, model_p, labels = _cascade_case(screen_says_invert_label=0)
    threshold, bounds = choose_cascade(screen_p, model_p, labels, 0.02)
    # Below 0.96 the screen would invert 50 "don't invert" images: the threshold would have to rise past
    # the bound to keep false inverts at 2 %, so the bound stays, and so does the model's threshold.
    assert bounds.above == pytest.approx(0.96)
    assert threshold == pytest.approx(0.5)
    assert bounds.changed == 0


def test_bounds_always_bracket_the_threshold() -> None:
    screen_p = np.linspace(0, 1, 101)
    bounds = choose_bounds(screen_p, screen_p, threshold=0.7)  # the screen agrees with the model everywhere
    assert bounds.below < 0.7 <= bounds.above
    assert bounds.changed == 0


def test_a_screen_that_disagrees_everywhere_decides_nothing() -> None:
    screen_p = np.array([0.0, 0.0, 1.0, 1.0])
    model_p = np.array([0.9, 0.9, 0.1, 0.1])
    bounds = choose_bounds(screen_p, model_p, threshold=0.5, max_changed_share=0.0)
    assert (bounds.below, bounds.above) == (NEVER_BELOW, NEVER_ABOVE)
    assert bounds.decided_share == 0.0
    assert combine(screen_p, model_p, bounds).tolist() == model_p.tolist()


def test_screened_images_skip_the_backbone_and_match_the_offline_cascade(small_model_dir: Path, dataset) -> None:
    model = InvertModel.load(small_model_dir)
    assert model.screen is not None
    # Trained on a few dozen images, the small model's screen decides nearly everything; narrower bounds
    # (still around its threshold) leave work for the backbone, so both paths are exercised.
    assert 0.2 < model.threshold < 0.99
    model.screen = ColourScreen(model.screen.forest, below=0.2, above=(1 + model.threshold) / 2)
    counting = CountingBackbone(model.extractor.backbone)
    model.extractor.backbone = counting
    images = [decode_image(item.path.read_bytes()) for item in dataset[::60]]

    p_invert = model.p_invert(images)

    colours = np.stack([colour_features(image) for image in images])
    _, decided = model.screen.decide(colours)
    assert 0 < decided.sum() < len(images), "the check needs screened and unscreened images"
    assert counting.embedded == int((~decided).sum())
    offline = model.p_invert_from_features(model.extractor.embed(images), colours)
    np.testing.assert_allclose(p_invert, offline, rtol=0, atol=1e-6)


def test_the_shipped_model_screens_most_dataset_images(default_model: InvertModel, dataset) -> None:
    assert default_model.screen is not None
    screen = default_model.manifest.screen
    assert screen["below"] < default_model.threshold <= screen["above"]
    # The cascade may change a few of the full model's verdicts where that costs no accuracy (`choose_cascade`
    # keeps it within 0.2 points): a few per thousand, not more.
    assert screen["cv_changed_verdicts"] <= 0.005 * len(dataset)
    sample = dataset[::25]
    colours = np.stack([colour_features(decode_image(item.path.read_bytes())) for item in sample])
    _, decided = default_model.screen.decide(colours)
    assert decided.mean() >= 0.5


def test_screen_bounds_that_do_not_bracket_the_threshold_are_refused(small_model_dir: Path, tmp_path: Path) -> None:
    directory = copy_model(small_model_dir, tmp_path / "model")
    manifest = json.loads((directory / MANIFEST_FILE).read_text())
    edit_manifest(directory, screen={**manifest["screen"], "above": manifest["threshold"] - 0.01})
    with pytest.raises(ModelError, match="do not bracket the threshold"):
        InvertModel.load(directory)


def test_a_screen_without_its_file_or_bounds_is_refused(small_model_dir: Path, tmp_path: Path) -> None:
    unlisted = copy_model(small_model_dir, tmp_path / "unlisted")
    manifest = json.loads((unlisted / MANIFEST_FILE).read_text())
    files = {name: digest for name, digest in manifest["files"].items() if name != SCREEN_FILE}
    edit_manifest(unlisted, files=files)
    with pytest.raises(ModelError, match=f"does not list {SCREEN_FILE}"):
        InvertModel.load(unlisted)

    no_bounds = copy_model(small_model_dir, tmp_path / "no-bounds")
    edit_manifest(no_bounds, screen={})
    with pytest.raises(ModelError, match="no screen bounds"):
        InvertModel.load(no_bounds)
