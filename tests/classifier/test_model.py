from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from classifier.dataset import read_labels
from classifier.decode import ImageError
from classifier.features import FEATURE_NAMES
from classifier.model import (
    DEFAULT_MODEL_DIR,
    FOREST_FILE,
    PROBE_FILE,
    InvertModel,
    LinearProbe,
    ModelError,
    read_manifest,
    sha256_hex,
)
from classifier.train import fit_probe
from tests.helpers import copy_model, edit_manifest, encode_png


def drawing(ink: tuple[int, int, int, int], background: tuple[int, int, int, int] = (0, 0, 0, 0)) -> Image.Image:
    """A line-art figure: axes, a curve, grid lines and labels, like an equation plot exported with transparency."""
    image = Image.new("RGBA", (320, 240), background)
    draw = ImageDraw.Draw(image)
    draw.line([(30, 210), (300, 210)], fill=ink, width=2)
    draw.line([(30, 210), (30, 20)], fill=ink, width=2)
    points = [(30 + x, 210 - int(180 * (x / 270) ** 2)) for x in range(0, 271, 5)]
    draw.line(points, fill=ink, width=3)
    for x in range(60, 300, 40):
        draw.line([(x, 205), (x, 215)], fill=ink, width=2)
        draw.text((x - 6, 218), str(x // 40), fill=ink)
    draw.text((200, 40), "y = x^2", fill=ink)
    return image


def test_manifest_describes_the_model(default_model: InvertModel) -> None:
    manifest = default_model.manifest
    assert manifest.backbone.startswith("effnet-lite0")
    assert manifest.feature_names == list(FEATURE_NAMES)
    assert manifest.version.startswith("effnet-lite0-")
    assert 0.5 <= manifest.threshold < 1.0
    assert manifest.metrics["grouped_cv"]["false_invert_rate"] <= 0.02
    assert len(manifest.training_set_hash) == 64
    # The shipped model must stay small enough to live inside the wheel.
    size = sum(path.stat().st_size for path in DEFAULT_MODEL_DIR.iterdir())
    assert size <= 20 * 2**20


def test_default_model_fits_the_whole_training_set(default_model: InvertModel, dataset) -> None:
    wrong = []
    for start in range(0, len(dataset), 64):
        batch = dataset[start : start + 64]
        verdicts = default_model.classify_bytes([item.path.read_bytes() for item in batch])
        wrong.extend(
            item.file for item, verdict in zip(batch, verdicts, strict=True) if verdict.invert != bool(item.label)
        )
    assert wrong == []
    assert len(dataset) == default_model.manifest.n_training_images


def test_black_ink_and_light_icon_on_transparency_get_opposite_verdicts(default_model: InvertModel) -> None:
    black_ink = encode_png(drawing((0, 0, 0, 255)))
    light_ink = encode_png(drawing((235, 235, 235, 255)))
    black, light = default_model.classify_bytes([black_ink, light_ink])
    assert not isinstance(black, ImageError) and not isinstance(light, ImageError)
    assert black.invert is True, black
    assert light.invert is False, light


def test_photo_like_noise_is_not_inverted(default_model: InvertModel) -> None:
    rng = np.random.default_rng(7)
    gradient = np.linspace(0, 1, 256)[None, :, None] * np.array([180, 120, 60])[None, None, :]
    pixels = np.clip(gradient + rng.normal(40, 30, size=(192, 256, 3)), 0, 255).astype(np.uint8)
    (verdict,) = default_model.classify_bytes([encode_png(Image.fromarray(pixels))])
    assert not isinstance(verdict, ImageError)
    assert verdict.invert is False


def test_verdict_fields_are_consistent(default_model: InvertModel, dataset) -> None:
    blobs = [item.path.read_bytes() for item in dataset[:8]] + [b"not an image"]
    results = default_model.classify_bytes(blobs)
    assert len(results) == 9
    error = results[-1]
    assert isinstance(error, ImageError) and error.code == "undecodable"
    for verdict in results[:-1]:
        assert not isinstance(verdict, ImageError)
        assert verdict.model == default_model.version
        assert len(verdict.sha256) == 64
        assert verdict.invert == (verdict.p_invert >= default_model.threshold) or verdict.confidence == 1.0
        expected = verdict.p_invert if verdict.invert else 1 - verdict.p_invert
        assert verdict.confidence == pytest.approx(expected, abs=1e-3)


def test_small_model_fits_its_training_set_and_round_trips(small_model_dir: Path, small_set, tmp_path: Path) -> None:
    labels, images = small_set
    model = InvertModel.load(small_model_dir)
    items = read_labels(labels, images)
    blobs = [item.path.read_bytes() for item in items]
    first = model.classify_bytes(blobs)
    assert [v.invert for v in first if not isinstance(v, ImageError)] == [bool(item.label) for item in items]

    again = InvertModel.load(copy_model(small_model_dir, tmp_path / "copy")).classify_bytes(blobs)
    assert [v.p_invert for v in again if not isinstance(v, ImageError)] == [
        v.p_invert for v in first if not isinstance(v, ImageError)
    ]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"feature_names": ["saturation_mean_white"]}, "different colour features"),
        ({"embedding_dim": 512}, "2176-d"),
        ({"backbone": "effnet-lite0@192"}, "effnet-lite0@192"),
        ({"format": 99}, "format"),
        ({"unexpected_field": 1}, "fields do not match"),
        ({"embedding_inputs": "pca"}, "embedding_inputs"),
    ],
)
def test_mismatched_manifest_is_refused(small_model_dir: Path, tmp_path: Path, change, message) -> None:
    directory = copy_model(small_model_dir, tmp_path / "model")
    edit_manifest(directory, **change)
    with pytest.raises((ModelError, ValueError), match=message):
        InvertModel.load(directory)


