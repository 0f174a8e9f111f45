"""Does label-preserving augmentation help? Package-grouped CV of the training recipe with and without it.

The recipe is `classifier.train`'s (linear probe on the embedding + colour statistics into an extra-trees
forest, the generated images of `classifier/synthetic.py` in every training fold, threshold for a 2 %
false-invert rate). Augmented images join the *training* folds only, each in its source image's package
(concatenations pair two images of one package), so every metric is measured on real, unaugmented images of
packages the fold never saw.

Usage: python bench/augment.py [--per-image 1 2] [--concatenations 0.25] [--seed 1]
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
from numpy.typing import NDArray
from PIL import Image
from sklearn.model_selection import StratifiedGroupKFold

from classifier.augment import augment_set
from classifier.backbones import load_backbone
from classifier.dataset import DEFAULT_DATASET_DIR, read_labels
from classifier.decode import decode_image
from classifier.features import colour_features
from classifier.metrics import binary_metrics, threshold_for_false_invert_rate
from classifier.model import DEFAULT_MODEL_DIR, FeatureExtractor, read_manifest
from classifier.train import (
    CV_FOLDS,
    FALSE_INVERT_TARGET,
    SEED,
    FeatureTable,
    fit_training_rows,
    make_model,
    synthetic_features,
)


def features(
    extractor: FeatureExtractor, images: list[Image.Image], labels: list[int], groups: list[str]
) -> FeatureTable:
    embeddings = np.vstack([extractor.embed(images[start : start + 32]) for start in range(0, len(images), 32)])
    return FeatureTable(
        sha256s=[""] * len(images),
        embeddings=embeddings,
        colours=np.stack([colour_features(image) for image in images]),
        labels=np.asarray(labels, dtype=np.int64),
        groups=np.asarray(groups),
        parts=tuple(extractor.backbone.parts),
    )


def joined(first: FeatureTable, second: FeatureTable) -> FeatureTable:
    return FeatureTable(
        sha256s=first.sha256s + second.sha256s,
        embeddings=np.vstack([first.embeddings, second.embeddings]),
        colours=np.vstack([first.colours, second.colours]),
        labels=np.concatenate([first.labels, second.labels]),
        groups=np.concatenate([first.groups, second.groups]),
        parts=first.parts,
    )


def grouped_cv(
    base: FeatureTable,
    extra: FeatureTable | None,
    sources: NDArray[np.intp] | None,
    synthetic: FeatureTable | None,
) -> NDArray[np.float64]:
    """Out-of-fold p_invert of the real images; `extra` rows (from image `sources[i]`) train with their source,
    `synthetic` rows train in every fold (as in `classifier.train`)."""
    splitter = StratifiedGroupKFold(n_splits=CV_FOLDS, shuffle=True, random_state=SEED)
    probabilities = np.zeros(len(base.labels))
    for train_index, test_index in splitter.split(base.colours, base.labels, base.groups):
        train_table = base.subset(train_index)
        if extra is not None and sources is not None:
            train_table = joined(train_table, extra.subset(np.flatnonzero(np.isin(sources, train_index))))
        rows, labels, probe = fit_training_rows(train_table, synthetic)
        forest = make_model(SEED).fit(rows, labels)
        test = base.subset(test_index)
        probabilities[test_index] = forest.predict_proba(
            FeatureExtractor.combine_with(probe, test.embeddings, test.colours)
        )[:, 1]
    return probabilities


def report(name: str, probabilities: NDArray[np.float64], labels: NDArray[np.int64], seconds: float) -> None:
    threshold = threshold_for_false_invert_rate(probabilities, labels, FALSE_INVERT_TARGET)
    at_target = binary_metrics(probabilities, labels, threshold)
    at_half = binary_metrics(probabilities, labels, 0.5)
    print(
        f"{name:<34} accuracy {at_target.accuracy:.3f} (false inverts {at_target.false_invert_rate:.3f}, "
        f"threshold {threshold:.2f})  at 0.5: {at_half.accuracy:.3f} ({at_half.false_invert_rate:.3f})  "
        f"AUC {at_target.auc or 0:.4f}  [{seconds:.0f} s]",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-image", type=int, nargs="+", default=[1, 2], help="variants per training image")
    parser.add_argument("--concatenations", type=float, default=0.25, help="same-label pairs, per training image")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    items = read_labels(DEFAULT_DATASET_DIR / "labels.csv", DEFAULT_DATASET_DIR / "images")
    manifest = read_manifest(DEFAULT_MODEL_DIR)
    extractor = FeatureExtractor(load_backbone(manifest.backbone, onnx_path=DEFAULT_MODEL_DIR / "backbone.onnx"), None)
    started = time.perf_counter()
    decoded = [decode_image(item.path.read_bytes()) for item in items]
    labels = [item.label for item in items]
    groups = [item.source_package for item in items]
    base = features(extractor, decoded, labels, groups)
    synthetic = synthetic_features(extractor.backbone)
    generated = 0 if synthetic is None else len(synthetic.labels)
    print(f"{len(items)} images, {len(set(groups))} packages, {generated} synthetic training images, backbone "
          f"{manifest.backbone}; features in {time.perf_counter() - started:.0f} s", flush=True)  # fmt: skip

    started = time.perf_counter()
    report("no augmentation", grouped_cv(base, None, None, synthetic), base.labels, time.perf_counter() - started)
    for per_image in args.per_image:
        for concatenations in sorted({0.0, args.concatenations}):
            started = time.perf_counter()
            rng = random.Random(args.seed)
            augmented = augment_set(
                decoded, labels, rng, per_image=per_image, concatenations=concatenations, groups=groups
            )
            sources = np.asarray([entry.source for entry in augmented], dtype=np.intp)
            extra = features(
                extractor,
                [entry.image for entry in augmented],
                [entry.label for entry in augmented],
                [groups[entry.source] for entry in augmented],
            )
            name = f"+{per_image} variant(s)/image, +{concatenations:.2f} concat"
            report(name, grouped_cv(base, extra, sources, synthetic), base.labels, time.perf_counter() - started)


if __name__ == "__main__":
    main()
