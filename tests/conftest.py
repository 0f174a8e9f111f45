"""Shared fixtures: the labelled dev set, the shipped model, and a small model trained by the real CLI."""

from __future__ import annotations

import csv
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from classifier.dataset import DEFAULT_DATASET_DIR, LabelledImage, read_labels
from classifier.model import InvertModel

DATASET_LABELS = DEFAULT_DATASET_DIR / "labels.csv"
DATASET_IMAGES = DEFAULT_DATASET_DIR / "images"
# A few packages of contrasting content, enough for a grouped CV of 3+ folds in seconds.
SMALL_SET_PACKAGES = ("graphviz-doc", "gnome-backgrounds", "adwaita-icon-theme", "wesnoth-1.16-data", "lilypond-doc")
SMALL_SET_PER_PACKAGE = 14


def run_cli(*args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Run the installed `invertornot` entry point the way a user does."""
    command = [sys.executable, "-m", "proxy.cli", *args]
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(
            f"{command} exited {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
        )
    return result


@pytest.fixture(scope="session")
def dataset() -> list[LabelledImage]:
    return read_labels(DATASET_LABELS, DATASET_IMAGES)


@pytest.fixture(scope="session")
def default_model() -> InvertModel:
    return InvertModel.load()


@pytest.fixture(scope="session")
def small_set(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A labels.csv + images folder with a few dozen dev-set images from a few packages."""
    root = tmp_path_factory.mktemp("small-set")
    images = root / "images"
    images.mkdir()
    with DATASET_LABELS.open(newline="") as handle:
        reader = csv.DictReader(handle)
        fieldnames = reader.fieldnames
        rows = list(reader)
    chosen: list[dict[str, str]] = []
    for package in SMALL_SET_PACKAGES:
        chosen.extend(
            [row for row in rows if row["source_package"] == package and row["label"]][:SMALL_SET_PER_PACKAGE]
        )
    assert fieldnames is not None
    with (root / "labels.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fieldnames)
        writer.writeheader()
        writer.writerows(chosen)
    for row in chosen:
        shutil.copy(DATASET_IMAGES / row["file"], images / row["file"])
    return root / "labels.csv", images


@pytest.fixture(scope="session")
def small_model_dir(small_set: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model trained on `small_set` through `invertornot train`."""
    labels, images = small_set
    out = tmp_path_factory.mktemp("small-model") / "model"
    result = run_cli("train", "--labels", str(labels), "--images", str(images), "--out", str(out))
    assert "package-grouped" in result.stdout
    return out
