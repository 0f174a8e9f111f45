"""The labelled set plus the labels people gave: what `invertornot train --database-url` learns from and what
`invertornot export-labels` releases.

A person's label wins over the dataset's for the same image (same SHA-256); images only people labelled join
the set as source package `corrections`, so package-grouped CV treats them as one more source. Labels whose
image is not stored (a trusted correction by hash alone) cannot be trained on; they are counted, and the
serving store still answers them.
"""

from __future__ import annotations

import asyncio
import csv
import io
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from classifier.dataset import DatasetError, LabelledImage, sha256_file
from classifier.decode import ImageError, decode_image
from proxy.corrections import Label, create_store, iso_time, parse_database_url
from proxy.image_store import ImageStore, extension_of

#: The CV group (and `source_package` in exports) of images that came from corrections and labelling.
CORRECTIONS_PACKAGE = "corrections"
EXTRA_COLUMNS = ("label_source", "labelled_at")


@dataclass(frozen=True)
class PeopleLabels:
    """What the corrections database holds, read once."""

    labels: list[Label]
    urls: dict[str, str]
    images: ImageStore


@dataclass(frozen=True)
class MergedSet:
    images: list[LabelledImage]
    relabelled: int  # dataset images whose label people changed
    confirmed: int  # dataset images people labelled the same
    added: int  # images only people labelled
    unavailable: int  # labels without a stored image (not trainable)

    def summary(self) -> str:
        return (
            f"{len(self.images)} images: {self.added} added and {self.relabelled} relabelled by people "
            f"({self.confirmed} confirmed, {self.unavailable} without a stored image)"
        )


def read_people_labels(database_url: str, images_dir: Path | None = None) -> PeopleLabels:
    """The current label of every image in the database. The file must exist: a typo must not train on nothing."""
    try:
        location = parse_database_url(database_url)
    except ValueError as error:
        raise DatasetError(f"--database-url: {error}") from None
    if location.path is not None and not location.path.is_file():
        raise DatasetError(f"no corrections database at {location.path}")

    async def read() -> PeopleLabels:
        store = create_store(database_url, images_dir=images_dir)
        await store.open()
        try:
            return PeopleLabels(await store.labels(), await store.image_urls(), store.images)
        finally:
            await store.close()

    return asyncio.run(read())


def _added_image(label: Label, path: Path) -> LabelledImage:
    data = path.read_bytes()
    return LabelledImage(
        file=label.sha256[:16] + extension_of(data),
        path=path,
        label=int(label.invert),
        source_package=CORRECTIONS_PACKAGE,
        category="correction",
        alpha_fraction=float(_describe(data)["alpha_fraction"]),
    )


def merge_labels(dataset: Sequence[LabelledImage], people: PeopleLabels) -> MergedSet:
    merged = list(dataset)
    positions: dict[str, list[int]] = {}
    for index, item in enumerate(merged):
        positions.setdefault(sha256_file(item.path), []).append(index)
    relabelled = confirmed = added = unavailable = 0
    for label in people.labels:
        wanted = int(label.invert)
        if label.sha256 in positions:
            for index in positions[label.sha256]:
                if merged[index].label == wanted:
                    confirmed += 1
                else:
                    merged[index] = replace(merged[index], label=wanted)
                    relabelled += 1
            continue
        path = people.images.path(label.sha256)
        if path is None:
            unavailable += 1
            continue
        merged.append(_added_image(label, path))
        added += 1
    return MergedSet(merged, relabelled, confirmed, added, unavailable)


# -- export -------------------------------------------------------------------------------------------------


def _describe(data: bytes) -> dict[str, str]:
    """The dataset's per-image columns for a new image (empty when it cannot be decoded)."""
    try:
        image = decode_image(data, max_side=None)
    except ImageError:
        return {"had_alpha": "", "alpha_fraction": "0", "width": "", "height": ""}
    if image.mode != "RGBA":  # decode_image gives RGB for images with no transparency data
        return {"had_alpha": "0", "alpha_fraction": "0", "width": str(image.width), "height": str(image.height)}
    histogram = image.getchannel("A").histogram()
    had_alpha = sum(histogram[:255]) > 0
    fraction = sum(histogram[:128]) / (image.width * image.height)
    return {
        "had_alpha": str(int(had_alpha)),
        "alpha_fraction": f"{fraction:.4f}",
        "width": str(image.width),
        "height": str(image.height),
    }


@dataclass(frozen=True)
class ExportSummary:
    rows: int
    relabelled: int
    added: int
    unavailable: int


def export_labels(
    out_dir: Path, people: PeopleLabels, *, labels_csv: Path | None, images_dir: Path | None
) -> ExportSummary:
    """Write `out_dir/labels.csv` and `out_dir/images/`: the dataset (every row, ambiguous ones too) with
    people's labels applied, plus the images only people labelled. Who labelled is not exported."""
    if out_dir.exists() and any(out_dir.iterdir()):
        raise DatasetError(f"{out_dir} is not empty; export into a new folder")
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    fieldnames: list[str] = ["file", "label", "ambiguous", "category", "source_package", "source_path", "license"]
    fieldnames += ["had_alpha", "alpha_fraction", "width", "height", "reviewed"]
    rows: list[dict[str, str]] = []
    if labels_csv is not None and images_dir is not None:
        with labels_csv.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            fieldnames = [name for name in reader.fieldnames or fieldnames if name not in EXTRA_COLUMNS]
            rows = [{**row, "label_source": "dataset", "labelled_at": ""} for row in reader]
    by_hash: dict[str, list[dict[str, str]]] = {}
    for row in rows:
        source = images_dir / row["file"] if images_dir is not None else None
        if source is None or not source.is_file():
            raise DatasetError(f"{labels_csv}: image {row['file']} does not exist")
        shutil.copyfile(source, out_dir / "images" / row["file"])
        by_hash.setdefault(sha256_file(source), []).append(row)
    relabelled = added = unavailable = 0
    for label in people.labels:
        wanted = str(int(label.invert))
        if label.sha256 in by_hash:
            for row in by_hash[label.sha256]:
                if row["label"] != wanted:
                    row.update(
                        label=wanted,
                        ambiguous="0",
                        label_source="person",
                        labelled_at=iso_time(label.labelled_at) or "",
                    )
                    relabelled += 1
            continue
        data = people.images.get(label.sha256)
        if data is None:
            unavailable += 1
            continue
        name = label.sha256[:16] + extension_of(data)
        (out_dir / "images" / name).write_bytes(data)
        rows.append(
            {
                "file": name,
                "label": wanted,
                "ambiguous": "0",
                "category": "correction",
                "source_package": CORRECTIONS_PACKAGE,
                "source_path": people.urls.get(label.sha256, ""),
                "license": "unknown (reported by a user of the service)",
                **_describe(data),
                "reviewed": "1",
                "label_source": "person",
                "labelled_at": iso_time(label.labelled_at) or "",
            }
        )
        added += 1
    buffer = io.StringIO()
    writer = csv.DictWriter(
        buffer, fieldnames=[*fieldnames, *EXTRA_COLUMNS], extrasaction="ignore", lineterminator="\n"
    )
    writer.writeheader()
    writer.writerows(rows)
    (out_dir / "labels.csv").write_text(buffer.getvalue(), encoding="utf-8")
    return ExportSummary(len(rows), relabelled, added, unavailable)
