"""A fitted scikit-learn tree ensemble flattened into plain arrays, and its vectorised prediction.

Two kinds of ensemble share the layout and the walk, and differ only in how leaf values combine: a
forest (`ExtraTreesClassifier`, `RandomForestClassifier`) averages its trees' leaf probabilities; gradient
boosting (`HistGradientBoostingClassifier`) adds its trees' leaf values, which are log-odds, to a
baseline and applies the logistic function.

Training uses scikit-learn; serving uses these arrays. That buys three things: loading a model never
unpickles code (a model directory is data, safe to download), a model keeps working across
scikit-learn releases, and a small batch is predicted in well under a millisecond instead of paying
scikit-learn's per-tree Python overhead (about 0.1 ms a tree, 30 ms for a 300-tree forest).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np
from numpy.typing import NDArray

_LEAF = -1

#: How leaf values combine: "mean" of probabilities (forests), or "logistic" of baseline + sum (boosting).
Aggregate = Literal["mean", "logistic"]


def float32_floor(values: NDArray[np.float64]) -> NDArray[np.float32]:
    """The largest float32 at or below each value.

    For a float32 input x, `x <= t` and `x <= float32_floor(t)` always agree, so split thresholds can be
    stored in half the space without changing a single decision.
    """
    rounded = values.astype(np.float32)
    above = rounded.astype(np.float64) > values
    rounded[above] = np.nextafter(rounded[above], np.float32(-np.inf))
    return rounded


class _Tree(NamedTuple):
    """One fitted tree's nodes in scikit-learn's numbering (children are tree-local; leaves' children unused)."""

    is_leaf: NDArray[np.bool_]
    feature: NDArray[Any]
    threshold: NDArray[np.float64]
    left: NDArray[Any]
    right: NDArray[Any]
    leaf_value: NDArray[Any]  # probability of class 1 (forests) or log-odds (boosting), read at leaves only
    max_depth: int


@dataclass(frozen=True)
class PackedForest:
    """All trees' nodes in shared arrays; child indices are global, `roots` holds each tree's first node."""

    roots: NDArray[np.int32]
    feature: NDArray[np.int32]
    threshold: NDArray[np.float64]
    left: NDArray[np.int32]
    right: NDArray[np.int32]
    #: At leaves: the tree's probability of class 1 ("mean"), or its log-odds contribution ("logistic").
    leaf_value: NDArray[np.floating[Any]]
    n_features: int
    max_depth: int
    aggregate: Aggregate = "mean"
    baseline: float = 0.0  # log-odds before the first tree ("logistic" only)

    @classmethod
    def from_sklearn(cls, ensemble: Any) -> PackedForest:
        """Flatten a fitted binary `RandomForestClassifier`, `ExtraTreesClassifier` or
        `HistGradientBoostingClassifier` (classes 0 and 1)."""
        if list(ensemble.classes_) != [0, 1]:
            raise ValueError(f"expected classes [0, 1], got {list(ensemble.classes_)}")
        if hasattr(ensemble, "_predictors"):
            return cls._from_boosting(ensemble)
        return cls._from_forest(ensemble)

    @classmethod
    def _from_forest(cls, forest: Any) -> PackedForest:
        def trees() -> Iterator[_Tree]:
            for estimator in forest.estimators_:
                tree = estimator.tree_
                value = tree.value[:, 0, :]
                totals = value.sum(axis=1)
                leaf_p = value[:, 1] / np.where(totals > 0, totals, 1.0)
                is_leaf = tree.children_left == _LEAF
                yield _Tree(is_leaf, tree.feature, tree.threshold, tree.children_left, tree.children_right,
                            leaf_p.astype(np.float32), int(tree.max_depth))  # fmt: skip

        return cls._packed(trees(), int(forest.n_features_in_))

    @classmethod
    def _from_boosting(cls, boosting: Any) -> PackedForest:
        """The trees of a binary `HistGradientBoostingClassifier`: one per iteration, numbered depth first
        like scikit-learn's other trees (left child = next node), each node deciding ``x <= threshold``.

        Categorical splits and missing values have no place in this layout: the model's inputs are
        always finite numbers, and the boosting must be fit without categorical features.
        """
        if getattr(boosting, "is_categorical_", None) is not None and np.any(boosting.is_categorical_):
            raise ValueError("categorical features are not supported")

        def trees() -> Iterator[_Tree]:
            for (predictor,) in boosting._predictors:  # binary: one tree per iteration
                nodes = predictor.nodes
                yield _Tree(nodes["is_leaf"].astype(bool), nodes["feature_idx"], nodes["num_threshold"],
                            nodes["left"].astype(np.int64), nodes["right"].astype(np.int64),
                            nodes["value"].astype(np.float64), int(nodes["depth"].max()))  # fmt: skip

        baseline = float(np.ravel(boosting._baseline_prediction)[0])
        return cls._packed(trees(), int(boosting.n_features_in_), aggregate="logistic", baseline=baseline)

    @classmethod
    def _packed(cls, trees: Iterable[_Tree], n_features: int, **kind: Any) -> PackedForest:
        """Trees with tree-local node numbers, joined into shared arrays with global child indices."""
        roots, features, thresholds, lefts, rights, values = [], [], [], [], [], []
        offset = 0
        max_depth = 0
        for tree in trees:
            is_leaf, count = tree.is_leaf, tree.is_leaf.size
            roots.append(offset)
            features.append(np.where(is_leaf, 0, tree.feature).astype(np.int32))
            # Inputs are float32, so float32 thresholds decide exactly alike (see `float32_floor`).
            thresholds.append(np.where(is_leaf, 0.0, float32_floor(tree.threshold)).astype(np.float64))
            # A leaf points at itself, so walking past it is a no-op and every walk can take max_depth steps.
            own = np.arange(count, dtype=np.int64) + offset
            lefts.append(np.where(is_leaf, own, tree.left + offset).astype(np.int32))
            rights.append(np.where(is_leaf, own, tree.right + offset).astype(np.int32))
            # Only leaves' values are ever read; zeros elsewhere make a fitted forest equal to its saved copy.
            values.append(np.where(is_leaf, tree.leaf_value, 0.0).astype(tree.leaf_value.dtype))
            max_depth = max(max_depth, tree.max_depth)
            offset += count
        return cls(
            roots=np.asarray(roots, dtype=np.int32),
            feature=np.concatenate(features),
            threshold=np.concatenate(thresholds),
            left=np.concatenate(lefts),
            right=np.concatenate(rights),
            leaf_value=np.concatenate(values),
            n_features=n_features,
            max_depth=max_depth,
            **kind,
        )

    def _combine(self, leaf_values: NDArray[np.floating[Any]]) -> NDArray[np.float64]:
        """Per row, from its (n_rows, n_trees) leaf values."""
        values = leaf_values.astype(np.float64)
        if self.aggregate == "mean":
            result: NDArray[np.float64] = values.mean(axis=1)
            return result
        logits = np.clip(self.baseline + values.sum(axis=1), -60.0, 60.0)  # no overflow warnings in exp
        result = 1.0 / (1.0 + np.exp(-logits))
        return result

    def predict_proba(self, features: NDArray[np.floating[Any]]) -> NDArray[np.float64]:
        """Probability of class 1 for each row, equal to scikit-learn's `predict_proba(X)[:, 1]` (to rounding
        for boosting, whose sum of leaf values runs in another order).

        All (row, tree) walks advance together one level per step, and a walk leaves the working set as
        soon as it reaches its leaf, so a step costs what the unfinished walks need. Each node's threshold
        and right child sit side by side in one 8-byte word (the left child is the next node), so a step
        makes one random memory access per walk for them: the forests are tens of MB, and cache misses,
        not arithmetic, are what a step costs.
        """
        rows = np.asarray(features, dtype=np.float32)
        if rows.ndim != 2 or rows.shape[1] != self.n_features:
            raise ValueError(f"expected an (n, {self.n_features}) array, got {rows.shape}")
        layout = self._walk_layout
        n_rows, n_trees = rows.shape[0], self.roots.size
        if layout is None:  # not depth-first (never from scikit-learn): the plain fixed-depth walk
            return self._predict_fixed_depth(rows)
        packed, features_u = layout
        values = np.ascontiguousarray(rows).ravel()
        node = np.tile(self.roots.astype(np.int64), n_rows)
        offset = np.repeat(np.arange(n_rows, dtype=np.int64) * self.n_features, n_trees)
        slot = np.arange(n_rows * n_trees)
        leaf_of = np.empty(n_rows * n_trees, dtype=np.int64)
        while node.size:
            words = packed[node]
            right = (words >> 32).astype(np.int32)
            at_leaf = right == _LEAF
            if at_leaf.any():
                leaf_of[slot[at_leaf]] = node[at_leaf]
                walking = ~at_leaf
                node, offset, slot, words, right = (
                    node[walking],
                    offset[walking],
                    slot[walking],
                    words[walking],
                    right[walking],
                )
            # float32 thresholds rounded down decide float32 inputs exactly as scikit-learn's float64 ones.
            threshold = (words & 0xFFFFFFFF).astype(np.uint32).view(np.float32)
            goes_left = values[offset + features_u[node]] <= threshold
            node = np.where(goes_left, node + 1, right)
        return self._combine(self.leaf_value[leaf_of].reshape(n_rows, n_trees))

    @cached_property
    def _walk_layout(self) -> tuple[NDArray[Any], NDArray[Any]] | None:
        leaf = self._depth_first_leaves()
        if leaf is None:
            return None
        threshold_bits = float32_floor(self.threshold).view(np.uint32).astype(np.uint64)
        right = np.where(leaf, _LEAF, self.right).astype(np.int32).view(np.uint32).astype(np.uint64)
        features_u = self.feature.astype(np.uint8 if self.n_features <= 256 else np.uint16)
        return (right << np.uint64(32)) | threshold_bits, features_u

    def _depth_first_leaves(self) -> NDArray[np.bool_] | None:
        """Which nodes are leaves (they point at themselves), or None unless every inner node's left child is
        the next node, as in scikit-learn's depth-first numbering (the walk and the file layout rely on it)."""
        own = np.arange(self.feature.size, dtype=np.int64)
        leaf = self.left == own
        return leaf if np.array_equal(self.left[~leaf], own[~leaf] + 1) else None

    def _predict_fixed_depth(self, rows: NDArray[np.float32]) -> NDArray[np.float64]:
        # scikit-learn compares float32 inputs against float64 thresholds; do the same for equal results.
        rows64 = rows.astype(np.float64)
        node = np.broadcast_to(self.roots, (rows.shape[0], self.roots.size)).copy()
        row_index = np.arange(rows.shape[0])[:, None]
        for _ in range(self.max_depth):
            goes_left = rows64[row_index, self.feature[node]] <= self.threshold[node]
            node = np.where(goes_left, self.left[node], self.right[node])
        return self._combine(self.leaf_value[node])

    def save(self, path: Path) -> None:
        """Write the compact layout: about 13 bytes a node before compression instead of 24.

        scikit-learn numbers nodes depth first, so an inner node's left child is always the next node
        and only the right child is stored (tree-local, -1 at leaves); features fit in one or two bytes;
        thresholds are exact as float32 (see `float32_floor`); full-depth trees have pure leaves, whose
        probabilities 0 and 1 are stored as bytes. Boosting's leaf values (log-odds) stay float64, and its
        baseline marks the file as boosting.
        """
        leaf = self._depth_first_leaves()
        if leaf is None:
            raise ValueError("compact layout needs depth-first node order (left child = next node)")
        tree_start = np.repeat(self.roots.astype(np.int64), np.diff(np.append(self.roots, self.feature.size)))
        leaf_values = np.where(leaf, self.leaf_value, 0.0)
        values: dict[str, Any]  # Any: numpy's stubs type savez's keyword arguments as its `allow_pickle` flag
        if self.aggregate == "logistic":
            values = {"leaf_value": leaf_values.astype(np.float64), "baseline": np.asarray(self.baseline, np.float64)}
        else:
            pure = bool(np.all((leaf_values == 0.0) | (leaf_values == 1.0)))
            values = {"p_positive": leaf_values.astype(np.uint8 if pure else np.float32)}
        np.savez_compressed(
            path,
            roots=self.roots,
            feature=self.feature.astype(np.uint8 if self.n_features <= 256 else np.uint16),
            threshold=float32_floor(self.threshold),
            right=np.where(leaf, _LEAF, self.right - tree_start).astype(np.int32),
            shape=np.asarray([self.n_features, self.max_depth], dtype=np.int64),
            **values,
        )

    @classmethod
    def load(cls, path: Path) -> PackedForest:
        with np.load(path, allow_pickle=False) as arrays:
            n_features, max_depth = (int(value) for value in arrays["shape"])
            if "left" in arrays:  # the original layout (models written before the compact one)
                forest = cls(
                    roots=arrays["roots"],
                    feature=arrays["feature"],
                    threshold=arrays["threshold"],
                    left=arrays["left"],
                    right=arrays["right"],
                    leaf_value=arrays["p_positive"],
                    n_features=n_features,
                    max_depth=max_depth,
                )
            else:
                forest = cls._from_compact(arrays, n_features, max_depth, path)
        nodes = forest.feature.size
        for name in ("threshold", "left", "right", "leaf_value"):
            if getattr(forest, name).shape != (nodes,):
                raise ValueError(f"{path}: array {name!r} does not match the node count {nodes}")
        if nodes and (forest.left.max() >= nodes or forest.right.max() >= nodes or forest.feature.max() >= n_features):
            raise ValueError(f"{path}: node indices out of range")
        return forest

    @classmethod
    def _from_compact(cls, arrays: Any, n_features: int, max_depth: int, path: Path) -> PackedForest:
        roots = arrays["roots"].astype(np.int32)
        right_local = arrays["right"].astype(np.int64)
        nodes = right_local.size
        boosted = "baseline" in arrays
        values_name = "leaf_value" if boosted else "p_positive"
        if boosted and not np.isfinite(arrays["baseline"]):
            raise ValueError(f"{path}: the boosting baseline is not a finite number")
        for name in ("feature", "threshold", values_name):
            if arrays[name].shape != (nodes,):
                raise ValueError(f"{path}: array {name!r} does not match the node count {nodes}")
        if roots.size and (roots[0] != 0 or np.any(np.diff(roots) <= 0) or roots[-1] >= nodes):
            raise ValueError(f"{path}: tree roots out of order or out of range")
        own = np.arange(nodes, dtype=np.int64)
        bounds = np.append(roots, nodes).astype(np.int64)
        tree_start = np.repeat(bounds[:-1], np.diff(bounds))
        tree_end = np.repeat(bounds[1:], np.diff(bounds))
        leaf = right_local == _LEAF
        right = np.where(leaf, own, right_local + tree_start)
        left = np.where(leaf, own, own + 1)
        # Children must lie inside their own tree, after their parent: no cycles, no walking off a tree.
        inner = ~leaf
        if np.any(right[inner] <= own[inner] + 1) or np.any(right[inner] >= tree_end[inner]):
            raise ValueError(f"{path}: node indices out of range")
        return cls(
            roots=roots,
            feature=arrays["feature"].astype(np.int32),
            threshold=arrays["threshold"].astype(np.float64),
            left=left.astype(np.int32),
            right=right.astype(np.int32),
            leaf_value=arrays[values_name].astype(np.float64 if boosted else np.float32),
            n_features=n_features,
            max_depth=max_depth,
            aggregate="logistic" if boosted else "mean",
            baseline=float(arrays["baseline"]) if boosted else 0.0,
        )
