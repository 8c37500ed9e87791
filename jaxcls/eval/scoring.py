"""Run a model over a whole dataset and score it (validation during training, eval.py)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from scipy.special import log_expit, log_softmax

from jaxcls import runtime
from jaxcls.config import VALIDATION_METRICS
from jaxcls.data import batches
from jaxcls.data.long_text import average_by_row
from jaxcls.eval import metrics, multilabel
from jaxcls.eval.calibration import sigmoid

# A change of the logits before scoring (the n-gram blend): logits [n, C] -> logits [n, C].
Adjust = Callable[[np.ndarray], np.ndarray]


def run_dataset(
    predict: Callable[[batches.Batch], dict], dataset: batches.Dataset, batch_size: int, pad: int,
    max_length: int,
) -> dict[str, np.ndarray]:  # fmt: skip
    """Logits [n, C], features [n, F] and per-sample NLL [n] for every row, in order.

    ``predict(batch)`` runs the eval step on a host batch (placing it on the devices). A
    dataset of windows (``dataset.row_index``) gives one entry per row: ``by_row``.
    """
    outs: dict[str, list[np.ndarray]] = {"logits": [], "features": [], "nll": []}
    # Each batch's scratch is mapped and unmapped: kept in the tuned heap (which pays off
    # over thousands of training steps), small allocations between batches fragment it and
    # the next batch's scratch no longer fits (eval.py at 1.7B: +0.45 GB, now and then).
    with runtime.large_blocks_unmapped_on_free():
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
    nll = np.zeros(n, np.float32) if labels is None else row_nll(logits, labels)
    return {"logits": logits, "features": features, "nll": nll.astype(np.float32)}


def row_nll(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per-row NLL in float64, as the eval step's ``objectives.nll``: cross-entropy of class
    indices [n], or the binary cross-entropy summed over labels of indicators [n, C]."""
    z = np.asarray(logits, np.float64)
    if labels.ndim == 2:
        return -np.sum(np.where(labels == 1, log_expit(z), log_expit(-z)), axis=-1)
    return -log_softmax(z, axis=-1)[np.arange(len(labels)), labels]


def score(
    outputs: dict[str, np.ndarray], labels: np.ndarray, label_names: list[str],
    thresholds: np.ndarray | None = None, temperature: Any = None,
) -> dict:  # fmt: skip
    """Loss, accuracy, F1s, per-class report and feature-space metrics.

    Multi-label (``labels`` [n, C] indicators): loss, micro/macro F1, subset accuracy, Hamming
    loss and the per-class report of ``multilabel.multilabel_metrics``, label c predicted where
    sigmoid(logit_c / T_c) >= ``thresholds[c]`` (default 0.5 for every label; T_c: the label's
    ``temperature``, default 1), which the result keeps.
    """
    if labels.ndim == 2:
        cut = np.full(len(label_names), 0.5) if thresholds is None else np.asarray(thresholds)
        probs = sigmoid(outputs["logits"], 1.0 if temperature is None else temperature)
        predicted = multilabel.apply_thresholds(probs, cut)
        result = multilabel.multilabel_metrics(labels, predicted, label_names)
        result["loss"] = float(outputs["nll"].mean())
        result["thresholds"] = dict(zip(label_names, cut.tolist(), strict=True))
        return result
    predicted = outputs["logits"].argmax(axis=-1)
    result = metrics.classification_metrics(labels, predicted, label_names)
    result["loss"] = float(outputs["nll"].mean())
    feats = metrics.feature_metrics(outputs["features"], labels, num_classes=len(label_names))
    result.update(feats)
    return result


def evaluate(
    predict: Callable[[batches.Batch], dict], dataset: batches.Dataset, batch_size: int, pad: int,
    max_length: int, label_names: list[str], thresholds: np.ndarray | None = None,
    temperature: Any = None, adjust: Adjust | None = None,
) -> tuple[dict, dict[str, np.ndarray]]:  # fmt: skip
    """(``score`` of the model on a labelled dataset, its raw ``run_dataset`` outputs); with
    ``adjust``, of the adjusted logits (and their NLL), the model's own logits kept in the raw
    outputs as ``unadjusted_logits``."""
    raw = run_dataset(predict, dataset, batch_size, pad, max_length)
    if adjust is not None:
        logits = adjust(raw["logits"])
        nll = row_nll(logits, dataset.row_labels).astype(np.float32)
        raw = {**raw, "logits": logits, "nll": nll, "unadjusted_logits": raw["logits"]}
    return score(raw, dataset.row_labels, label_names, thresholds, temperature), raw


SCALARS = VALIDATION_METRICS


def scalars(result: dict, prefix: str = "") -> dict[str, float]:
    """The scalar metrics of ``score`` (for metrics.jsonl and best-checkpoint choice)."""
    out = {}
    for key in SCALARS:
        value = result.get(key)
        if value is not None:
            out[f"{prefix}{key}"] = float(value)
    return out
