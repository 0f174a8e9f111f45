import numpy as np
import pytest
from sklearn.ensemble import ExtraTreesClassifier, HistGradientBoostingClassifier, RandomForestClassifier

from classifier.forest import PackedForest, float32_floor


@pytest.mark.parametrize("forest_class", [RandomForestClassifier, ExtraTreesClassifier])
def test_packed_forest_matches_sklearn(forest_class, tmp_path):
    rng = np.random.default_rng(0)
    rows = rng.normal(size=(400, 12)).astype(np.float32)
    labels = ((rows[:, 0] + rows[:, 3] * rows[:, 5] + rng.normal(scale=0.5, size=400)) > 0).astype(int)
    forest = forest_class(n_estimators=40, random_state=0).fit(rows, labels)
    packed = PackedForest.from_sklearn(forest)

    queries = rng.normal(size=(64, 12)).astype(np.float32)
    expected = forest.predict_proba(queries)[:, 1]
    np.testing.assert_allclose(packed.predict_proba(queries), expected, atol=1e-6)

    packed.save(tmp_path / "forest.npz")
    loaded = PackedForest.load(tmp_path / "forest.npz")
    np.testing.assert_allclose(loaded.predict_proba(queries), expected, atol=1e-6)


def test_packed_forest_rejects_wrong_width():
    rows = np.eye(4, dtype=np.float32)
    forest = RandomForestClassifier(n_estimators=3, random_state=0).fit(rows, [0, 1, 0, 1])
    with pytest.raises(ValueError, match=r"\(n, 4\)"):
        PackedForest.from_sklearn(forest).predict_proba(np.zeros((2, 5), dtype=np.float32))


def _fitted(n_estimators: int = 3) -> PackedForest:
    rows = np.eye(4, dtype=np.float32)
    forest = RandomForestClassifier(n_estimators=n_estimators, random_state=0).fit(rows, [0, 1, 0, 1])
    return PackedForest.from_sklearn(forest)


def _rewrite(path, **changes) -> None:
    with np.load(path) as arrays:
        contents = {name: arrays[name] for name in arrays.files}
    contents.update(changes)
    np.savez_compressed(path, **contents)


@pytest.mark.parametrize("right", [10_000, 0, 1])  # past the tree, a cycle back to the root, the left child
def test_packed_forest_load_rejects_out_of_range_nodes(tmp_path, right):
    _fitted().save(tmp_path / "bad.npz")
    with np.load(tmp_path / "bad.npz") as arrays:
        broken = arrays["right"].copy()
    assert broken[0] != -1, "the first tree's root must be an inner node for this check"
    broken[0] = right
    _rewrite(tmp_path / "bad.npz", right=broken)
    with pytest.raises(ValueError, match="out of range"):
        PackedForest.load(tmp_path / "bad.npz")


def test_packed_forest_load_rejects_mismatched_arrays(tmp_path):
    _fitted().save(tmp_path / "bad.npz")
    _rewrite(tmp_path / "bad.npz", threshold=np.zeros(2, dtype=np.float32))
    with pytest.raises(ValueError, match="node count"):
        PackedForest.load(tmp_path / "bad.npz")


def test_float32_thresholds_decide_exactly_like_float64():
    rng = np.random.default_rng(1)
    inputs = rng.normal(size=20_000).astype(np.float32)
    # Thresholds halfway between neighbouring float32 values: the case where plain rounding would flip.
    neighbours = np.nextafter(inputs, np.float32(np.inf))
    thresholds = (inputs.astype(np.float64) + neighbours.astype(np.float64)) / 2
    stored = float32_floor(thresholds)
    for probe in (inputs, neighbours):
        np.testing.assert_array_equal(probe <= thresholds, probe <= stored)
    assert np.all(stored.astype(np.float64) <= thresholds)


