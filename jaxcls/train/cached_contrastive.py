"""Cached contrastive gradients ("GradCache", Gao et al. 2021) for gradient accumulation.

With ``optim.accumulate = A`` and ``contrastive.cached``, the contrastive loss sees every row
of the A micro-batches together, as one batch of A x B would, while the model's activations
are kept for one micro-batch at a time:

1. forward each micro-batch (no gradient, so nothing kept) for its classification loss and
   its pooled features ``[A, b, D]`` (b = this device's rows of a micro-batch);
2. the total loss from those: the mean of the A classification losses + weight * the
   contrastive loss of all A x B rows (gathered over devices for ``scope = "global"``; a
   device's own A x b rows for ``"local"``), and its gradient with respect to the
   classification losses, the features and ``extra`` (learned temperature, loss weights);
3. forward each micro-batch again, with the same dropout keys, and back-propagate its slice
   of those gradients (a VJP): the sum is the gradient of the total loss.

Each device's result is its share of the gradient, as in ``steps.batch_gradients``; that
function sums the shares over devices. The cost is one extra forward per micro-batch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from jaxcls.train import objectives
from jaxcls.train.settings import StepSettings

Array = jax.Array
PyTree = Any
Batch = dict[str, Array]
# (trainable, frozen, micro-batch, dropout key) -> (cls loss, accuracy, this device's
# features [b, D]), as steps.micro_batch_outputs.
Forward = Callable[[PyTree, PyTree, Batch, Array], tuple[Array, Array, Array]]


def applies(settings: StepSettings, n_micro: int) -> bool:
    """Whether the cached path runs: cached on, a contrastive loss, and micro-batches to join."""
    con = settings.contrastive
    return con.cached and con.loss != "none" and n_micro > 1


def device_rows(x: Array, fsdp: int) -> Array:
    """``[A, b, ...]`` -> ``[A * b, ...]`` with each fsdp device's rows consecutive.

    A data shard's b rows of every micro-batch are split over its ``fsdp`` devices; grouped
    this way, ``objectives.contrastive_term`` (scope local) finds each device's A x b / fsdp.
    """
    a, b = x.shape[:2]
    grouped = x.reshape(a, fsdp, b // fsdp, *x.shape[2:]).swapaxes(0, 1)
    return grouped.reshape(a * b, *x.shape[2:])


def gradients(
    trainable: PyTree,
    frozen: PyTree,
    batch: Batch,
    rng: Array,
    step: Array,
    *,
    forward: Forward,
    settings: StepSettings,
    fsdp: int,
) -> tuple[Array, dict[str, Array], PyTree]:
    """``(loss, metrics, grads)`` of a global batch ``[A, B, ...]`` on this device's rows.

    ``trainable`` is this device's copy (varying over the data axis); ``grads`` is its
    share of the total loss's gradient, not yet summed over devices. Micro-batch i draws
    its dropout masks from ``fold_in(rng, i)`` in both passes.
    """
    n_micro = batch["labels"].shape[0]
    index = jnp.arange(n_micro)

    def outputs(t: PyTree, mb: Batch, i: Array) -> tuple[Array, Array, Array]:
        return forward(t, frozen, mb, jax.random.fold_in(rng, i))

    cls, accuracy, features = jax.lax.map(lambda xs: outputs(trainable, *xs), (batch, index))

    def total(extra: PyTree, cls: Array, features: Array) -> tuple[Array, dict[str, Array]]:
        rows = lambda x: device_rows(x, fsdp)  # noqa: E731
        value, parts = objectives.total_loss(
            settings, step, extra, jnp.mean(cls), rows(features), rows(batch["labels"]),
            rows(batch["valid"]), fsdp,
        )  # fmt: skip
        # Equal on every device; pmean makes it one value, so each device's gradient is its
        # share (as in steps.micro_batch_loss).
        return jax.lax.pmean((value, parts), objectives.DATA)

    grad_fn = jax.value_and_grad(total, argnums=(0, 1, 2), has_aux=True)
    (loss, parts), (d_extra, d_cls, d_features) = grad_fn(trainable["extra"], cls, features)

    def backward(acc: PyTree, xs: tuple) -> tuple[PyTree, None]:
        mb, i, d_c, d_f = xs
        _, vjp = jax.vjp(lambda t: outputs(t, mb, i)[::2], trainable)
        (grads,) = vjp((d_c, d_f))
        return jax.tree_util.tree_map(jnp.add, acc, grads), None

    zeros = jax.tree_util.tree_map(jnp.zeros_like, trainable)
    grads, _ = jax.lax.scan(backward, zeros, (batch, index, d_cls, d_features))
    # ``extra`` enters the loss only after the features: its gradient is the one of step 2.
    grads = {**grads, "extra": jax.tree_util.tree_map(jnp.add, grads["extra"], d_extra)}
    return loss, {**parts, "accuracy": jnp.mean(accuracy)}, grads
