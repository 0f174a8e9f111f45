"""Compare feature sets, forests and synthetic data by package-grouped CV on the real images.

    .venv/bin/python bench/quality.py [--seeds 4]

Prints one row per configuration: accuracy at a 2 % false-invert rate and AUC, mean over seeds of
`StratifiedGroupKFold(5)` by source package. Synthetic rows only ever join training folds; every number
is computed on the real images' out-of-fold predictions. Takes a few minutes on two cores.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable

import numpy as np
from numpy.typing import NDArray
from sklearn.ensemble import ExtraTreesClassifier
from sklearn.model_selection import StratifiedGroupKFold

from classifier.backbones import load_backbone
from classifier.dataset import DEFAULT_DATASET_DIR, read_labels
from classifier.features import FEATURE_NAMES
from classifier.metrics import binary_metrics, threshold_for_false_invert_rate
from classifier.model import DEFAULT_MODEL_DIR, FeatureExtractor
from classifier.train import (
    FALSE_INVERT_TARGET,
    TRAINING_BACKBONE,
    FeatureTable,
    compute_features,
    fit_training_rows,
    synthetic_features,
)

#: The feature layout before the layout/legibility statistics were added (first 52 names).
ORIGINAL_FEATURES = FEATURE_NAMES.index("background_fraction_shown")
ForestFactory = Callable[[int], ExtraTreesClassifier]


def forest(trees: int) -> ForestFactory:
    return lambda seed: ExtraTreesClassifier(
        n_estimators=trees, max_features="sqrt", class_weight="balanced", n_jobs=-1, random_state=seed
    )


def columns(table: FeatureTable, count: int) -> FeatureTable:
    return dataclasses.replace(table, colours=table.colours[:, :count])


def oof(table: FeatureTable, extra: FeatureTable | None, make: ForestFactory, seed: int) -> NDArray[np.float64]:
    splitter = StratifiedGroupKFold(n_splits=5, shuffle=True, random_state=seed)
    probabilities = np.zeros(len(table.labels))
    for train_index, test_index in splitter.split(table.colours, table.labels, table.groups):
        train, test = table.subset(train_index), table.subset(test_index)
        rows, labels, probe = fit_training_rows(train, extra)
        model = make(seed).fit(rows, labels)
        probabilities[test_index] = model.predict_proba(
            FeatureExtractor.combine_with(probe, test.embeddings, test.colours)
        )[:, 1]
    return probabilities


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=4)
    args = parser.parse_args()
    images = read_labels(DEFAULT_DATASET_DIR / "labels.csv", DEFAULT_DATASET_DIR / "images")
    backbone = load_backbone(TRAINING_BACKBONE, onnx_path=DEFAULT_MODEL_DIR / "backbone.onnx")
    table = compute_features(images, backbone)
    synthetic = synthetic_features(backbone, 20)
    assert synthetic is not None
    configurations: list[tuple[str, FeatureTable, FeatureTable | None, ForestFactory]] = [
        ("original 52 features, 300 trees", columns(table, ORIGINAL_FEATURES), None, forest(300)),
        ("original 52 features, 600 trees", columns(table, ORIGINAL_FEATURES), None, forest(600)),
        (f"all {len(FEATURE_NAMES)} features, 600 trees", table, None, forest(600)),
        (f"all {len(FEATURE_NAMES)} features, 600 trees, + synthetic", table, synthetic, forest(600)),
    ]
    print("| configuration | accuracy @ FIR <= 2 % | FIR | AUC |\n|---|---|---|---|")
    for name, data, extra, make in configurations:
        accuracy, fir, auc = [], [], []
        for seed in range(1, args.seeds + 1):
            probabilities = oof(data, extra, make, seed)
            threshold = threshold_for_false_invert_rate(probabilities, data.labels, FALSE_INVERT_TARGET)
            metrics = binary_metrics(probabilities, data.labels, threshold)
            accuracy.append(metrics.accuracy)
            fir.append(metrics.false_invert_rate)
            auc.append(metrics.auc or 0.0)
        print(
            f"| {name} | {np.mean(accuracy):.3f} ± {np.std(accuracy):.3f} | {np.mean(fir):.3f} | {np.mean(auc):.3f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
