"""Classification (focal, cross-entropy) and supervised contrastive losses.

Every loss computes in float32 or wider (bfloat16 is upcast, float64 kept), takes a ``valid``
mask ([B], bool or 0/1; None = all rows valid) for padding rows, keeps static shapes (masks, no
boolean indexing, so it jits) and uses O(B^2) memory. Values and gradients stay finite in
degenerate batches. ``temperature``, ``base_temperature``, ``margin`` and ``gamma`` may be traced
scalars (scheduled or learned).

Contrastive losses L2-normalise ``features`` [B, D]; ``s_ij`` is the cosine similarity. For an
anchor i among the valid rows, A(i) = the other valid rows, P(i) = those with i's label and
N(i) = the rest. Each loss averages l_i over the anchors with at least one positive (and, for the
margin loss, one negative), and is 0.0 when there are none.
"""

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxcls.errors import UserError

Array = jax.Array
# Squared-norm floor: a zero feature vector normalises to zero instead of NaN, with finite grads.
_NORM_EPS = 1e-12
# Floor for (1 - p) before raising it to gamma, so gamma < 1 keeps a finite gradient at p = 1.
FOCAL_EPS = 1e-12


def upcast(x: Array) -> Array:
    """``x`` as float32, or wider when it already is (float64 for gradient checks)."""
    x = jnp.asarray(x)
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def valid_mask(valid: Array | None, batch: int) -> Array:
    if valid is None:
        return jnp.ones((batch,), bool)
    return jnp.asarray(valid).astype(bool)


def masked_mean(values: Array, mask: Array) -> Array:
    """Mean of ``values`` where ``mask``; 0.0 when the mask is empty."""
    total = jnp.sum(jnp.where(mask, values, 0.0))
    return total / jnp.maximum(jnp.sum(mask), 1).astype(jnp.float32)


def masked_logsumexp(x: Array, mask: Array) -> Array:
    """logsumexp over the last axis restricted to ``mask``; 0.0 for an empty row."""
    shift = jnp.max(jnp.where(mask, x, -jnp.inf), axis=-1, keepdims=True)
    shift = jax.lax.stop_gradient(jnp.where(jnp.isfinite(shift), shift, 0.0))
    # The inner where keeps exp() of masked entries finite, so their zero cotangent stays zero.
    total = jnp.sum(jnp.where(mask, jnp.exp(jnp.where(mask, x - shift, 0.0)), 0.0), axis=-1)
    return jnp.log(jnp.where(total > 0, total, 1.0)) + shift[..., 0]


def _pair_masks(labels: Array, valid: Array | None) -> tuple[Array, Array, Array]:
    """Boolean [B, B] masks of A(i), P(i) and N(i) for every anchor row i."""
    batch = labels.shape[0]
    v = valid_mask(valid, batch)
    others = v[:, None] & v[None, :] & ~jnp.eye(batch, dtype=bool)
    same = labels[:, None] == labels[None, :]
    return others, others & same, others & ~same


def cosine_similarity(features: Array) -> Array:
    """[B, B] cosine similarities (float32 or wider), with a safe norm for zero vectors."""
    x = upcast(features)
    x = x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), _NORM_EPS))
    # HIGHEST: accelerators would otherwise use TF32/bf16 passes, and errors grow by 1/temperature.
    return jnp.matmul(x, x.T, precision=jax.lax.Precision.HIGHEST)


def simple_contrastive(
    features: Array,
    labels: Array,
    *,
    temperature: float | Array = 0.1,
    base_temperature: float | Array = 0.07,
    valid: Array | None = None,
) -> Array:
    """SupCon: l_i = -(t/t_base) * mean_{p in P(i)} [s_ip/t - logsumexp_{a in A(i)} s_ia/t]."""
    t = upcast(temperature)
    logits = cosine_similarity(features) / t
    others, pos, _ = _pair_masks(labels, valid)
    n_pos = jnp.sum(pos, axis=-1)
    mean_pos = jnp.sum(jnp.where(pos, logits, 0.0), axis=-1) / jnp.maximum(n_pos, 1)
    per_anchor = -(t / upcast(base_temperature)) * (mean_pos - masked_logsumexp(logits, others))
    return masked_mean(per_anchor, n_pos > 0)


