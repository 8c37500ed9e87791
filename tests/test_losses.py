"""jaxcls.train.losses against plain-Python loops over anchors and pairs (float64 references)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.test_util import check_grads
from sklearn.utils.class_weight import compute_class_weight

from jaxcls.errors import UserError
from jaxcls.train import losses

TOL = {"rtol": 1e-5, "atol": 1e-5}
# X64_CONSTANTS: jax 0.10.2 caches a NumPy array closed over inside `jax.enable_x64` as an int64
# device buffer and later feeds that buffer to int32 executables, so x64 blocks close over jax
# arrays made inside the block, never over NumPy arrays that other tests pass to jit.


# ---------------------------------------------------------------- references (loops, float64)
def ref_similarity(x):
    """Cosine similarities; a zero vector normalises to zero (norm floored at 1e-6)."""
    rows = []
    for v in np.asarray(x, np.float64):
        rows.append(v / max(math.sqrt(sum(float(c) * float(c) for c in v)), 1e-6))
    return [[float(np.dot(a, b)) for b in rows] for a in rows]


def ref_sets(labels, valid):
    """Yield (i, A, P, N) for every valid anchor i."""
    rows = [i for i in range(len(labels)) if valid[i]]
    for i in rows:
        others = [j for j in rows if j != i]
        pos = [j for j in others if labels[j] == labels[i]]
        neg = [j for j in others if labels[j] != labels[i]]
        yield i, others, pos, neg


def ref_mean(values):
    return sum(values) / len(values) if values else 0.0


def ref_simple(x, labels, valid, temperature=0.1, base_temperature=0.07):
    s, out = ref_similarity(x), []
    for i, others, pos, _ in ref_sets(labels, valid):
        if pos:
            log_denominator = math.log(sum(math.exp(s[i][a] / temperature) for a in others))
            terms = [s[i][p] / temperature - log_denominator for p in pos]
            out.append(-(temperature / base_temperature) * ref_mean(terms))
    return ref_mean(out)


def ref_focal_contrastive(x, labels, valid, temperature=0.1, gamma=2.0):
    s, out = ref_similarity(x), []
    for i, others, pos, _ in ref_sets(labels, valid):
        if pos:
            pt = sum(math.exp(s[i][p] / temperature) for p in pos)
            pt /= sum(math.exp(s[i][a] / temperature) for a in others)
            out.append(-((1.0 - pt) ** gamma) * math.log(pt))
    return ref_mean(out)


def ref_margin(x, labels, valid, margin=0.2):
    s, out = ref_similarity(x), []
    for i, _, pos, neg in ref_sets(labels, valid):
        if pos and neg:
            out.append(ref_mean([max(0.0, margin + s[i][n] - s[i][p]) for p in pos for n in neg]))
    return ref_mean(out)


def ref_focal_loss(logits, labels, valid, gamma=2.0, alpha=None, label_smoothing=0.0):
    logits = np.asarray(logits, np.float64)
    num_classes = logits.shape[1]
    rows = [i for i in range(len(labels)) if valid[i]]
    if isinstance(alpha, str):  # scikit-learn's 'balanced' on this batch's valid labels
        present = np.unique([labels[i] for i in rows])
        weights = compute_class_weight("balanced", classes=present, y=[labels[i] for i in rows])
        alpha = dict(zip(present.tolist(), weights.tolist(), strict=True))
    out = []
    for i in rows:
        exps = [math.exp(v - max(logits[i])) for v in logits[i]]
        probs = [e / sum(exps) for e in exps]
        y = labels[i]
        ce = 0.0
        for c in range(num_classes):
            target = (1 - label_smoothing) * (c == y) + label_smoothing / num_classes
            ce -= target * math.log(probs[c])
        a = 1.0 if alpha is None else alpha if np.isscalar(alpha) else alpha[y]
        out.append(a * (1.0 - probs[y]) ** gamma * ce)
    return ref_mean(out)


# ---------------------------------------------------------------- cases
def make_case(name):
    """(features [12, 6] float32, labels [12], valid [12] bool) for a named situation."""
    b, d = 12, 6
    rng = np.random.default_rng(CASES.index(name))
    x = rng.normal(size=(b, d)).astype(np.float32)
    labels = np.arange(b) % 3
    valid = np.ones(b, bool)
    if name == "random":
        labels = rng.integers(0, 4, b)
    elif name == "padded":  # garbage rows with label -1 between real ones
        valid[[2, 5, 9]] = False
        labels = np.where(valid, labels, -1)
        x[~valid] = 1e3 * rng.normal(size=(3, d))
    elif name == "class_seen_once":
        labels = np.array([0] * 5 + [1] * 6 + [2])
    elif name == "one_class":
        labels = np.zeros(b, int)
    elif name == "all_distinct":
        labels = np.arange(b)
    elif name == "single_valid":
        valid = np.eye(b, dtype=bool)[2]
    elif name == "all_padded":
        valid = np.zeros(b, bool)
    elif name == "identical":
        x[:] = x[0]
    elif name == "zero_norm":
        x[[0, 4, 7]] = 0.0
    return x, labels, valid


CASES = [
    "random",
    "padded",
    "class_seen_once",
    "one_class",
    "all_distinct",
    "single_valid",
    "all_padded",
    "identical",
    "zero_norm",
]
# (loss, reference, keyword sets); temperature 0.01 is the sharp extreme, gamma 0.5 < 1 the
# steep focal weight.
LOSSES = {
    "simple": (
        losses.simple_contrastive,
        ref_simple,
        [
            {"temperature": 0.1, "base_temperature": 0.07},
            {"temperature": 0.01, "base_temperature": 0.1},
        ],
    ),
    "focal": (
        losses.focal_contrastive,
        ref_focal_contrastive,
        [{"temperature": 0.1, "gamma": 2.0}, {"temperature": 0.01, "gamma": 0.5}],
    ),
    "margin": (losses.margin_contrastive, ref_margin, [{"margin": 0.2}, {"margin": 0.7}]),
}


def _call(name, x, labels, valid, params):
    return LOSSES[name][0](x, labels, valid=valid, **params)


# Every scalar keyword is traced (the trainer may schedule or learn them), so each loss compiles
# once per input shape and dtype across all the tests below.
value_and_grads = jax.jit(jax.value_and_grad(_call, argnums=(1, 4)), static_argnames="name")


def _params(name, index=0, dtype=jnp.float32):
    return {k: jnp.asarray(v, dtype) for k, v in LOSSES[name][2][index].items()}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("name", list(LOSSES))
def test_contrastive_matches_loop_reference_with_finite_grads(name, case):
    _, ref, kwarg_sets = LOSSES[name]
    x, labels, valid = make_case(case)
    for index, kwargs in enumerate(kwarg_sets):
        value, grads = value_and_grads(name, x, labels, valid, _params(name, index))
        np.testing.assert_allclose(value, ref(x, labels, valid, **kwargs), **TOL)
        assert value.dtype == jnp.float32
        for g in jax.tree.leaves(grads):
            assert np.all(np.isfinite(g)), (name, case, kwargs)


@pytest.mark.parametrize("name", list(LOSSES))
def test_contrastive_check_grads(name):
    x, labels, valid = make_case("padded")
    with jax.enable_x64(True):
        labels, valid = jnp.asarray(labels), jnp.asarray(valid)  # see X64_CONSTANTS
        loss = jax.jit(lambda f, p: _call(name, f, labels, valid, p))
        args = (jnp.asarray(x, jnp.float64), _params(name, dtype=jnp.float64))
        check_grads(loss, args, order=1, modes=("rev",))


@pytest.mark.parametrize("name", list(LOSSES))
def test_contrastive_bf16_is_finite_float32(name):
    x, labels, valid = make_case("random")
    low = jnp.asarray(x, jnp.bfloat16)
    value, (grad, _) = value_and_grads(name, low, labels, valid, _params(name))
    assert value.dtype == jnp.float32 and np.isfinite(value)
    assert np.all(np.isfinite(np.asarray(grad, np.float32)))
    # Cast inside: exactly the float32 loss of the rounded inputs, and close to the unrounded one.
    rounded, _ = value_and_grads(name, low.astype(jnp.float32), labels, valid, _params(name))
    unrounded, _ = value_and_grads(name, x, labels, valid, _params(name))
    np.testing.assert_allclose(value, rounded, rtol=1e-6)
    np.testing.assert_allclose(value, unrounded, rtol=2e-2, atol=1e-3)


@pytest.mark.parametrize("name", list(LOSSES))
def test_padding_rows_equal_dropping_them_under_jit(name):
    x, labels, valid = make_case("random")
    rng = np.random.default_rng(1)
    keep = np.sort(rng.choice(len(labels), 7, replace=False))
    valid = np.isin(np.arange(len(labels)), keep)
    x = np.where(valid[:, None], x, 50.0 * rng.normal(size=x.shape)).astype(np.float32)
    labels = np.where(valid, labels, -1)
    cache_size_before = value_and_grads._cache_size()
    for scale in (1.0, 0.5):  # a new temperature / margin value reuses the compilation
        params = {k: v * scale for k, v in _params(name).items()}
        padded, _ = value_and_grads(name, x, labels, valid, params)
        dropped, _ = value_and_grads(name, x[keep], labels[keep], valid[keep], params)
        np.testing.assert_allclose(padded, dropped, rtol=1e-5, atol=1e-6)
    assert value_and_grads._cache_size() == cache_size_before + 1


def test_contrastive_loss_passes_each_loss_its_keywords(monkeypatch):
    calls = {}
    for name in losses.CONTRASTIVE_LOSSES:
        fake = lambda f, lab, *, name=name, **kw: calls.setdefault(name, (f, lab, kw))  # noqa: E731
        monkeypatch.setitem(losses.CONTRASTIVE_LOSSES, name, fake)
    common = {"temperature": 0.2, "base_temperature": 0.1, "focal_gamma": 1.0, "margin": 0.3}
    for name in ("simple", "focal", "margin"):
        losses.contrastive_loss(name, "x", "y", valid="v", **common)
    assert calls == {
        "simple": ("x", "y", {"valid": "v", "temperature": 0.2, "base_temperature": 0.1}),
        "focal": ("x", "y", {"valid": "v", "temperature": 0.2, "gamma": 1.0}),
        "margin": ("x", "y", {"valid": "v", "margin": 0.3}),
    }
    assert losses.contrastive_loss("none", "x", "y", valid="v", **common) == 0.0
    with pytest.raises(UserError, match="contrastive.loss"):
        losses.contrastive_loss("supcon", "x", "y", **common)


# ---------------------------------------------------------------- classification
def _focal(logits, labels, valid, params):
    scalars = {k: v for k, v in params.items() if k != "alpha"}
    return losses.focal_loss(logits, labels, alpha=params.get("alpha"), valid=valid, **scalars)


focal_value_and_grad = jax.jit(jax.value_and_grad(_focal))


def _logits_case(seed=0, pad=True, b=13, c=5):
    """Logits [13, 5] float32 and labels; with ``pad`` every third row is padding (label -1,
    wild logits)."""
    rng = np.random.default_rng(seed)
    logits, labels = (3 * rng.normal(size=(b, c))).astype(np.float32), rng.integers(0, c, b)
    valid = np.arange(b) % 3 != 2 if pad else np.ones(b, bool)
    logits[~valid] *= 1e3
    return logits, np.where(valid, labels, -1), valid


def _focal_params(kwargs, dtype=jnp.float32):
    return {k: jnp.asarray(v, dtype) for k, v in kwargs.items() if not isinstance(v, str)}


@pytest.mark.parametrize(
    "kwargs",
    [
        {"gamma": 0.0, "label_smoothing": 0.0},
        {"gamma": 2.0, "label_smoothing": 0.0},
        {"gamma": 0.5, "label_smoothing": 0.0, "alpha": 0.25},
        {"gamma": 2.0, "label_smoothing": 0.1, "alpha": [0.5, 1.0, 2.0, 1.5, 0.1]},
        {"gamma": 2.0, "label_smoothing": 0.1, "alpha": "balanced"},
        {"gamma": 0.0, "label_smoothing": 0.2},
    ],
)
def test_focal_loss_matches_loop_reference(kwargs):
    """The reference visits valid rows only, so this also checks padding = dropping rows.

    'balanced': the reference is scikit-learn's on the batch's valid labels; jaxcls gets
    ``balanced_alpha`` of the same counts.
    """
    logits, labels, valid = _logits_case()
    params = _focal_params(kwargs)
    if kwargs.get("alpha") == "balanced":
        counts = np.bincount(labels[valid], minlength=logits.shape[1])
        params["alpha"] = jnp.asarray(losses.balanced_alpha(counts))
    value, grad = focal_value_and_grad(logits, labels, valid, params)
    np.testing.assert_allclose(value, ref_focal_loss(logits, labels, valid, **kwargs), **TOL)
    assert np.all(np.isfinite(grad))


def test_focal_gamma_zero_is_optax_cross_entropy():
    logits, labels, valid = _logits_case(1, pad=False)
    cross_entropy = jax.jit(lambda lg, eps: losses.cross_entropy(lg, labels, label_smoothing=eps))
    for eps in (0.0, 0.1):
        smooth = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[1]), eps)
        expected = optax.softmax_cross_entropy(logits, smooth).mean()
        if eps == 0.0:
            np.testing.assert_allclose(
                optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(), expected
            )
        params = _focal_params({"gamma": 0.0, "label_smoothing": eps})
        focal, _ = focal_value_and_grad(logits, labels, valid, params)
        np.testing.assert_allclose(focal, expected, rtol=1e-6)
        np.testing.assert_allclose(cross_entropy(logits, eps), expected, rtol=1e-6)


def test_focal_loss_check_grads_and_degenerate_rows():
    logits, labels, valid = _logits_case(2)
    kwargs = {"gamma": 2.0, "label_smoothing": 0.1, "alpha": [1, 2, 3, 1, 2]}
    with jax.enable_x64(True):
        labels64, valid64 = jnp.asarray(labels), jnp.asarray(valid)  # see X64_CONSTANTS
        loss = jax.jit(lambda lg, p: _focal(lg, labels64, valid64, p))
        args = (jnp.asarray(logits, jnp.float64), _focal_params(kwargs, jnp.float64))
        check_grads(loss, args, order=1, modes=("rev",))
    # p_y -> 1 (gamma < 1 would give an infinite slope without the floor), bf16, all padded.
    sure = np.where(jax.nn.one_hot(labels, 5) > 0, 80.0, -80.0)
    for lg, mask in [(sure, valid), (logits, np.zeros_like(valid))]:
        for gamma in (0.0, 0.5, 2.0):
            params = _focal_params({"gamma": gamma, "label_smoothing": 0.1})
            value, grad = focal_value_and_grad(jnp.asarray(lg, jnp.bfloat16), labels, mask, params)
            assert value.dtype == jnp.float32 and np.isfinite(value)
            assert np.all(np.isfinite(np.asarray(grad, np.float32)))


def test_focal_alpha_errors_name_the_config_key():
    logits, labels, _ = _logits_case(3)
    for alpha in ([1.0, 2.0], "inverse", "balanced"):  # 'balanced' is balanced_alpha(counts)
        with pytest.raises(UserError, match="loss.focal_alpha"):
            jax.eval_shape(lambda lg, a=alpha: losses.focal_loss(lg, labels, alpha=a), logits)


def test_balanced_alpha_is_sklearn_and_gives_macro_average():
    logits, _, everything = _logits_case(4, pad=False)
    labels = np.array([0] * 6 + [1] * 3 + [3] * 4)
    counts = np.bincount(labels, minlength=5)
    weights = losses.balanced_alpha(counts)
    present = np.unique(labels)
    np.testing.assert_allclose(
        weights[present], compute_class_weight("balanced", classes=present, y=labels), rtol=1e-6
    )
    assert weights[2] == 0 and weights[4] == 0
    # Balanced CE is the mean over classes of each class's mean CE.
    per_row = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    macro = np.mean([per_row[labels == c].mean() for c in present])
    params = _focal_params({"gamma": 0.0, "label_smoothing": 0.0, "alpha": weights})
    got, _ = focal_value_and_grad(logits, labels, everything, params)
    np.testing.assert_allclose(got, macro, rtol=1e-5)


def test_classification_loss_dispatch(monkeypatch):
    monkeypatch.setattr(losses, "cross_entropy", lambda *a, **kw: ("ce", a, kw))
    monkeypatch.setattr(losses, "focal_loss", lambda *a, **kw: ("focal", a, kw))
    common = {"focal_gamma": 1.5, "focal_alpha": 0.3, "label_smoothing": 0.1, "valid": "v"}
    assert losses.classification_loss("ce", "z", "y", **common) == (
        "ce",
        ("z", "y"),
        {"label_smoothing": 0.1, "valid": "v"},
    )
    assert losses.classification_loss("focal", "z", "y", **common) == (
        "focal",
        ("z", "y"),
        {"gamma": 1.5, "alpha": 0.3, "label_smoothing": 0.1, "valid": "v"},
    )
    with pytest.raises(UserError, match="loss.classification"):
        losses.classification_loss("hinge", "z", "y")
