"""Training: embed the labelled images, pick the threshold on package-grouped CV, fit, pin leftovers.

The headline metrics are package-grouped cross-validation (`StratifiedGroupKFold` over
`source_package`): images of one package share a style, so a random split lets the forest recognise
the package instead of the content and overstates accuracy by several points.
"""

from __future__ import annotations

import hashlib
import re
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import sklearn
from numpy.typing import NDArray
from sklearn.ensemble import ExtraTreesClassifier, HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GroupKFold, StratifiedGroupKFold, cross_val_predict
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from classifier.backbones import Backbone, export_onnx, load_backbone, parse_spec
from classifier.dataset import LabelledImage, training_set_hash
from classifier.decode import decode_image
from classifier.features import FEATURE_NAMES, colour_features
from classifier.forest import PackedForest
from classifier.metrics import BinaryMetrics, binary_metrics, threshold_for_false_invert_rate
from classifier.model import (
    MODEL_FORMAT,
    FeatureExtractor,
    InvertModel,
    LinearProbe,
    Manifest,
    part_columns,
    sha256_hex,
)
from classifier.screen import (
    ABOVE_GRID,
    MAX_CHANGED_SHARE,
    ColourScreen,
    ScreenBounds,
    choose_bounds,
    combine,
    counted_bounds,
)
from classifier.synthetic import DEFAULT_SEED, SyntheticImage, generate

#: The share of "don't invert" images we accept to invert (a photo turned negative is the worst outcome).
#: The threshold is the lowest whose package-grouped CV false-invert rate is within this budget.
FALSE_INVERT_TARGET = 0.02
CV_FOLDS = 5
#: The model on [probe score, colour statistics]: gradient-boosted trees. On the nine-batch dataset they
#: scored 0.938 package-grouped CV accuracy at a 2 % false-invert rate against 0.926 for a 600-tree
#: ExtraTrees forest (2 seeds each), and 0.926 against 0.912 on three later batches from 367 packages
#: neither had seen. Half or double the learning rate, twice the iterations or 15 leaves did not do better.
BOOSTING_ITERATIONS = 400
BOOSTING_LEARNING_RATE = 0.05
BOOSTING_LEAVES = 31
BOOSTING_L2 = 1.0
#: Trees of the ExtraTrees forests: the colour screen's, and the model's before boosting replaced it.
N_TREES = 600
#: The colour screen only has to be sure of the easy images; 300 trees keep the shipped model directory under
#: 20 MB (a 600-tree forest's file grows with the training set: 4.5 MB on 7,475 images).
SCREEN_TREES = 300
#: Inverse regularisation of the embedding's linear probe (strong: 1.5k images, 1280 dimensions).
PROBE_C = 0.003
SEED = 20261125
#: The shipped model's backbone. 128 px input: package-grouped CV accuracy is the same as at 224 px
#: (0.899 vs 0.900 at a 2 % false-invert rate) and the network runs ~2.8x faster (379 vs 137 img/s here).
#: "+stages": a second probe on the early stages' statistics (see classifier/backbones.py STAGE_BLOCKS).
TRAINING_BACKBONE = "effnet-lite0@128+stages"

#: The colour screen's "invert" side may widen past the strict rule's bound (see `choose_cascade`) while the
#: whole cascade, at its own threshold for the false-invert target, loses at most this much package-grouped
#: CV accuracy against the full model alone. Boosted trees disagree with the colour-only forest near the
#: top on a few images, so the strict rule alone left the screen deciding 58 % of the CV images (forest
#: models: 84-87 %) and 36 % of three unseen batches; see README, "Speed".
MAX_ACCURACY_COST = 0.002

#: Synthetic images per kind added to every training set (see `classifier/synthetic.py`); 0 turns them off.
SYNTHETIC_PER_KIND = 20

Progress = Callable[[int], None]


@dataclass
class FeatureTable:
    """Per-image inputs to the forest, computed once and reused by CV and the final fit."""

    sha256s: list[str]
    embeddings: NDArray[np.float32]
    colours: NDArray[np.float32]
    labels: NDArray[np.int64]
    groups: NDArray[np.str_]
    #: `Backbone.parts` of the embeddings: each part gets its own probe.
    parts: tuple[int, ...]

    def subset(self, index: NDArray[np.intp]) -> FeatureTable:
        return FeatureTable(
            sha256s=[self.sha256s[i] for i in index],
            embeddings=self.embeddings[index],
            colours=self.colours[index],
            labels=self.labels[index],
            groups=self.groups[index],
            parts=self.parts,
        )