def focal_contrastive(
    features: Array,
    labels: Array,
    *,
    temperature: float | Array = 0.1,
    gamma: float = 2.0,
    valid: Array | None = None,
) -> Array:
    """l_i = -(1 - pt_i)^gamma log pt_i, pt_i = sum_P exp(s_ip/t) / sum_A exp(s_ia/t), in logs."""
    logits = cosine_similarity(features) / upcast(temperature)
    others, pos, _ = _pair_masks(labels, valid)
    # P(i) is a subset of A(i), so log pt <= 0; the clip only removes rounding above zero.
    log_pt = jnp.minimum(masked_logsumexp(logits, pos) - masked_logsumexp(logits, others), 0.0)
    weight = jnp.power(jnp.maximum(-jnp.expm1(log_pt), FOCAL_EPS), gamma)
    return masked_mean(-weight * log_pt, jnp.any(pos, axis=-1))


def margin_contrastive(
    features: Array,
    labels: Array,
    *,
    margin: float | Array = 0.2,
    valid: Array | None = None,
) -> Array:
    """l_i = mean over pairs (p in P(i), n in N(i)) of relu(margin + s_in - s_ip).

    The [B, B, B] pair tensor is never built: with i's positives sorted, the sum over p of
    relu(m + s_in - s_ip) is k * (m + s_in) - (sum of the k smallest s_ip), where k counts the
    positives below m + s_in (a binary search). Memory is O(B^2), time O(B^2 log B).
    """
    m = upcast(margin)
    sim = cosine_similarity(features)
    _, pos, neg = _pair_masks(labels, valid)
    # Non-positives sort last as +inf and never fall below the finite threshold m + s_in.
    sorted_pos = jnp.sort(jnp.where(pos, sim, jnp.inf), axis=-1)
    finite = jnp.where(jnp.isfinite(sorted_pos), sorted_pos, 0.0)
    prefix = jnp.concatenate([jnp.zeros_like(finite[:, :1]), jnp.cumsum(finite, axis=-1)], -1)
    threshold = m + sim
    k = _count_below(sorted_pos, threshold)
    pair_sums = k * threshold - jnp.take_along_axis(prefix, k, axis=-1)
    n_pairs = jnp.sum(pos, axis=-1) * jnp.sum(neg, axis=-1)
    per_anchor = jnp.sum(jnp.where(neg, pair_sums, 0.0), axis=-1) / jnp.maximum(n_pairs, 1)
    return masked_mean(per_anchor, n_pairs > 0)


def _count_below(rows: Array, queries: Array) -> Array:
    """``k[i, j]`` = how many of the sorted ``rows[i]`` are < ``queries[i, j]``.

    ``jnp.searchsorted(rows[i], queries[i], side="left")`` per row, as a binary search of
    static length written with plain lax ops: the searchsorted primitive fails inside
    ``jax.shard_map``'s varying-axes typing (jax 0.10.2), where the train step runs.
    """
    n = rows.shape[-1]
    lo = jnp.zeros(queries.shape, jnp.int32)
    hi = jnp.full(queries.shape, n, jnp.int32)
    for _ in range(n.bit_length()):  # halves hi - lo; the answer is one of 0..n
        mid = (lo + hi) // 2
        below = jnp.take_along_axis(rows, jnp.minimum(mid, n - 1), axis=-1) < queries
        searching = lo < hi
        lo = jnp.where(searching & below, mid + 1, lo)
        hi = jnp.where(searching & ~below, mid, hi)
    return lo


CONTRASTIVE_LOSSES: dict[str, Callable[..., Array]] = {
    "simple": simple_contrastive,
    "focal": focal_contrastive,
    "margin": margin_contrastive,
}


def contrastive_loss(
    name: str,
    features: Array,
    labels: Array,
    *,
    temperature: float | Array = 0.1,
    base_temperature: float | Array = 0.07,
    focal_gamma: float = 2.0,
    margin: float | Array = 0.2,
    valid: Array | None = None,
) -> Array:
    """The ``contrastive.loss`` named ``name`` with the keywords it takes; "none" gives 0.0."""
    if name == "none":
        return jnp.zeros((), jnp.float32)
    kwargs = {
        "simple": {"temperature": temperature, "base_temperature": base_temperature},
        "focal": {"temperature": temperature, "gamma": focal_gamma},
        "margin": {"margin": margin},
    }
    if name not in kwargs:
        raise UserError(
            f"contrastive.loss is {name!r}; use one of: none, {', '.join(CONTRASTIVE_LOSSES)}"
        )
    return CONTRASTIVE_LOSSES[name](features, labels, valid=valid, **kwargs[name])


