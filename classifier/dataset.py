"""The labelled image set: `labels.csv` plus an images folder, as shipped in `classifier/dataset/`."""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

#: The development set copied from ../shared/dataset (kept out of the wheel).
DEFAULT_DATASET_DIR = Path(__file__).resolve().parent / "dataset"
REQUIRED_COLUMNS = ("file", "label", "source_package")


@dataclass(frozen=True, slots=True)
class LabelledImage:
    file: str
    path: Path
    label: int  # 1 invert, 0 do not invert
    source_package: str
    category: str
    alpha_fraction: float


class DatasetError(ValueError):
    """A labels file or images folder that cannot be used."""


def read_labels(labels_csv: Path, images_dir: Path) -> list[LabelledImage]:
    """Labelled rows of `labels_csv`; rows with an empty label (ambiguous) are skipped.

    Every listed image must exist: a silently shrunken training set is worse than an error.
    """
    try:
        with labels_csv.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            missing = [column for column in REQUIRED_COLUMNS if column not in (reader.fieldnames or ())]
            if missing:
                raise DatasetError(f"{labels_csv}: missing column(s) {', '.join(missing)}")
            rows = list(reader)
    except OSError as error:
        raise DatasetError(f"cannot read {labels_csv}: {error.strerror}") from error

    images: list[LabelledImage] = []
    for line, row in enumerate(rows, start=2):
        label = (row.get("label") or "").strip()
        if not label:
            continue
        if label not in ("0", "1"):
            raise DatasetError(f"{labels_csv}:{line}: label must be 0, 1 or empty, not {label!r}")
        path = images_dir / row["file"]
        if not path.is_file():
            raise DatasetError(f"{labels_csv}:{line}: image {path} does not exist")
        images.append(
            LabelledImage(
                file=row["file"],
                path=path,
                label=int(label),
                source_package=row.get("source_package") or "unknown",
                category=row.get("category") or "",
                alpha_fraction=float(row.get("alpha_fraction") or 0.0),
            )
        )
    if not images:
        raise DatasetError(f"{labels_csv}: no labelled rows")
    return images


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def training_set_hash(items: Iterable[tuple[str, int]]) -> str:
    """A stable hash of (image sha256, label) pairs: the manifest's proof of what a model was fit on."""
    digest = hashlib.sha256()
    for sha256, label in sorted(items):
        digest.update(f"{sha256}:{label}\n".encode())
    return digest.hexdigest()


def groups_of(images: Sequence[LabelledImage]) -> list[str]:
    return [image.source_package for image in images]