@dataclass
class TrainingResult:
    model: InvertModel
    cv: BinaryMetrics
    cv_at_half: BinaryMetrics
    n_overrides: int
    screen: ScreenBounds | None = None


@dataclass
class CrossValidated:
    """Out-of-fold p_invert of the full model and of the colour screen, from the same package-grouped folds."""

    model_p: NDArray[np.float64]
    screen_p: NDArray[np.float64]


def compute_features(
    images: Sequence[LabelledImage],
    backbone: Backbone,
    *,
    batch_size: int = 32,
    progress: Progress | None = None,
) -> FeatureTable:
    """Decode, embed and describe every labelled image (the slow part of training)."""
    extractor = FeatureExtractor(backbone, probe=None)
    sha256s: list[str] = []
    embeddings: list[NDArray[np.float32]] = []
    colours: list[NDArray[np.float32]] = []
    for start in range(0, len(images), batch_size):
        batch = images[start : start + batch_size]
        decoded = []
        for item in batch:
            data = item.path.read_bytes()
            sha256s.append(sha256_hex(data))
            decoded.append(decode_image(data))
        embeddings.append(extractor.embed(decoded))
        colours.extend(colour_features(image) for image in decoded)
        if progress is not None:
            progress(len(batch))
    return FeatureTable(
        sha256s=sha256s,
        embeddings=np.vstack(embeddings),
        colours=np.stack(colours),
        labels=np.asarray([item.label for item in images], dtype=np.int64),
        groups=np.asarray([item.source_package for item in images]),
        parts=tuple(backbone.parts),
    )


def synthetic_features(
    backbone: Backbone, per_kind: int = SYNTHETIC_PER_KIND, *, seed: int = DEFAULT_SEED
) -> FeatureTable | None:
    """Feature rows of the generated images (training rows only, never scored), or None when disabled."""
    if per_kind <= 0:
        return None
    generated: list[SyntheticImage] = generate(per_kind, seed=seed)
    extractor = FeatureExtractor(backbone, probe=None)
    images = [item.image for item in generated]
    embeddings = [extractor.embed(images[start : start + 32]) for start in range(0, len(images), 32)]
    return FeatureTable(
        sha256s=["" for _ in generated],  # never served by hash: no override may point at them
        embeddings=np.vstack(embeddings),
        colours=np.stack([colour_features(image) for image in images]),
        labels=np.asarray([item.label for item in generated], dtype=np.int64),
        groups=np.asarray([item.source_package for item in generated]),
        parts=tuple(backbone.parts),
    )


def make_model(seed: int = SEED) -> HistGradientBoostingClassifier:
    """The model on [probe score, colour statistics] (see `BOOSTING_ITERATIONS`)."""
    return HistGradientBoostingClassifier(
        max_iter=BOOSTING_ITERATIONS,
        learning_rate=BOOSTING_LEARNING_RATE,
        max_leaf_nodes=BOOSTING_LEAVES,
        l2_regularization=BOOSTING_L2,
        class_weight="balanced",
        # Always the same number of trees: "auto" would hold out a random tenth above 10,000 rows.
        early_stopping=False,
        random_state=seed,
    )


def make_forest(seed: int = SEED, n_trees: int = N_TREES) -> ExtraTreesClassifier:
    """An ExtraTrees forest: the colour screen (`SCREEN_TREES`), or the model before boosting replaced it."""
    # Full-depth trees fit the training set (almost) exactly, so the screen is sure of what it has seen.
    return ExtraTreesClassifier(
        n_estimators=n_trees,
        max_features="sqrt",
        min_samples_leaf=1,
        class_weight="balanced",
        n_jobs=-1,
        random_state=seed,
    )


def _probe_pipeline() -> Pipeline:
    return make_pipeline(StandardScaler(), LogisticRegression(C=PROBE_C, max_iter=5000))


