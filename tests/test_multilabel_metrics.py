"""jaxcls.eval.multilabel against sklearn.metrics, and thresholds on cases with a known optimum."""

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score, hamming_loss, precision_recall_fscore_support

from jaxcls.eval.multilabel import (
    DEFAULT_THRESHOLD,
    apply_thresholds,
    best_f1_threshold,
    multilabel_metrics,
    tune_thresholds,
)

NAMES = ["billing", "refund", "shipping", "退货", "other", "spam", "never"]


def make_case(seed, n=23):
    rng = np.random.default_rng(seed)
    y_true = (rng.random((n, len(NAMES))) < 0.3).astype(int)
    y_pred = np.where(rng.random(y_true.shape) < 0.8, y_true, 1 - y_true)
    y_true[:, -1] = y_pred[:, -1] = 0  # a class that occurs nowhere
    y_true[:, -2] = 0  # a class only ever predicted
    y_true[0] = 0  # a row without labels
    return y_true, y_pred


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_multilabel_metrics_match_sklearn(seed):
    y_true, y_pred = make_case(seed)
    got = multilabel_metrics(y_true, y_pred, NAMES)
    assert got["num_samples"] == len(y_true)
    assert got["subset_accuracy"] == pytest.approx(accuracy_score(y_true, y_pred))
    assert got["hamming_loss"] == pytest.approx(hamming_loss(y_true, y_pred))
    seen = [c for c in range(len(NAMES)) if y_true[:, c].any() or y_pred[:, c].any()]
    assert seen == list(range(len(NAMES) - 1))
    for average in ("micro", "macro"):
        p, r, f, _ = precision_recall_fscore_support(
            y_true, y_pred, labels=seen, average=average, zero_division=0
        )
        assert got[f"{average}_precision"] == pytest.approx(p)
        assert got[f"{average}_recall"] == pytest.approx(r)
        assert got[f"{average}_f1"] == pytest.approx(f)
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, average=None, zero_division=0)
    for c, name in enumerate(NAMES):
        row = got["per_class"][name]
        assert row == pytest.approx(
            {"precision": p[c], "recall": r[c], "f1": f[c], "support": s[c]}
        )
    assert got["per_class"]["never"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}


def test_multilabel_metrics_edge_cases():
    empty = multilabel_metrics(np.zeros((0, 2)), np.zeros((0, 2)), ["a", "b"])
    assert empty["num_samples"] == 0 and empty["macro_f1"] == 0.0 and empty["micro_f1"] == 0.0
    nothing = multilabel_metrics(np.zeros((3, 2)), np.zeros((3, 2)), ["a", "b"])
    assert nothing["subset_accuracy"] == 1.0 and nothing["hamming_loss"] == 0.0
    perfect = multilabel_metrics(np.eye(3), np.eye(3), ["a", "b", "c"])
    assert perfect["macro_f1"] == perfect["micro_f1"] == perfect["subset_accuracy"] == 1.0
    with pytest.raises(ValueError, match="one column per label"):
        multilabel_metrics(np.zeros((3, 2)), np.zeros((3, 2)), ["a", "b", "c"])


def test_tune_thresholds_known_optima():
    # Columns: separable; no positive; best cut drops one negative (F1 6/7); every row positive;
    # three cuts tie at F1 2/3 (after 0.9, 0.6 and 0.3), and the middle one (0.6) is taken.
    cols = [
        ([0.9, 0.8, 0.3, 0.1], [1, 1, 0, 0], (0.8 + 0.3) / 2),
        ([0.9, 0.8, 0.3, 0.1], [0, 0, 0, 0], DEFAULT_THRESHOLD),
        ([0.9, 0.7, 0.6, 0.4, 0.2], [1, 0, 1, 1, 0], (0.4 + 0.2) / 2),
        ([0.6, 0.2], [1, 1], 0.2 / 2),
        ([0.95, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3], [1, 1, 0, 0, 1, 0, 0, 1], (0.6 + 0.5) / 2),
    ]
    for probs, positive, expected in cols:
        assert best_f1_threshold(np.array(probs), np.array(positive)) == pytest.approx(expected)
    # Order, duplicated probabilities (a mixed group is cut whole) and the matrix form.
    probs = np.array([[0.1, 0.5], [0.9, 0.5], [0.3, 0.5], [0.8, 0.2]])
    targets = np.array([[0, 1], [1, 0], [0, 1], [1, 0]])
    thresholds = tune_thresholds(probs, targets)
    # Column 1: cutting at 0.5 (tp 2, predicted 3) gives F1 4/5; at 0.2, 4/6.
    np.testing.assert_allclose(thresholds, [(0.8 + 0.3) / 2, (0.5 + 0.2) / 2])
    np.testing.assert_array_equal(
        apply_thresholds(probs, thresholds), [[0, 1], [1, 1], [0, 1], [1, 0]]
    )


@pytest.mark.parametrize("seed", range(5))
def test_tuned_threshold_reaches_the_best_f1_of_any_threshold(seed):
    rng = np.random.default_rng(seed)
    probs = np.round(rng.random((40, 4)), 1)  # rounding makes ties and mixed groups
    targets = (rng.random((40, 4)) < probs).astype(int)
    thresholds = tune_thresholds(probs, targets)
    for c in range(4):
        # "p >= t" only changes as t crosses a probability, so these cover every threshold.
        grid = [*np.unique(probs[:, c]), 1.1]
        best = max(f1_score(targets[:, c], probs[:, c] >= t, zero_division=0) for t in grid)
        tuned = f1_score(targets[:, c], probs[:, c] >= thresholds[c], zero_division=0)
        assert tuned == pytest.approx(best)
        # The midpoint of its interval: no validation probability lies on it.
        assert not np.any(np.isclose(probs[:, c], thresholds[c]))
