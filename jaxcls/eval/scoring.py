"""Run a model over a whole dataset and score it (validation during training, eval.py)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

from jaxcls.data import batches
from jaxcls.eval import metrics
from jaxcls.train import sharding

PyTree = Any


def run_dataset(
    eval_step: Callable,
    trainable: PyTree,
    frozen: PyTree,
    dataset: batches.Dataset,
    batch_size: int,
    pad: int,
    max_length: int,
    mesh: Mesh,
) -> dict[str, np.ndarray]:
    """Logits [n, C], features [n, F] and per-sample NLL [n] for every sample, in order."""
    outs: dict[str, list[np.ndarray]] = {"logits": [], "features": [], "nll": []}
    for batch in batches.eval_batches(dataset, batch_size, pad, max_length):
        keep = batch["valid"] > 0
        result = eval_step(trainable, frozen, sharding.put_batch(batch, mesh))
        result = jax.device_get(result)
        for key in outs:
            outs[key].append(np.asarray(result[key])[keep])
    return {k: np.concatenate(v) for k, v in outs.items()}


def score(outputs: dict[str, np.ndarray], labels: np.ndarray, label_names: list[str]) -> dict:
    """Loss, accuracy, F1s, per-class report and feature-space metrics."""
    predicted = outputs["logits"].argmax(axis=-1)
    result = metrics.classification_metrics(labels, predicted, label_names)
    result["loss"] = float(outputs["nll"].mean())
    feats = metrics.feature_metrics(outputs["features"], labels, num_classes=len(label_names))
    result.update(feats)
    return result


SCALARS = (
    "loss",
    "accuracy",
    "macro_f1",
    "weighted_f1",
    "intra_sim",
    "inter_sim",
    "sim_gap",
    "silhouette",
)


def scalars(result: dict, prefix: str = "") -> dict[str, float]:
    """The scalar metrics of ``score`` (for metrics.jsonl and best-checkpoint choice)."""
    out = {}
    for key in SCALARS:
        value = result.get(key)
        if value is not None:
            out[f"{prefix}{key}"] = float(value)
    return out