def test_probe_scores_each_part_with_its_own_regression(tmp_path: Path) -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(7)
    labels = np.tile([0, 1], 60)
    embeddings = rng.normal(size=(120, 10)).astype(np.float32)
    embeddings[:, 2] += 2 * labels  # part 0 carries the label in one column,
    embeddings[:, 8] -= 3 * labels  # part 1 in another, with the opposite sign
    probe = fit_probe(embeddings, labels, (6, 4))
    assert probe.parts == (6, 4) and probe.weights.shape == (10,) and probe.bias.shape == (2,)
    scores = probe.score(embeddings)
    assert scores.shape == (120, 2)
    for column, part in enumerate((slice(0, 6), slice(6, 10))):
        alone = make_pipeline(StandardScaler(), LogisticRegression(C=0.003, max_iter=5000))
        expected = alone.fit(embeddings[:, part], labels).predict_proba(embeddings[:, part])[:, 1]
        assert np.allclose(scores[:, column], expected, atol=1e-5)
    assert scores[labels == 1, 0].mean() > scores[labels == 0, 0].mean()
    assert scores[labels == 1, 1].mean() > scores[labels == 0, 1].mean()

    LinearProbe.save(probe, tmp_path / "two.npz")
    again = LinearProbe.load(tmp_path / "two.npz")
    assert again.parts == (6, 4) and np.array_equal(again.score(embeddings), scores)
    # A one-part probe keeps the original file layout (a scalar bias, no parts), which loads as one part.
    single = fit_probe(embeddings, labels)
    single.save(tmp_path / "one.npz")
    with np.load(tmp_path / "one.npz") as arrays:
        assert set(arrays.files) == {"mean", "scale", "weights", "bias"} and arrays["bias"].shape == ()
    assert LinearProbe.load(tmp_path / "one.npz").parts == (10,)
    with pytest.raises(ValueError, match="do not fit parts"):
        LinearProbe(probe.mean, probe.scale, probe.weights, probe.bias, (6, 3))


def test_probe_parts_must_match_the_backbone(small_model_dir: Path, tmp_path: Path) -> None:
    """A probe over the whole 2176-d embedding where the backbone gives two parts is refused on load."""
    directory = copy_model(small_model_dir, tmp_path / "model")
    probe = LinearProbe.load(directory / PROBE_FILE)
    assert len(probe.parts) == 2
    merged = LinearProbe(probe.mean, probe.scale, probe.weights, probe.bias[:1], (int(probe.weights.size),))
    merged.save(directory / PROBE_FILE)
    files = read_manifest(directory).files
    edit_manifest(directory, files={**files, PROBE_FILE: sha256_hex((directory / PROBE_FILE).read_bytes())})
    with pytest.raises(ModelError, match=r"parts \[2176\].*gives \[1280, 896\]"):
        InvertModel.load(directory)


def test_corrupt_or_missing_files_are_refused(small_model_dir: Path, tmp_path: Path) -> None:
    corrupt = copy_model(small_model_dir, tmp_path / "corrupt")
    (corrupt / FOREST_FILE).write_bytes(b"garbage")
    with pytest.raises(ModelError, match="does not match the manifest"):
        InvertModel.load(corrupt)

    missing = copy_model(small_model_dir, tmp_path / "missing")
    (missing / FOREST_FILE).unlink()
    with pytest.raises(ModelError, match="missing"):
        InvertModel.load(missing)

    with pytest.raises(ModelError, match="not a model directory"):
        InvertModel.load(tmp_path)


def test_serving_path_does_not_import_torch() -> None:
    code = (
        "import sys\n"
        "from classifier.model import InvertModel\n"
        "model = InvertModel.load()\n"
        "from classifier.dataset import DEFAULT_DATASET_DIR\n"
        "blob = next((DEFAULT_DATASET_DIR / 'images').iterdir()).read_bytes()\n"
        "assert model.classify_bytes([blob])\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "assert 'sklearn' not in sys.modules, 'sklearn was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
