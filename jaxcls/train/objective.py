"""The per-device training objective: the contrastive term and the weighted total loss.

Runs inside the train step's ``jax.shard_map`` over the mesh's ``data`` axis. Both gradient
paths use it: the plain one on each micro-batch's features (``steps.micro_batch_loss``), the
cached one on the features of all micro-batches at once (``cached_contrastive``).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxcls.train import losses, schedules, sharding
from jaxcls.train.settings import ContrastiveSettings, StepSettings

Array = jax.Array

DATA = sharding.BATCH_AXES[0]


def contrastive_term(
    con: ContrastiveSettings,
    features: Array,
    labels: Array,
    valid: Array,
    temperature: Array,
    fsdp: int,
) -> Array:
    """The contrastive loss of the global batch, from this data shard's rows ``[b, D]``.

    ``global``: of the gathered batch ``[B, D]`` (the same value on every device). ``local``:
    the mean over devices of each device's loss on its own rows; a data shard's rows are
    split over its ``fsdp`` devices, so each of ``fsdp`` consecutive groups is one device's.
    """
    if con.loss == "none":
        return jnp.zeros((), jnp.float32)

    def loss(f: Array, y: Array, v: Array) -> Array:
        return losses.contrastive_loss(
            con.loss, f, y, temperature=temperature, base_temperature=con.base_temperature,
            focal_gamma=con.focal_gamma, margin=con.margin, valid=v,
        )  # fmt: skip

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
    con_loss = contrastive_term(con, features, labels, valid, temperature, fsdp)
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
