"""The n-gram blend: the network's class probabilities mixed with an n-gram model's.

After training, a TF-IDF n-gram + logistic-regression model (``jaxcls.model.ngram``) is fitted
on the training texts, and the two models' log-probabilities are mixed,
``(1 - w) * log_softmax(logits) + w * log p_ngram`` (a weighted geometric mean of their
probabilities), with ``w`` the grid value with the best validation accuracy (ties: the smaller
``w``; 0 = the network alone). The mix is returned as logits, so the temperature, metrics and
reports that follow treat it as the model's output. A run keeps the n-gram model in
``RUN/ngram.npz`` and the weight in ``RUN/blend.json``, tied to the checkpoint it was chosen for.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy.special import log_softmax

from jaxcls.errors import UserError
from jaxcls.files import write_text_atomic
from jaxcls.model import ngram

log = logging.getLogger("jaxcls")

BLEND = "blend.json"
NGRAM = "ngram.npz"
# The weights tried on validation.
WEIGHTS = tuple(np.round(np.linspace(0.0, 1.0, 21), 2).tolist())


@dataclasses.dataclass(frozen=True)
class Blend:
    """An n-gram model and its weight ``w`` in the mix."""

    ngram: ngram.NgramClassifier
    weight: float

    def logits(self, logits: np.ndarray, texts: Sequence[str]) -> np.ndarray:
        """The mix of the network's ``logits`` [n, C] for ``texts`` with the n-gram model's."""
        return mix(logits, self.ngram.log_proba(texts), self.weight)


def mix(logits: np.ndarray, ngram_log_proba: np.ndarray, weight: float) -> np.ndarray:
    """``(1 - weight) * log_softmax(logits) + weight * ngram_log_proba`` as float32 logits."""
    network = log_softmax(np.asarray(logits, np.float64), axis=-1)
    return ((1.0 - weight) * network + weight * ngram_log_proba).astype(np.float32)


def choose_weight(
    logits: np.ndarray, ngram_log_proba: np.ndarray, labels: np.ndarray
) -> tuple[float, dict[str, float]]:
    """(the weight in ``WEIGHTS`` with the best accuracy on these labelled rows, ties going to
    the smaller, and the accuracies of the network, the n-gram model and the mix)."""
    scores = [
        float(np.mean(mix(logits, ngram_log_proba, w).argmax(axis=-1) == labels)) for w in WEIGHTS
    ]
    best = int(np.argmax(scores))  # the first of equal maxima: the smallest weight
    accuracies = {"network": scores[0], "ngram": scores[-1], "blend": scores[best]}
    return WEIGHTS[best], accuracies


def fit(
    texts: Sequence[str],
    labels: np.ndarray,
    val_texts: Sequence[str],
    val_labels: np.ndarray,
    val_logits: np.ndarray,
    seed: int = 0,
) -> tuple[Blend, dict[str, float], np.ndarray] | None:
    """Fit the n-gram model on the training texts and choose its weight on validation, where
    the network gave ``val_logits`` [n, C]: (the blend, validation accuracies as
    ``choose_weight``, the blend's validation logits); None when there is no n-gram model to
    fit (``ngram.fit``)."""
    model = ngram.fit(texts, labels, val_texts, val_labels, val_logits.shape[1], seed)
    if model is None:
        return None
    val_log_proba = model.log_proba(val_texts)
    weight, accuracies = choose_weight(val_logits, val_log_proba, val_labels)
    return Blend(model, weight), accuracies, mix(val_logits, val_log_proba, weight)


def save(workdir: Path, blend: Blend, record: dict[str, Any]) -> None:
    """Write ``ngram.npz`` and then ``blend.json`` (``record`` plus the weight), both atomic."""
    blend.ngram.save(workdir / NGRAM)
    text = json.dumps({"weight": blend.weight, **record}, indent=1, ensure_ascii=False)
    write_text_atomic(workdir / BLEND, text + "\n")


def remove(workdir: Path) -> None:
    """Delete a run's blend (its weight first, so a half-deleted blend is no blend)."""
    (workdir / BLEND).unlink(missing_ok=True)
    (workdir / NGRAM).unlink(missing_ok=True)


def load(workdir: Path, step: int | None) -> Blend | None:
    """The run's blend for checkpoint ``step``; None when it has none, its weight is 0, or it
    was chosen for another checkpoint (logged: the network alone then)."""
    weight = read_weight(workdir, step)
    return None if weight is None else Blend(ngram.load(Path(workdir) / NGRAM), weight)


def read_weight(workdir: Path, step: int | None) -> float | None:
    """The weight of the run's blend for checkpoint ``step`` (blend.json alone), None where
    ``load`` gives None."""
    path = Path(workdir) / BLEND
    if step is None or not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        weight, chosen_for = float(record["weight"]), int(record["checkpoint_step"])
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise UserError(
            f"{path}: not a blend file ({type(e).__name__}: {e}); delete it to use the network "
            "alone"
        ) from None
    if not 0.0 <= weight <= 1.0:
        raise UserError(f"{path}: weight {weight} is not in [0, 1]; delete the file")
    if chosen_for != step:
        log.warning(
            "%s: the n-gram blend was chosen for checkpoint %d, not %d; the network alone "
            "predicts", path, chosen_for, step,
        )  # fmt: skip
        return None
    return None if weight == 0.0 else weight
