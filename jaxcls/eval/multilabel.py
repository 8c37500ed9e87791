"""Multi-label metrics and per-class decision thresholds tuned on validation.

Targets and predictions are [N, C] 0/1 indicator matrices (row n carries label c when entry
(n, c) is 1). Probabilities are sigmoid outputs [N, C]; row n is predicted to carry label c when
probs[n, c] >= thresholds[c].
"""

from collections.abc import Sequence

import numpy as np

# The threshold of a class without a positive on validation, where F1 cannot pick one.
DEFAULT_THRESHOLD = 0.5


def _indicator(x: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"{name} must be an [N, C] indicator matrix, got shape {x.shape}")
    return (x == 1).astype(np.int64)


def multilabel_metrics(
    targets: np.ndarray, predicted: np.ndarray, label_names: Sequence[str]
) -> dict:
    """Micro/macro precision, recall and F1, subset accuracy, Hamming loss, per-class report.

    As ``classification_metrics`` does for single-label runs, the macro averages run over the
    classes that occur in ``targets`` or ``predicted`` (a test file without some label is not
    marked down for it), while every class gets a per-class row (support 0 and scores 0 when
    absent). Micro averages pool every (row, class) decision. ``subset_accuracy`` counts rows
    whose whole label set is right; ``hamming_loss`` is the share of wrong (row, class) entries.
    """
    y_true, y_pred = _indicator(targets, "targets"), _indicator(predicted, "predicted")
    if y_true.shape != y_pred.shape or y_true.shape[1] != len(label_names):
        raise ValueError(
            f"targets {y_true.shape} and predicted {y_pred.shape} must both be "
            f"[N, {len(label_names)}] (one column per label)"
        )
    p, r, f, support = _per_class(y_true, y_pred)
    n = y_true.shape[0]
    wrong = int(np.sum(y_true != y_pred))
    out: dict = {
        "num_samples": int(n),
        "subset_accuracy": float(np.mean(np.all(y_true == y_pred, axis=1))) if n else 0.0,
        "hamming_loss": wrong / y_true.size if y_true.size else 0.0,
    }
    # Micro: pooled counts, F1 = 2 TP / (predicted + true) over every (row, class) entry.
    tp, n_pred, n_true = int(np.sum(y_true & y_pred)), int(y_pred.sum()), int(y_true.sum())
    out["micro_precision"] = tp / n_pred if n_pred else 0.0
    out["micro_recall"] = tp / n_true if n_true else 0.0
    out["micro_f1"] = 2 * tp / (n_pred + n_true) if n_pred + n_true else 0.0
    seen = y_true.any(axis=0) | y_pred.any(axis=0)
    for key, per_class in (("precision", p), ("recall", r), ("f1", f)):
        out[f"macro_{key}"] = float(np.mean(per_class[seen])) if seen.any() else 0.0
    out["per_class"] = {
        name: {
            "precision": float(p[i]),
            "recall": float(r[i]),
            "f1": float(f[i]),
            "support": int(support[i]),
        }
        for i, name in enumerate(label_names)
    }
    return out


def _per_class(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[np.ndarray, ...]:
    """Per-class precision, recall, F1 and support, 0 where undefined."""
    tp = np.sum(y_true & y_pred, axis=0)
    n_pred, support = np.sum(y_pred, axis=0), np.sum(y_true, axis=0)
    precision = np.divide(tp, n_pred, out=np.zeros(tp.shape), where=n_pred > 0)
    recall = np.divide(tp, support, out=np.zeros(tp.shape), where=support > 0)
    # F1 = 2 TP / (2 TP + FP + FN) = 2 TP / (predicted + true), 0 when both are 0.
    f1 = np.divide(2 * tp, n_pred + support, out=np.zeros(tp.shape), where=n_pred + support > 0)
    return precision, recall, f1, support


def best_f1_threshold(probs: np.ndarray, positive: np.ndarray) -> float:
    """The threshold on one class's probabilities [N] that maximises F1 on ``positive`` [N].

    Predicting "p >= t", F1 only changes when t crosses one of the distinct probabilities
    u_1 > u_2 > ... > u_m; the cut after u_k (predict positive exactly the rows with p >= u_k)
    holds for every t in (u_{k+1}, u_k]. Of the cuts with the highest F1, the middle one is
    taken (the lower middle of an even number), and t is the midpoint of its interval, the
    value farthest from both neighbouring probabilities (u_{m+1} = 0 below the lowest). A class
    without a positive gets ``DEFAULT_THRESHOLD``.
    """
    probs = np.asarray(probs, np.float64)
    positive = np.asarray(positive) == 1
    n_pos = int(positive.sum())
    if n_pos == 0:
        return DEFAULT_THRESHOLD
    values, inverse = np.unique(-probs, return_inverse=True)  # descending probabilities
    values = -values
    # Positives and rows at each distinct value, then cumulated: TP and predicted count per cut.
    tp = np.cumsum(np.bincount(inverse, weights=positive.astype(np.float64), minlength=len(values)))
    n_pred = np.cumsum(np.bincount(inverse, minlength=len(values)))
    f1 = 2.0 * tp / (n_pred + n_pos)
    # Exact ties compare equal: IEEE division is correctly rounded, so equal ratios of integers
    # (e.g. 2/4 and 3/6) give the same double.
    best = np.flatnonzero(f1 == f1.max())
    k = int(best[(len(best) - 1) // 2])
    below = values[k + 1] if k + 1 < len(values) else 0.0
    return float((values[k] + below) / 2.0)


def tune_thresholds(probs: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Per-class thresholds [C] (float64) maximising each class's F1 on validation."""
    probs = np.asarray(probs, np.float64)
    y = _indicator(targets, "targets")
    if probs.shape != y.shape:
        raise ValueError(f"probs {probs.shape} and targets {y.shape} must have the same shape")
    return np.array([best_f1_threshold(probs[:, c], y[:, c]) for c in range(y.shape[1])])


def apply_thresholds(probs: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """[N, C] int64 0/1 predictions: probs[n, c] >= thresholds[c]."""
    probs = np.asarray(probs)
    return (probs >= np.asarray(thresholds)[None, :]).astype(np.int64)