def fit_probe(
    embeddings: NDArray[np.float32], labels: NDArray[np.int64], parts: Sequence[int] | None = None
) -> LinearProbe:
    """One logistic regression per part of the embedding columns (default: one for all of them)."""
    parts = tuple(parts or (embeddings.shape[1],))
    means, scales, weights, biases = [], [], [], []
    for columns in part_columns(parts):
        pipeline = _probe_pipeline().fit(embeddings[:, columns], labels)
        scaler, regression = pipeline[0], pipeline[-1]
        means.append(scaler.mean_)
        scales.append(np.where(scaler.scale_ > 0, scaler.scale_, 1.0))
        weights.append(regression.coef_[0])
        biases.append(regression.intercept_[0])
    return LinearProbe(
        mean=np.concatenate(means).astype(np.float32),
        scale=np.concatenate(scales).astype(np.float32),
        weights=np.concatenate(weights).astype(np.float32),
        bias=np.asarray(biases, dtype=np.float32),
        parts=parts,
    )


def out_of_fold_probe_scores(table: FeatureTable) -> NDArray[np.float32]:
    """Probe scores (one column per embedding part) for training rows from probes that did not see the
    row's package.

    The forest must learn how far to trust the probe on *unseen* sources; in-sample scores would be
    near-perfect and teach it to trust the probe blindly.
    """
    folds = min(CV_FOLDS, len(set(table.groups.tolist())))
    if folds < 2:
        return fit_probe(table.embeddings, table.labels, table.parts).score(table.embeddings)
    columns = [
        cross_val_predict(
            _probe_pipeline(),
            table.embeddings[:, part],
            table.labels,
            groups=table.groups,
            cv=GroupKFold(folds),
            method="predict_proba",
        )[:, 1]
        for part in part_columns(table.parts)
    ]
    return np.stack(columns, axis=1).astype(np.float32)


def fit_training_rows(
    table: FeatureTable, extra: FeatureTable | None = None
) -> tuple[NDArray[np.float32], NDArray[np.int64], LinearProbe]:
    """The forest's training rows and labels, and the probe to use at inference time.

    The probe is fit on the real images only; `extra` (synthetic) rows get its score, which is as
    "unseen" for them as the out-of-fold scores are for the real rows.
    """
    probe = fit_probe(table.embeddings, table.labels, table.parts)
    rows = np.hstack([out_of_fold_probe_scores(table), table.colours]).astype(np.float32)
    labels = table.labels
    if extra is not None:
        rows = np.vstack([rows, FeatureExtractor.combine_with(probe, extra.embeddings, extra.colours)])
        labels = np.concatenate([labels, extra.labels])
    return rows, labels, probe


def grouped_cv(
    table: FeatureTable,
    *,
    folds: int = CV_FOLDS,
    seed: int = SEED,
    extra: FeatureTable | None = None,
    screen: bool = True,
) -> CrossValidated:
    """Out-of-fold p_invert for every image, folds split by source package (probe and forests all refit).

    `extra` rows (synthetic) join every training fold and are never scored: the metrics describe real images.
    With `screen`, the colour-only forest is fit and scored on the same folds (NaN otherwise).
    """
    n_groups = len(set(table.groups.tolist()))
    splitter = StratifiedGroupKFold(n_splits=min(folds, n_groups), shuffle=True, random_state=seed)
    model_p = np.zeros(len(table.labels))
    screen_p = np.full(len(table.labels), np.nan)
    for train_index, test_index in splitter.split(table.colours, table.labels, table.groups):
        train_table, test_table = table.subset(train_index), table.subset(test_index)
        rows, labels, probe = fit_training_rows(train_table, extra)
        model = make_model(seed).fit(rows, labels)
        test_rows = FeatureExtractor.combine_with(probe, test_table.embeddings, test_table.colours)
        model_p[test_index] = model.predict_proba(test_rows)[:, 1]
        if screen:
            colours, colour_labels = screen_training_rows(train_table, extra)
            screen_forest = make_forest(seed, SCREEN_TREES).fit(colours, colour_labels)
            screen_p[test_index] = screen_forest.predict_proba(test_table.colours)[:, 1]
    return CrossValidated(model_p=model_p, screen_p=screen_p)


