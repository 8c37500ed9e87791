"""Multi-label losses (``model.problem = multi_label``): binary focal loss, Jaccard SupCon.

Targets are a [B, C] indicator matrix (1 = the row carries label c; anything else = it does
not, so padding rows may hold -1). As in ``jaxcls.train.losses``: computation in float32 or
wider, a ``valid`` mask [B] for padding rows, static shapes (jit compiles once per shape), and
finite values and gradients in degenerate batches (rows without labels, all padding, identical
or zero features).
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxcls.errors import UserError
from jaxcls.train.losses import (
    FOCAL_EPS,
    class_weights,
    cosine_similarity,
    masked_logsumexp,
    masked_mean,
    upcast,
    valid_mask,
)

Array = jax.Array


def _indicator(targets: Array) -> Array:
    """[B, C] float32 0/1 indicator of the labels each row carries (entries equal to 1)."""
    return (jnp.asarray(targets) == 1).astype(jnp.float32)


def _positive_alpha(alpha: float | Sequence[float] | Array, num_classes: int) -> Array:
    """alpha [C] for the positive term; a number is shared by all classes."""
    if isinstance(alpha, str):
        raise UserError(f"loss.focal_alpha is {alpha!r}; multi-label takes a number or a list")
    # Outside [0, 1] the negatives' weight 1 - alpha turns negative; checked where not traced.
    if not isinstance(alpha, jax.core.Tracer):
        concrete = np.asarray(alpha, np.float64)
        if not np.all((concrete >= 0) & (concrete <= 1)):
            raise UserError(
                f"loss.focal_alpha is {concrete.tolist()}; multi-label alpha weighs a label's "
                "positives by alpha and its negatives by 1 - alpha, so use values in [0, 1]"
            )
    return class_weights(alpha, num_classes)


def binary_focal_loss(
    logits: Array,
    targets: Array,
    *,
    gamma: float | Array = 2.0,
    alpha: None | float | Sequence[float] | Array = None,
    valid: Array | None = None,
) -> Array:
    """Mean over valid rows of sum_c alpha_tc (1 - p_tc)^gamma BCE_c; gamma=0, alpha=None is BCE.

    p_tc = sigmoid(x_c) where row has label c, else 1 - sigmoid(x_c); BCE_c = -log p_tc.
    ``alpha`` as in RetinaNet: alpha_c weighs label c's positives and (1 - alpha_c) its
    negatives; a number is shared by all classes, None weighs both by 1 (not 0.5).

    Reduction: the sum over classes, then the mean over valid rows. With the sum, each logit's
    gradient is (sigmoid(x_c) - y_c) / B at gamma=0, the same size as softmax cross-entropy's
    (p_c - y_c) / B, so ``contrastive.weight`` keeps its meaning across single- and multi-label
    runs (a mean over classes would scale the classification term down by 1/C).
    """
    x = upcast(logits)
    y = _indicator(targets).astype(x.dtype)
    v = valid_mask(valid, x.shape[0])
    # -log p_t in the stable log-sigmoid form; both terms are finite for any finite x.
    bce = -(y * jax.nn.log_sigmoid(x) + (1.0 - y) * jax.nn.log_sigmoid(-x))
    # 1 - p_t = -expm1(log p_t), floored so gamma < 1 keeps a finite gradient at p_t = 1.
    weight = jnp.power(jnp.maximum(-jnp.expm1(-bce), FOCAL_EPS), upcast(gamma))
    if alpha is not None:
        a = _positive_alpha(alpha, x.shape[-1]).astype(x.dtype)
        weight = weight * (y * a + (1.0 - y) * (1.0 - a))
    per_row = jnp.sum(weight * bce, axis=-1)
    return masked_mean(per_row, v)


def jaccard_weights(targets: Array, valid: Array | None = None) -> tuple[Array, Array]:
    """(A, W): A [B, B] bool = the other valid rows; W [B, B] = Jaccard(labels_i, labels_j) on A.

    Jaccard = |Y_i & Y_j| / |Y_i | Y_j|, and 0 when both rows carry no label.
    """
    y = _indicator(targets)
    batch = y.shape[0]
    v = valid_mask(valid, batch)
    others = v[:, None] & v[None, :] & ~jnp.eye(batch, dtype=bool)
    # Exact integer counts as float32 (HIGHEST: no TF32/bf16 rounding on accelerators).
    inter = jnp.matmul(y, y.T, precision=jax.lax.Precision.HIGHEST)
    sizes = jnp.sum(y, axis=-1)
    union = sizes[:, None] + sizes[None, :] - inter
    jaccard = jnp.where(union > 0, inter / jnp.where(union > 0, union, 1.0), 0.0)
    return others, jnp.where(others, jaccard, 0.0)


def jaccard_contrastive(
    features: Array,
    targets: Array,
    *,
    temperature: float | Array = 0.1,
    base_temperature: float | Array = 0.07,
    valid: Array | None = None,
) -> Array:
    """SupCon with positives weighted by label-set overlap.

    l_i = -(t/t_base) * sum_{p in A(i)} w_ip [s_ip/t - logsumexp_{a in A(i)} s_ia/t] / sum_p w_ip,
    w_ip = Jaccard(labels_i, labels_p). A pair with no shared label (w = 0) is only a negative, in
    the denominator; a partly overlapping pair is a weighted positive and also in the denominator,
    as every positive is in SupCon. l_i is (t/t_base) times the cross-entropy between the target
    distribution w_i / sum(w_i) over A(i) and softmax(s_i / t) over A(i). The mean runs over the
    anchors with sum_p w_ip > 0; 0.0 when there are none. When every row has exactly one label,
    w is 1 for the same label and 0 otherwise, and this is ``simple_contrastive``.
    """
    t = upcast(temperature)
    logits = cosine_similarity(features) / t
    others, w = jaccard_weights(targets, valid)
    w = w.astype(logits.dtype)
    pos = w > 0
    total = jnp.sum(w, axis=-1)
    weighted = jnp.sum(jnp.where(pos, w * logits, 0.0), axis=-1) / jnp.where(total > 0, total, 1)
    per_anchor = -(t / upcast(base_temperature)) * (weighted - masked_logsumexp(logits, others))
    return masked_mean(per_anchor, total > 0)
