"""The step's per-problem terms (jaxcls.train.objectives) against NumPy and sklearn."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import log_loss

from jaxcls.train import objectives
from jaxcls.train.settings import ContrastiveSettings, LossSettings

RNG = np.random.default_rng(0)
LOGITS = RNG.normal(size=(6, 3)).astype(np.float32) * 2
TARGETS = np.array([[1, 0, 1], [0, 0, 0], [0, 1, 0], [1, 1, 1], [0, 1, 1], [1, 0, 0]], np.int32)
VALID = np.array([1, 1, 1, 1, 1, 0], np.float32)


def test_multilabel_nll_is_binary_cross_entropy_summed_over_labels():
    got = np.asarray(objectives.nll(True, LOGITS, TARGETS))
    p = 1 / (1 + np.exp(-LOGITS.astype(np.float64)))
    for row in range(len(TARGETS)):
        per_label = [log_loss([TARGETS[row, c]], [p[row, c]], labels=[0, 1]) for c in range(3)]
        assert got[row] == pytest.approx(sum(per_label), rel=1e-5)


@pytest.mark.parametrize("kind", ["focal", "ce"])
def test_multilabel_classification_loss_and_subset_hits(kind):
    settings = LossSettings(classification=kind, focal_gamma=2.0, label_smoothing=0.0)
    mean, hits = objectives.classification(settings, True, LOGITS, TARGETS, VALID)
    p = 1 / (1 + np.exp(-LOGITS.astype(np.float64)))
    p_t = np.where(TARGETS == 1, p, 1 - p)
    weight = (1 - p_t) ** 2 if kind == "focal" else 1.0
    per_row = np.sum(-weight * np.log(p_t), axis=1)
    assert float(mean) == pytest.approx(per_row[VALID > 0].mean(), rel=1e-5)
    subset = np.all((p >= 0.5) == (TARGETS == 1), axis=1) & (VALID > 0)
    np.testing.assert_array_equal(np.asarray(hits), subset)


def test_multilabel_contrastive_with_one_label_per_row_is_simple_supcon():
    con = ContrastiveSettings(
        loss="simple", weight=1.0, temperature=0.1, base_temperature=0.07, focal_gamma=2.0,
        margin=0.2, scope="global", warmup_steps=0, ramp_steps=0, schedule="constant",
        temperature_schedule="constant", temperature_end=0.05, temperature_min=0.02,
        temperature_max=1.0, cached=False,
    )  # fmt: skip
    features = RNG.normal(size=(6, 4)).astype(np.float32)
    labels = np.array([0, 1, 0, 2, 1, 2])
    onehot = np.eye(3, dtype=np.int32)[labels]
    multi = objectives.contrastive(con, True, features, onehot, VALID, 0.1)
    single = objectives.contrastive(con, False, features, labels, VALID, 0.1)
    assert float(multi) == pytest.approx(float(single), rel=1e-5)