def test_compact_file_is_smaller_and_predicts_the_same(tmp_path):
    rng = np.random.default_rng(2)
    rows = rng.normal(size=(2000, 30)).astype(np.float32)
    labels = (rows[:, 0] + rng.normal(scale=0.7, size=2000) > 0).astype(int)
    forest = ExtraTreesClassifier(n_estimators=30, random_state=0).fit(rows, labels)
    packed = PackedForest.from_sklearn(forest)
    packed.save(tmp_path / "compact.npz")
    np.savez_compressed(  # the original layout, as models written before the compact one have it
        tmp_path / "original.npz",
        roots=packed.roots,
        feature=packed.feature,
        threshold=packed.threshold,
        left=packed.left,
        right=packed.right,
        p_positive=packed.leaf_value,
        shape=np.asarray([packed.n_features, packed.max_depth]),
    )
    assert (tmp_path / "compact.npz").stat().st_size < 0.7 * (tmp_path / "original.npz").stat().st_size
    queries = rng.normal(size=(500, 30)).astype(np.float32)
    expected = forest.predict_proba(queries)[:, 1]
    for name in ("compact.npz", "original.npz"):
        np.testing.assert_allclose(PackedForest.load(tmp_path / name).predict_proba(queries), expected, atol=1e-6)


def test_early_exit_walk_equals_the_fixed_depth_walk():
    # Bootstrapped trees on four rows: some trees are a single leaf, others split once or twice.
    tiny = _fitted(n_estimators=20)
    assert np.any(tiny.left[tiny.roots] == tiny.roots), "the check needs trees that are only a leaf"
    queries = np.random.default_rng(3).normal(size=(50, 4)).astype(np.float32)
    np.testing.assert_array_equal(tiny.predict_proba(queries), tiny._predict_fixed_depth(queries))

    rng = np.random.default_rng(4)
    rows = rng.normal(size=(1500, 20)).astype(np.float32)
    labels = (rows[:, 1] * rows[:, 2] + rng.normal(scale=0.3, size=1500) > 0).astype(int)
    packed = PackedForest.from_sklearn(ExtraTreesClassifier(n_estimators=25, random_state=0).fit(rows, labels))
    for batch in (1, 7, 64):
        queries = rng.normal(size=(batch, 20)).astype(np.float32)
        np.testing.assert_array_equal(packed.predict_proba(queries), packed._predict_fixed_depth(queries))


def _boosting_data(seed: int = 5) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    rows = rng.normal(size=(1500, 15)).astype(np.float32)
    labels = (rows[:, 0] + rows[:, 3] * rows[:, 5] + rng.normal(scale=0.5, size=1500) > 0).astype(int)
    return rows, labels


def test_packed_boosting_matches_sklearn(tmp_path):
    rows, labels = _boosting_data()
    boosting = HistGradientBoostingClassifier(max_iter=60, max_leaf_nodes=15, early_stopping=False, random_state=0)
    boosting.fit(rows, labels)
    packed = PackedForest.from_sklearn(boosting)
    assert packed.aggregate == "logistic" and packed.roots.size == 60
    queries = np.random.default_rng(6).normal(size=(300, 15)).astype(np.float32)
    expected = boosting.predict_proba(queries)[:, 1]
    assert expected.std() > 0.05, "the check needs probabilities that vary"
    np.testing.assert_allclose(packed.predict_proba(queries), expected, rtol=0, atol=1e-12)
    np.testing.assert_allclose(packed._predict_fixed_depth(queries), expected, rtol=0, atol=1e-12)

    packed.save(tmp_path / "boosting.npz")
    loaded = PackedForest.load(tmp_path / "boosting.npz")
    assert (loaded.aggregate, loaded.baseline) == ("logistic", packed.baseline)
    np.testing.assert_array_equal(loaded.predict_proba(queries), packed.predict_proba(queries))


def test_packed_boosting_load_rejects_a_broken_baseline(tmp_path):
    rows, labels = _boosting_data()
    boosting = HistGradientBoostingClassifier(max_iter=5, early_stopping=False, random_state=0).fit(rows, labels)
    PackedForest.from_sklearn(boosting).save(tmp_path / "bad.npz")
    _rewrite(tmp_path / "bad.npz", baseline=np.float64(np.nan))
    with pytest.raises(ValueError, match="baseline"):
        PackedForest.load(tmp_path / "bad.npz")


def test_packed_boosting_refuses_categorical_splits():
    rows, labels = _boosting_data()
    rows[:, 2] = np.round(np.abs(rows[:, 2]) * 3)
    boosting = HistGradientBoostingClassifier(max_iter=5, categorical_features=[2], random_state=0)
    with pytest.raises(ValueError, match="categorical"):
        PackedForest.from_sklearn(boosting.fit(rows, labels))
