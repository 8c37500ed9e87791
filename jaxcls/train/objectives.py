"""The per-device training objective: per-problem loss terms, the contrastive term and the
weighted total loss.

Single-label runs get ``jaxcls.train.losses``, multi-label runs (``StepSettings.multi_label``)
``jaxcls.train.multilabel`` (labels [B, C] 0/1). Runs inside the train step's
``jax.shard_map`` over the mesh's ``data`` axis; both gradient paths use it: the plain one on
each micro-batch's features (``steps.micro_batch_loss``), the cached one on the features of all
micro-batches at once (``cached_contrastive``).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxcls.train import losses, multilabel, schedules, sharding
from jaxcls.train.settings import ContrastiveSettings, LossSettings, StepSettings

Array = jax.Array

DATA = sharding.BATCH_AXES[0]


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


def contrastive_term(
    con: ContrastiveSettings,
    features: Array,
    labels: Array,
    valid: Array,
    temperature: Array,
    fsdp: int,
    multi_label: bool = False,
) -> Array:
    """The contrastive loss of the global batch, from this data shard's rows ``[b, D]``.

    ``global``: of the gathered batch ``[B, D]`` (the same value on every device). ``local``:
    the mean over devices of each device's loss on its own rows; a data shard's rows are
    split over its ``fsdp`` devices, so each of ``fsdp`` consecutive groups is one device's.
    """
    if con.loss == "none":
        return jnp.zeros((), jnp.float32)

    def loss(f: Array, y: Array, v: Array) -> Array:
        return contrastive(con, multi_label, f, y, v, temperature)

    if con.scope == "global":
        gather = functools.partial(jax.lax.all_gather, axis_name=DATA, axis=0, tiled=True)
        return loss(gather(features), gather(labels), gather(valid))
    split = lambda x: x.reshape(fsdp, -1, *x.shape[1:])  # noqa: E731
    per_device = jax.vmap(loss)(split(features), split(labels), split(valid))
    return jax.lax.pmean(jnp.mean(per_device), DATA)


def total_loss(
    settings: StepSettings,
    step: Array,
    extra: dict[str, Array],
    cls: Array,
    features: Array,
    labels: Array,
    valid: Array,
    fsdp: int,
) -> tuple[Array, dict[str, Array]]:
    """``(total, parts)``: ``cls`` + weight(step) * the contrastive loss of these rows.

    ``extra`` holds the learned temperature and the uncertainty weighting's log-variances;
    ``parts`` are the logged ``cls_loss``, ``con_loss``, ``con_weight`` and ``temperature``.
    """
    con = settings.contrastive
    temperature = schedules.temperature(
        con, step, settings.total_steps, extra.get("log_temperature")
    )
    con_loss = contrastive_term(
        con, features, labels, valid, temperature, fsdp, settings.multi_label
    )
    weight = schedules.contrastive_weight(con, step)
    if "log_vars" in extra:
        s = extra["log_vars"]
        total = jnp.exp(-s[0]) * cls + 0.5 * s[0]
        total = total + weight * (jnp.exp(-s[1]) * con_loss + 0.5 * s[1])
        weight = weight * jnp.exp(s[0] - s[1])  # the effective weight relative to cls
    else:
        total = cls + weight * con_loss
    parts = {"cls_loss": cls, "con_loss": con_loss, "con_weight": weight}
    return total, {**parts, "temperature": temperature}