def balanced_alpha(label_counts: Sequence[int] | np.ndarray) -> np.ndarray:
    """Inverse-frequency class weights n / (K * n_c), as scikit-learn's 'balanced'.

    n is the total count and K the number of classes with n_c > 0; absent classes get 0. With
    these weights the weighted mean loss equals the mean over classes of each class's mean loss.
    """
    counts = np.asarray(label_counts, np.float64)
    if counts.ndim != 1 or np.any(counts < 0):
        raise ValueError(f"label_counts must be a 1-D array of counts >= 0, got {counts}")
    present = counts > 0
    weights = np.zeros_like(counts)
    weights[present] = counts.sum() / (present.sum() * counts[present])
    return weights.astype(np.float32)


def class_weights(alpha: None | float | Sequence[float] | Array, num_classes: int) -> Array:
    """Per-class weights [C] from the accepted forms of ``alpha``."""
    if alpha is None:
        return jnp.ones((num_classes,), jnp.float32)
    if isinstance(alpha, str):
        raise UserError(
            f"loss.focal_alpha is {alpha!r}; pass a number or one weight per class (for "
            "'balanced', balanced_alpha() of the training label counts)"
        )
    weights = upcast(alpha)
    if weights.ndim == 0:
        return jnp.full((num_classes,), weights)
    if weights.shape != (num_classes,):
        raise UserError(
            f"loss.focal_alpha has {weights.shape[0]} weights but there are {num_classes} "
            "classes; give one weight per label (labels.json order) or a single number"
        )
    return weights


def focal_loss(
    logits: Array,
    labels: Array,
    *,
    gamma: float = 2.0,
    alpha: None | float | Sequence[float] | Array = None,
    label_smoothing: float = 0.0,
    valid: Array | None = None,
) -> Array:
    """Mean over valid rows of alpha_y * (1 - p_y)^gamma * CE_i; gamma=0, alpha=None is CE.

    CE_i = -sum_c q_c log p_c with the smoothed target q = (1 - eps) * onehot + eps / C, so the
    focal weight (1 - p_y)^gamma uses the model's p_y while the log term is the smoothed CE.
    ``alpha``: None (1), a number (the same for every class) or per-class weights [C], such as
    ``balanced_alpha(train_counts)``. The mean divides by the number of valid rows, not by the
    sum of the weights. Labels outside [0, C) (padding) give a zero row.
    """
    logits = upcast(logits)
    num_classes = logits.shape[-1]
    v = valid_mask(valid, logits.shape[0])
    onehot = jax.nn.one_hot(labels, num_classes, dtype=logits.dtype)
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    target = (1.0 - label_smoothing) * onehot + label_smoothing / num_classes
    ce = -jnp.sum(target * log_probs, axis=-1)
    log_py = jnp.sum(onehot * log_probs, axis=-1)
    weight = jnp.power(jnp.maximum(-jnp.expm1(log_py), FOCAL_EPS), gamma)
    alpha_y = jnp.sum(onehot * class_weights(alpha, num_classes), axis=-1)
    return masked_mean(alpha_y * weight * ce, v)


def cross_entropy(
    logits: Array,
    labels: Array,
    *,
    label_smoothing: float = 0.0,
    valid: Array | None = None,
) -> Array:
    """Mean softmax cross-entropy over valid rows, with optional label smoothing."""
    return focal_loss(logits, labels, gamma=0.0, label_smoothing=label_smoothing, valid=valid)


CLASSIFICATION_LOSSES = ("focal", "ce")


def classification_loss(
    name: str,
    logits: Array,
    labels: Array,
    *,
    focal_gamma: float = 2.0,
    focal_alpha: None | float | Sequence[float] | Array = None,
    label_smoothing: float = 0.0,
    valid: Array | None = None,
) -> Array:
    """The ``loss.classification`` named ``name``; "ce" ignores the focal keywords."""
    if name == "ce":
        return cross_entropy(logits, labels, label_smoothing=label_smoothing, valid=valid)
    if name == "focal":
        return focal_loss(
            logits,
            labels,
            gamma=focal_gamma,
            alpha=focal_alpha,
            label_smoothing=label_smoothing,
            valid=valid,
        )
    raise UserError(
        f"loss.classification is {name!r}; use one of: {', '.join(CLASSIFICATION_LOSSES)}"
    )