def choose_cascade(
    screen_p: NDArray[np.float64],
    model_p: NDArray[np.float64],
    labels: NDArray[np.int64],
    false_invert_target: float,
    *,
    max_changed_share: float = MAX_CHANGED_SHARE,
    max_accuracy_cost: float = MAX_ACCURACY_COST,
) -> tuple[float, ScreenBounds]:
    """The threshold and the screen's bounds, chosen together on out-of-fold answers.

    Starts from the full model's threshold for `false_invert_target` and `choose_bounds`' strict bounds,
    then lowers the "invert" bound while the cascade (the screen where it decides, the model elsewhere),
    at its own threshold for the same target, keeps within `max_accuracy_cost` of the model alone and its
    threshold stays between the bounds. The cascade's false-invert rate is therefore on target by
    construction: wherever the screen's extra "invert" answers err, the threshold rises to pay for them.
    """
    threshold = threshold_for_false_invert_rate(model_p, labels, false_invert_target)
    alone = binary_metrics(model_p, labels, threshold).accuracy
    strict = choose_bounds(screen_p, model_p, threshold, max_changed_share=max_changed_share)
    chosen, chosen_threshold = strict, threshold
    for candidate in ABOVE_GRID:
        if candidate >= strict.above:
            continue
        trial = ScreenBounds(strict.below, candidate, 0.0, 0)
        cascade = combine(screen_p, model_p, trial)
        trial_threshold = threshold_for_false_invert_rate(cascade, labels, false_invert_target)
        if not strict.below < trial_threshold <= candidate:
            break
        if binary_metrics(cascade, labels, trial_threshold).accuracy < alone - max_accuracy_cost:
            break
        chosen, chosen_threshold = trial, trial_threshold
    return chosen_threshold, counted_bounds(screen_p, model_p, chosen_threshold, chosen.below, chosen.above)


def screen_training_rows(
    table: FeatureTable, extra: FeatureTable | None = None
) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
    """The colour screen's training rows: the colour features of the real (and synthetic) images."""
    if extra is None:
        return table.colours, table.labels
    return np.vstack([table.colours, extra.colours]), np.concatenate([table.labels, extra.labels])


def pin_leftovers(model: InvertModel, table: FeatureTable) -> dict[str, bool]:
    """Exact-hash overrides for the training images the fitted model still gets wrong."""
    p_invert = model.p_invert_from_features(table.embeddings, table.colours)
    wrong = (p_invert >= model.threshold) != (table.labels == 1)
    return {table.sha256s[i]: bool(table.labels[i]) for i in np.flatnonzero(wrong)}


def model_version(
    backbone_spec: str,
    forest: PackedForest,
    threshold: float,
    overrides: dict[str, bool],
    screen: ColourScreen | None = None,
) -> str:
    """A version that changes whenever anything that can change an answer changes."""
    digest = hashlib.sha256()
    forests = [forest] if screen is None else [forest, screen.forest]
    for packed in forests:
        for array in (packed.feature, packed.threshold, packed.left, packed.right, packed.leaf_value):
            digest.update(np.ascontiguousarray(array).tobytes())
        if packed.aggregate != "mean":  # forests' versions stay what they were
            digest.update(f"|{packed.aggregate} {packed.baseline!r}".encode())
    digest.update(f"{backbone_spec}|{threshold:.6f}|{sorted(overrides.items())}".encode())
    if screen is not None:
        digest.update(f"|screen {screen.below:.6f} {screen.above:.6f}".encode())
    return f"{spec_slug(backbone_spec)}-{digest.hexdigest()[:10]}"


def spec_slug(backbone_spec: str) -> str:
    """`effnet-lite0@160` -> `effnet-lite0-160`; a CLIP checkpoint path is reduced to its architecture."""
    spec = parse_spec(backbone_spec)
    if spec.kind == "clip":
        return f"clip-{spec.arch}"
    return re.sub(r"[^A-Za-z0-9.-]+", "-", spec.spec)


