import numpy as np
import pytest
from sklearn.ensemble import ExtraTreesClassifier, RandomForestClassifier

from classifier.forest import PackedForest


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


def test_packed_forest_load_rejects_out_of_range_nodes(tmp_path):
    rows = np.eye(4, dtype=np.float32)
    packed = PackedForest.from_sklearn(RandomForestClassifier(n_estimators=3, random_state=0).fit(rows, [0, 1, 0, 1]))
    packed.left[0] = 10_000
    packed.save(tmp_path / "bad.npz")
    with pytest.raises(ValueError, match="out of range"):
        PackedForest.load(tmp_path / "bad.npz")
