"""Classification and feature-space metrics against hand counts, NumPy loops and scikit-learn."""

import itertools

import numpy as np
import pytest
from sklearn.metrics import silhouette_score

from jaxcls.eval.metrics import classification_metrics, feature_metrics


def test_classification_metrics_match_hand_counts():
    y_true = [0, 0, 0, 1, 1, 2]
    y_pred = [0, 0, 1, 1, 2, 2]
    m = classification_metrics(y_true, y_pred, ["a", "b", "c"])
    # Per class (tp, fp, fn): a (2, 0, 1), b (1, 1, 1), c (1, 1, 0).
    f1 = {"a": 2 * 1 * (2 / 3) / (1 + 2 / 3), "b": 0.5, "c": 2 * 0.5 * 1 / 1.5}
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["num_samples"] == 6
    assert m["per_class"]["a"] == pytest.approx(
        {"precision": 1.0, "recall": 2 / 3, "f1": f1["a"], "support": 3}
    )
    assert m["per_class"]["c"] == pytest.approx(
        {"precision": 0.5, "recall": 1.0, "f1": f1["c"], "support": 1}
    )
    assert m["macro_f1"] == pytest.approx(sum(f1.values()) / 3)
    assert m["macro_precision"] == pytest.approx((1 + 0.5 + 0.5) / 3)
    assert m["weighted_f1"] == pytest.approx((3 * f1["a"] + 2 * f1["b"] + f1["c"]) / 6)
    assert m["weighted_recall"] == pytest.approx(m["accuracy"])
    assert m["confusion_matrix"] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]


def test_classification_metrics_absent_class_gets_a_zero_row():
    y_true, y_pred = [0, 0, 1, 1], [0, 1, 1, 1]
    three = classification_metrics(y_true, y_pred, ["a", "b"])
    four = classification_metrics(y_true, y_pred, ["a", "b", "c", "d"])
    assert four["per_class"]["d"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert four["confusion_matrix"][3] == [0, 0, 0, 0]
    assert len(four["confusion_matrix"]) == 4
    # Averages cover the classes that occur, so an absent class does not lower them.
    assert four["macro_f1"] == pytest.approx(three["macro_f1"])
    # A class that is predicted but never true does count (its precision is 0).
    wrong = classification_metrics([0, 0], [0, 2], ["a", "b", "c"])
    assert wrong["macro_precision"] == pytest.approx(0.5)


def _loop_reference(x, y, num_classes):
    z = x / np.linalg.norm(x, axis=1, keepdims=True)
    intra, inter = [], []
    for i, j in itertools.combinations(range(len(y)), 2):
        (intra if y[i] == y[j] else inter).append(float(z[i] @ z[j]))
    centroid = np.zeros((num_classes, num_classes))
    for a, b in itertools.product(range(num_classes), repeat=2):
        ca, cb = z[y == a].mean(axis=0), z[y == b].mean(axis=0)
        centroid[a, b] = ca @ cb / (np.linalg.norm(ca) * np.linalg.norm(cb))
    return np.mean(intra), np.mean(inter), centroid


def test_feature_metrics_match_a_pairwise_loop_and_sklearn():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 4, size=67)
    x = rng.normal(size=(4, 11))[y] + rng.normal(size=(67, 11)) * rng.uniform(0.1, 5, (67, 1))
    m = feature_metrics(x, y)
    intra, inter, centroid = _loop_reference(x, y, 4)
    assert m["intra_sim"] == pytest.approx(intra, abs=1e-10)
    assert m["inter_sim"] == pytest.approx(inter, abs=1e-10)
    assert m["sim_gap"] == pytest.approx(intra - inter, abs=1e-10)
    assert m["silhouette"] == pytest.approx(silhouette_score(x, y, metric="cosine"), abs=1e-10)
    np.testing.assert_allclose(np.array(m["centroid_similarity"]), centroid, atol=1e-10)


def test_feature_metrics_undefined_values_are_none():
    x = np.random.default_rng(0).normal(size=(5, 3))
    one_class = feature_metrics(x, [0] * 5)
    assert one_class["inter_sim"] is None and one_class["silhouette"] is None
    assert one_class["sim_gap"] is None and one_class["intra_sim"] is not None
    singletons = feature_metrics(x[:3], [0, 1, 2])
    assert singletons["intra_sim"] is None and singletons["silhouette"] is None
    absent = feature_metrics(x, [0, 0, 2, 2, 2])
    assert absent["centroid_similarity"][1] == [None, None, None]
    assert absent["centroid_similarity"][0][1] is None
    assert absent["centroid_similarity"][0][2] is not None


def test_feature_metrics_scale_with_class_sums_and_subsampled_silhouette():
    rng = np.random.default_rng(1)
    n, d = 8000, 32
    y = rng.integers(0, 5, size=n)
    x = rng.normal(size=(5, d))[y] + 2 * rng.normal(size=(n, d))
    m = feature_metrics(x, y, max_silhouette_points=400, seed=7)
    # Independent check: the same pair means from chunked blocks of the n x n similarity.
    z = x / np.linalg.norm(x, axis=1, keepdims=True)
    same_sum = all_sum = 0.0
    for start in range(0, n, 2000):
        block = z[start : start + 2000] @ z.T
        same = y[start : start + 2000, None] == y[None, :]
        all_sum += block.sum()
        same_sum += block[same].sum()
    same_pairs = float(np.sum(np.bincount(y) ** 2))
    intra = (same_sum - n) / (same_pairs - n)
    inter = (all_sum - same_sum) / (n * n - same_pairs)
    assert m["intra_sim"] == pytest.approx(intra, abs=1e-8)
    assert m["inter_sim"] == pytest.approx(inter, abs=1e-8)
    keep = np.random.default_rng(7).choice(n, size=400, replace=False)
    assert m["silhouette"] == pytest.approx(silhouette_score(z[keep], y[keep], metric="cosine"))
