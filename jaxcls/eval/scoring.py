"""Run a model over a whole dataset and score it (validation during training, eval.py)."""

from __future__ import annotations

from collections.abc import Callable

import jax
import numpy as np
from scipy.special import log_softmax

from jaxcls.config import VALIDATION_METRICS
from jaxcls.data import batches
from jaxcls.data.long_text import average_by_row
from jaxcls.eval import metrics


def run_dataset(
    predict: Callable[[batches.Batch], dict], dataset: batches.Dataset, batch_size: int, pad: int,
    max_length: int,
) -> dict[str, np.ndarray]:  # fmt: skip
    """Logits [n, C], features [n, F] and per-sample NLL [n] for every row, in order.

    ``predict(batch)`` runs the eval step on a host batch (placing it on the devices). A
    dataset of windows (``dataset.row_index``) gives one entry per row: ``by_row``.
    """
    outs: dict[str, list[np.ndarray]] = {"logits": [], "features": [], "nll": []}
    for batch in batches.eval_batches(dataset, batch_size, pad, max_length):
        keep = batch["valid"] > 0
        result = jax.device_get(predict(batch))
        for key in outs:
            outs[key].append(np.asarray(result[key])[keep])
    raw = {k: np.concatenate(v) for k, v in outs.items()}
    return raw if dataset.row_index is None else by_row(raw, dataset)


def by_row(raw: dict[str, np.ndarray], dataset: batches.Dataset) -> dict[str, np.ndarray]:
    """Window outputs to row outputs: the mean of each row's window logits and features, and
    the NLL of the averaged logits (0 without labels)."""
    n, rows = dataset.n_rows, dataset.row_index
    logits = average_by_row(raw["logits"], rows, n)
    features = average_by_row(raw["features"], rows, n)
    labels = dataset.row_labels
    nll = np.zeros(n, np.float32)
    if labels is not None:
        nll = -log_softmax(logits.astype(np.float64), axis=-1)[np.arange(n), labels]
    return {"logits": logits, "features": features, "nll": nll.astype(np.float32)}


def score(outputs: dict[str, np.ndarray], labels: np.ndarray, label_names: list[str]) -> dict:
    """Loss, accuracy, F1s, per-class report and feature-space metrics."""
    predicted = outputs["logits"].argmax(axis=-1)
    result = metrics.classification_metrics(labels, predicted, label_names)
    result["loss"] = float(outputs["nll"].mean())
    feats = metrics.feature_metrics(outputs["features"], labels, num_classes=len(label_names))
    result.update(feats)
    return result


def evaluate(
    predict: Callable[[batches.Batch], dict], dataset: batches.Dataset, batch_size: int, pad: int,
    max_length: int, label_names: list[str],
) -> tuple[dict, dict[str, np.ndarray]]:  # fmt: skip
    """(``score`` of the model on a labelled dataset, its raw ``run_dataset`` outputs)."""
    raw = run_dataset(predict, dataset, batch_size, pad, max_length)
    return score(raw, dataset.row_labels, label_names), raw


SCALARS = VALIDATION_METRICS


def scalars(result: dict, prefix: str = "") -> dict[str, float]:
    """The scalar metrics of ``score`` (for metrics.jsonl and best-checkpoint choice)."""
    out = {}
    for key in SCALARS:
        value = result.get(key)
        if value is not None:
            out[f"{prefix}{key}"] = float(value)
    return out
