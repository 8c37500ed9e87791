"""Classification metrics and feature-space metrics on pooled features."""

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    precision_recall_fscore_support,
    silhouette_score,
)


def classification_metrics(
    y_true: Sequence[int], y_pred: Sequence[int], label_names: Sequence[str]
) -> dict:
    """Accuracy, macro/weighted precision, recall and F1, per-class report, confusion matrix.

    Labels are indices into `label_names`. Every class gets a per-class row and a confusion row
    (support 0 and scores 0 when absent); the macro and weighted averages, as in scikit-learn's
    default, run over the classes that occur in `y_true` or `y_pred`, so a test file without some
    class is not marked down for it. `confusion_matrix[i][j]` counts true class i predicted as j.
    """
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    labels = list(range(len(label_names)))
    out = {"accuracy": float(accuracy_score(y_true, y_pred)), "num_samples": len(y_true)}
    seen = sorted(set(y_true.tolist()) | set(y_pred.tolist()))
    for average in ("macro", "weighted"):
        p, r, f, _ = precision_recall_fscore_support(
            y_true, y_pred, labels=seen, average=average, zero_division=0
        )
        out[f"{average}_precision"], out[f"{average}_recall"] = float(p), float(r)
        out[f"{average}_f1"] = float(f)
    p, r, f, s = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, average=None, zero_division=0
    )
    out["per_class"] = {
        name: {
            "precision": float(p[i]),
            "recall": float(r[i]),
            "f1": float(f[i]),
            "support": int(s[i]),
        }
        for i, name in enumerate(label_names)
    }
    out["confusion_matrix"] = confusion_matrix(y_true, y_pred, labels=labels).tolist()
    return out


def feature_metrics(
    features: np.ndarray,
    labels: Sequence[int],
    num_classes: int | None = None,
    max_silhouette_points: int = 5000,
    seed: int = 0,
) -> dict:
    """Cosine-similarity structure of features [n, d] grouped by integer labels.

    Returns `intra_sim` (mean cosine over distinct same-class pairs), `inter_sim` (mean over
    different-class pairs), `sim_gap` (intra - inter), `silhouette` (scikit-learn, cosine
    distance, on a seeded subsample of at most `max_silhouette_points`), and
    `centroid_similarity` (C x C cosine between class means of the normalised features).
    A value that is undefined for the data (no same-class pair, a single class, fewer than
    3 points) is None; a class absent from `labels` has None in its centroid row and column.
    Pair means are computed from per-class sums, O(n d) time and memory.
    """
    x = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    num_classes = int(y.max()) + 1 if num_classes is None else num_classes
    z = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    sums = np.eye(num_classes)[y].T @ z  # [C, d] per-class sums of unit vectors
    counts = np.bincount(y, minlength=num_classes).astype(np.float64)
    self_sims = np.bincount(y, weights=np.einsum("nd,nd->n", z, z), minlength=num_classes)

    # Sum of s_ij over ordered pairs i != j of class c = ||sum_c z||^2 - sum_c ||z_i||^2.
    intra_total = float(np.sum(np.einsum("cd,cd->c", sums, sums) - self_sims))
    intra_pairs = float(np.sum(counts * (counts - 1)))
    all_sum = sums.sum(axis=0)
    all_total = float(all_sum @ all_sum - self_sims.sum())
    n = float(len(y))
    inter_pairs = n * (n - 1) - intra_pairs
    intra = intra_total / intra_pairs if intra_pairs > 0 else None
    inter = (all_total - intra_total) / inter_pairs if inter_pairs > 0 else None
    gap = intra - inter if intra is not None and inter is not None else None

    present = counts > 0
    centroids = sums / np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), 1e-12)
    sim = centroids @ centroids.T
    centroid_similarity = [
        [float(sim[i, j]) if present[i] and present[j] else None for j in range(num_classes)]
        for i in range(num_classes)
    ]
    return {
        "intra_sim": intra,
        "inter_sim": inter,
        "sim_gap": gap,
        "silhouette": _silhouette(z, y, max_silhouette_points, seed),
        "centroid_similarity": centroid_similarity,
    }


def _silhouette(z: np.ndarray, y: np.ndarray, max_points: int, seed: int) -> float | None:
    if len(y) > max_points:
        keep = np.random.default_rng(seed).choice(len(y), size=max_points, replace=False)
        z, y = z[keep], y[keep]
    # scikit-learn defines the score only for 2 <= number of labels <= n - 1.
    if not 2 <= len(np.unique(y)) <= len(y) - 1:
        return None
    return float(silhouette_score(z, y, metric="cosine"))
