"""The per-problem terms of the steps: single-label (softmax) or multi-label (sigmoid) losses.

``jaxcls.train.steps`` calls these with ``StepSettings.multi_label``; single-label runs get
``jaxcls.train.losses``, multi-label runs ``jaxcls.train.multilabel`` (labels [B, C] 0/1).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxcls.train import losses, multilabel
from jaxcls.train.settings import ContrastiveSettings, LossSettings

Array = jax.Array


def classification(
    loss: LossSettings, multi_label: bool, logits: Array, labels: Array, valid: Array
) -> tuple[Array, Array]:
    """(the classification loss, mean over the valid rows; hits [B] bool of the valid rows).

    Single-label: ``loss.classification`` (focal or ce), a hit = the argmax is the label.
    Multi-label: the binary focal loss (``ce``: plain binary cross-entropy, as single-label
    ``ce`` ignores the focal keywords), a hit = every label right at the 0.5 probability cut
    (subset accuracy).
    """
    if not multi_label:
        mean = losses.classification_loss(
            loss.classification, logits, labels, focal_gamma=loss.focal_gamma,
            focal_alpha=loss.class_weights, label_smoothing=loss.label_smoothing, valid=valid,
        )  # fmt: skip
        return mean, (jnp.argmax(logits, axis=-1) == labels) & (valid > 0)
    focal = loss.classification == "focal"
    mean = multilabel.binary_focal_loss(
        logits, labels, gamma=loss.focal_gamma if focal else 0.0,
        alpha=loss.class_weights if focal else None, valid=valid,
    )  # fmt: skip
    hits = jnp.all((logits > 0) == (labels == 1), axis=-1)
    return mean, hits & (valid > 0)


def contrastive(
    con: ContrastiveSettings,
    multi_label: bool,
    features: Array,
    labels: Array,
    valid: Array,
    temperature: Array,
) -> Array:
    """``contrastive.loss`` of one set of rows; multi-label ``simple`` is the Jaccard SupCon
    (``multilabel.jaccard_contrastive``; the config allows no other multi-label loss)."""
    if multi_label and con.loss == "simple":
        return multilabel.jaccard_contrastive(
            features, labels, temperature=temperature, base_temperature=con.base_temperature,
            valid=valid,
        )  # fmt: skip
    if multi_label and con.loss != "none":
        raise ValueError(f"contrastive.loss={con.loss!r} has no multi-label form")
    return losses.contrastive_loss(
        con.loss, features, labels, temperature=temperature,
        base_temperature=con.base_temperature, focal_gamma=con.focal_gamma, margin=con.margin,
        valid=valid,
    )  # fmt: skip


def nll(multi_label: bool, logits: Array, labels: Array) -> Array:
    """Per-row validation loss [B]: -log softmax(logits)[label], or (multi-label) the binary
    cross-entropy summed over labels (the reduction of ``multilabel.binary_focal_loss``)."""
    x = logits.astype(jnp.float32)
    if not multi_label:
        log_probs = jax.nn.log_softmax(x, axis=-1)
        return -jnp.take_along_axis(log_probs, labels[:, None], axis=-1)[:, 0]
    y = (labels == 1).astype(jnp.float32)
    return -jnp.sum(y * jax.nn.log_sigmoid(x) + (1.0 - y) * jax.nn.log_sigmoid(-x), axis=-1)