def train(
    images: Sequence[LabelledImage],
    *,
    backbone_spec: str = TRAINING_BACKBONE,
    out_dir: Path,
    progress: Progress | None = None,
    false_invert_target: float = FALSE_INVERT_TARGET,
    table: FeatureTable | None = None,
    synthetic_per_kind: int = SYNTHETIC_PER_KIND,
    screen: bool = True,
) -> TrainingResult:
    """Train on `images` (plus generated images, see `classifier/synthetic.py`) and write `out_dir`.

    With `screen` (the default) a colour-only forest answers the images whose colours decide (see
    `classifier/screen.py`); the reported cross-validation metrics are those of the whole cascade.
    """
    spec = parse_spec(backbone_spec)
    with tempfile.TemporaryDirectory() as scratch:
        onnx_path: Path | None = None
        if spec.kind == "effnet-lite0":
            # Embed through the very ONNX graph that will be served, so training and serving agree.
            onnx_path = Path(scratch) / "backbone.onnx"
            export_onnx(backbone_spec, onnx_path)
        backbone = load_backbone(backbone_spec, onnx_path=onnx_path)
        if table is None:
            table = compute_features(images, backbone, progress=progress)
        if table.parts != tuple(backbone.parts):
            raise ValueError(
                f"the feature table's embeddings have parts {list(table.parts)}; "
                f"{backbone_spec!r} gives {list(backbone.parts)}"
            )

        extra = synthetic_features(backbone, synthetic_per_kind)
        folds = grouped_cv(table, extra=extra, screen=screen)
        bounds: ScreenBounds | None = None
        oof = folds.model_p
        if screen:
            threshold, bounds = choose_cascade(folds.screen_p, folds.model_p, table.labels, false_invert_target)
            oof = combine(folds.screen_p, folds.model_p, bounds)
        else:
            threshold = threshold_for_false_invert_rate(folds.model_p, table.labels, false_invert_target)
        cv = binary_metrics(oof, table.labels, threshold)
        cv_at_half = binary_metrics(oof, table.labels, 0.5)

        rows, labels, probe = fit_training_rows(table, extra)
        packed = PackedForest.from_sklearn(make_model().fit(rows, labels))
        colour_screen: ColourScreen | None = None
        if bounds is not None:
            screen_forest = make_forest(n_trees=SCREEN_TREES).fit(*screen_training_rows(table, extra))
            colour_screen = ColourScreen(PackedForest.from_sklearn(screen_forest), bounds.below, bounds.above)
        manifest = Manifest(
            format=MODEL_FORMAT,
            version="unversioned",
            backbone=backbone_spec,
            embedding_dim=backbone.dim,
            embedding_inputs="probe",
            feature_names=list(FEATURE_NAMES),
            n_features=packed.n_features,
            threshold=round(float(threshold), 6),
            sklearn_version=sklearn.__version__,
            training_set_hash=training_set_hash(zip(table.sha256s, table.labels.tolist(), strict=True)),
            n_training_images=len(table.labels),
            files={},
            metrics={"grouped_cv": cv.to_json(), "grouped_cv_at_0.5": cv_at_half.to_json()},
            training=training_info(table, extra),
            screen={}
            if bounds is None
            else {"cv_decided_share": round(bounds.decided_share, 4), "cv_changed_verdicts": bounds.changed},
        )
        model = InvertModel(manifest, packed, FeatureExtractor(backbone, probe), {}, screen=colour_screen)
        overrides = pin_leftovers(model, table)
        model.overrides = overrides
        version = model_version(backbone_spec, packed, manifest.threshold, overrides, colour_screen)
        model.manifest = Manifest(**{**manifest.__dict__, "version": version})
        model.save(out_dir, backbone_onnx=onnx_path)
    return TrainingResult(model=model, cv=cv, cv_at_half=cv_at_half, n_overrides=len(overrides), screen=bounds)


def training_info(table: FeatureTable, extra: FeatureTable | None = None) -> dict[str, Any]:
    return {
        "synthetic_images": 0 if extra is None else len(extra.labels),
        "synthetic": f"classifier/synthetic.py generate(per_kind, seed={DEFAULT_SEED}); training rows only, not scored",
        "n_invert": int(table.labels.sum()),
        "n_dont_invert": int((table.labels == 0).sum()),
        "source_packages": sorted(set(table.groups.tolist())),
        "cv": f"StratifiedGroupKFold({CV_FOLDS}) by source_package, seed {SEED}",
        "model": f"HistGradientBoostingClassifier({BOOSTING_ITERATIONS} trees of {BOOSTING_LEAVES} leaves, learning "
        f"rate {BOOSTING_LEARNING_RATE}, L2 {BOOSTING_L2}, balanced classes)",
        "embedding_inputs": f"linear probe per embedding part {list(table.parts)} "
        f"(LogisticRegression C={PROBE_C}, out-of-fold by package)",
        "screen": f"colour-only ExtraTreesClassifier ({SCREEN_TREES} trees, otherwise the same settings); "
        "bounds from package-grouped CV",
        "false_invert_target": FALSE_INVERT_TARGET,
    }
