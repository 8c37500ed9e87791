"""jaxcls.train.multilabel against plain-Python loops in float64, optax, and SupCon."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.test_util import check_grads

from jaxcls.errors import UserError
from jaxcls.train.losses import simple_contrastive
from jaxcls.train.multilabel import binary_focal_loss, jaccard_contrastive, jaccard_weights

TOL = {"rtol": 1e-5, "atol": 1e-6}
# X64: close over jax arrays made inside `jax.enable_x64`, never NumPy ones (see test_losses.py).


# ---------------------------------------------------------------- references (loops, float64)
def ref_binary_focal(logits, targets, valid, gamma=2.0, alpha=None):
    per_row = []
    for i in range(len(logits)):
        if not valid[i]:
            continue
        total = 0.0
        for c in range(len(logits[i])):
            x, positive = float(logits[i][c]), targets[i][c] == 1
            p = 1.0 / (1.0 + math.exp(-x))
            pt = p if positive else 1.0 - p
            a = 1.0
            if alpha is not None:
                ac = alpha[c] if isinstance(alpha, list) else alpha
                a = ac if positive else 1.0 - ac
            total += -a * (1.0 - pt) ** gamma * math.log(pt)
        per_row.append(total)
    return sum(per_row) / len(per_row) if per_row else 0.0


def ref_jaccard(x, targets, valid, temperature=0.1, base_temperature=0.07):
    unit = []
    for v in np.asarray(x, np.float64):
        unit.append(v / max(math.sqrt(sum(float(c) ** 2 for c in v)), 1e-6))
    sets = [{c for c in range(len(row)) if row[c] == 1} for row in targets]
    rows = [i for i in range(len(x)) if valid[i]]
    out = []
    for i in rows:
        others = [j for j in rows if j != i]
        s = {j: float(np.dot(unit[i], unit[j])) / temperature for j in others}
        log_den = math.log(sum(math.exp(s[a]) for a in others)) if others else 0.0
        w = {}
        for j in others:
            union = len(sets[i] | sets[j])
            w[j] = len(sets[i] & sets[j]) / union if union else 0.0
        total = sum(w.values())
        if total > 0:
            mean = sum(w[p] * (s[p] - log_den) for p in others) / total
            out.append(-(temperature / base_temperature) * mean)
    return sum(out) / len(out) if out else 0.0


# ---------------------------------------------------------------- cases
def make_case(seed=0, batch=11, classes=5, dim=7):
    rng = np.random.default_rng(seed)
    logits = (3.0 * rng.normal(size=(batch, classes))).astype(np.float32)
    targets = (rng.random((batch, classes)) < 0.35).astype(np.int32)
    targets[0] = 0  # a row without labels
    targets[1] = targets[2]  # an identical label set
    features = rng.normal(size=(batch, dim)).astype(np.float32)
    valid = np.ones(batch, bool)
    valid[[3, 8]] = False
    targets[~valid] = -1  # padding rows may hold anything
    return logits, targets, features, valid


@jax.jit
def _focal(logits, targets, valid, gamma, alpha):
    return binary_focal_loss(logits, targets, gamma=gamma, alpha=alpha, valid=valid)


@jax.jit
def _jaccard(features, targets, valid, t, tb):
    return jaccard_contrastive(features, targets, temperature=t, base_temperature=tb, valid=valid)


focal_value_and_grad = jax.jit(jax.value_and_grad(_focal))
jaccard_value_and_grad = jax.jit(jax.value_and_grad(_jaccard, argnums=(0, 3)))


# ---------------------------------------------------------------- binary focal loss
@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize(
    "gamma,alpha", [(2.0, None), (0.0, None), (0.5, 0.25), (1.5, [0.1, 0.9, 0.5, 0.3, 0.7])]
)
def test_binary_focal_matches_loop(seed, gamma, alpha):
    logits, targets, _, valid = make_case(seed)
    value = binary_focal_loss(logits, targets, gamma=gamma, alpha=alpha, valid=valid)
    assert value.dtype == jnp.float32
    np.testing.assert_allclose(value, ref_binary_focal(logits, targets, valid, gamma, alpha), **TOL)


def test_binary_focal_gamma_zero_is_optax_bce_summed_over_classes():
    logits, targets, _, _ = make_case(2)
    targets = np.maximum(targets, 0)  # no padding rows here: every row is a real 0/1 row
    bce = optax.sigmoid_binary_cross_entropy(logits, targets.astype(np.float32))
    np.testing.assert_allclose(
        binary_focal_loss(logits, targets, gamma=0.0), jnp.mean(jnp.sum(bce, -1)), rtol=1e-6
    )


def test_binary_focal_check_grads_and_degenerate_inputs():
    logits, targets, _, valid = make_case(3)
    with jax.enable_x64(True):
        t64, v64 = jnp.asarray(targets), jnp.asarray(valid)
        alpha = jnp.asarray([0.1, 0.9, 0.5, 0.3, 0.7], jnp.float64)
        loss = jax.jit(lambda lg, g: binary_focal_loss(lg, t64, gamma=g, alpha=alpha, valid=v64))
        check_grads(loss, (jnp.asarray(logits, jnp.float64), jnp.float64(1.5)), 1, modes=("rev",))
    # Sure and right (p_t -> 1, where gamma < 1 needs the floor), sure and wrong, bf16, all padding.
    sure = np.where(targets == 1, 80.0, -80.0).astype(np.float32)
    for lg in (sure, -sure, logits):
        for mask in (valid, np.zeros_like(valid)):
            for gamma in (0.0, 0.5, 2.0):
                value, grad = focal_value_and_grad(
                    jnp.asarray(lg, jnp.bfloat16), targets, mask, gamma, None
                )
                assert value.dtype == jnp.float32 and np.isfinite(value)
                assert np.all(np.isfinite(np.asarray(grad, np.float32)))
    assert float(_focal(logits, targets, np.zeros_like(valid), 2.0, None)) == 0.0


def test_binary_focal_padding_equals_dropping_and_alpha_errors():
    logits, targets, _, valid = make_case(4)
    noisy = np.where(valid[:, None], logits, 1e4).astype(np.float32)
    padded = _focal(noisy, targets, valid, 2.0, None)
    dropped = _focal(logits[valid], targets[valid], np.ones(valid.sum(), bool), 2.0, None)
    np.testing.assert_allclose(padded, dropped, rtol=1e-6)
    with pytest.raises(UserError, match="loss.focal_alpha has 2 weights"):
        binary_focal_loss(logits, targets, alpha=[0.5, 0.5])
    with pytest.raises(UserError, match="balanced"):
        binary_focal_loss(logits, targets, alpha="balanced")
    with pytest.raises(UserError, match=r"values in \[0, 1\]"):
        binary_focal_loss(logits, targets, alpha=[0.5, 0.5, 1.5, 0.5, 0.5])


# ---------------------------------------------------------------- Jaccard contrastive
def test_jaccard_weights_are_the_loop_jaccard():
    _, targets, _, valid = make_case(5)
    others, w = (np.asarray(a) for a in jaccard_weights(targets, valid))
    sets = [{c for c in range(targets.shape[1]) if targets[i, c] == 1} for i in range(len(valid))]
    for i in range(len(valid)):
        for j in range(len(valid)):
            ok = valid[i] and valid[j] and i != j
            union = len(sets[i] | sets[j])
            expected = len(sets[i] & sets[j]) / union if ok and union else 0.0
            assert bool(others[i, j]) == ok
            np.testing.assert_allclose(w[i, j], expected, rtol=1e-7)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("t,tb", [(0.1, 0.07), (0.5, 0.5)])
def test_jaccard_contrastive_matches_loop(seed, t, tb):
    _, targets, x, valid = make_case(seed)
    value, grads = jaccard_value_and_grad(x, targets, valid, t, tb)
    assert value.dtype == jnp.float32
    np.testing.assert_allclose(value, ref_jaccard(x, targets, valid, t, tb), **TOL)
    assert all(np.all(np.isfinite(g)) for g in grads)


@jax.jit
def _supcon(features, labels, valid, t, tb):
    return simple_contrastive(features, labels, temperature=t, base_temperature=tb, valid=valid)


def test_jaccard_contrastive_is_supcon_with_one_label_per_row():
    rng = np.random.default_rng(6)
    for batch, classes in [(13, 3), (11, 5), (4, 4)]:
        labels = rng.integers(0, classes, batch)
        x = rng.normal(size=(batch, 7)).astype(np.float32)
        valid = rng.random(batch) > 0.2
        onehot = np.eye(classes, dtype=np.int32)[labels]
        for t, tb in [(0.1, 0.07), (0.3, 0.3)]:
            # The same float32 operations, so equal bit for bit (jitted, as the trainer runs it).
            np.testing.assert_array_equal(
                _jaccard(x, onehot, valid, t, tb), _supcon(x, labels, valid, t, tb)
            )
    mine = jaccard_contrastive(x, onehot, valid=valid)  # and eagerly, with the defaults
    np.testing.assert_array_equal(mine, simple_contrastive(x, labels, valid=valid))


def test_jaccard_contrastive_check_grads():
    _, targets, x, valid = make_case(7)
    with jax.enable_x64(True):
        t64, v64 = jnp.asarray(targets), jnp.asarray(valid)
        loss = jax.jit(lambda f, t: jaccard_contrastive(f, t64, temperature=t, valid=v64))
        check_grads(loss, (jnp.asarray(x, jnp.float64), jnp.float64(0.2)), 1, modes=("rev",))


def test_jaccard_contrastive_degenerate_batches_are_finite():
    _, targets, x, valid = make_case(8)
    no_labels = np.zeros_like(targets)
    same = np.ones_like(x)
    cases = [
        (x, no_labels, valid, 0.0),  # nobody has a positive
        (x, targets, np.zeros_like(valid), 0.0),  # all padding
        (same, targets, valid, None),  # identical features
        (np.zeros_like(x), targets, valid, None),  # zero features
        (x[:1], targets[:1], valid[:1], 0.0),  # one row
    ]
    for feats, tgt, mask, expected in cases:
        for dtype in (jnp.float32, jnp.bfloat16):
            value, grads = jaccard_value_and_grad(jnp.asarray(feats, dtype), tgt, mask, 0.1, 0.07)
            assert value.dtype == jnp.float32 and np.isfinite(value)
            assert all(np.all(np.isfinite(np.asarray(g, np.float32))) for g in grads)
            if expected is not None:
                assert float(value) == expected


def test_jaccard_contrastive_padding_equals_dropping():
    _, targets, x, valid = make_case(9)
    noisy = np.where(valid[:, None], x, 50.0).astype(np.float32)
    padded = _jaccard(noisy, targets, valid, 0.1, 0.07)
    dropped = _jaccard(x[valid], targets[valid], np.ones(valid.sum(), bool), 0.1, 0.07)
    np.testing.assert_allclose(padded, dropped, rtol=1e-5, atol=1e-6)
