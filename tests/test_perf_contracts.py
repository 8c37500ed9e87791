"""The performance rewrites compute what the plain formulas compute, and the step compiles once.

- ``lora.factored_matmul`` (a custom VJP with a hand-written backward) against autodiff of
  ``x @ W + scale * (dropout(x) @ A) @ B``, for a frozen and for a trainable W, and the
  orientation of its dA product in the compiled HLO;
- ``lora.bernoulli`` (the unrolled threefry dropout mask) against ``jax.random.bernoulli``;
- ``qwen3.grouped_attention`` against a NumPy loop over heads;
- the last layer computed at the pooled rows only against the full model (values, gradients);
- the trainer's jitted step traces once per length bucket (``chex.assert_max_traces``).
"""

from __future__ import annotations

import functools
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcls.config import load_config
from jaxcls.model import lora, qwen3
from jaxcls.model.classifier import HeadConfig, Qwen3Classifier
from jaxcls.train import sharding, steps
from jaxcls.train.settings import ContrastiveSettings, OptimSettings, StepSettings

N_IN, N_OUT, RANK, SCALE = 24, 40, 3, 7.0 / 3


def operands(seed: int = 0, lead=(2, 5)):
    rng = np.random.default_rng(seed)
    f32 = functools.partial(jnp.asarray, dtype=jnp.float32)
    x = f32(rng.normal(size=(*lead, N_IN)))
    w, a = f32(rng.normal(size=(N_IN, N_OUT))), f32(rng.normal(size=(N_IN, RANK)))
    b, ct = f32(rng.normal(size=(RANK, N_OUT))), f32(rng.normal(size=(*lead, N_OUT)))
    return x, w, a, b, ct


def reference(x, w, a, b, key, rate):
    """The formula, differentiated by JAX (dropout with ``jax.random.bernoulli``)."""
    xa = x
    if key is not None:
        keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
        xa = jnp.where(keep, x / (1.0 - rate), 0)
    return x @ w + SCALE * (xa @ a) @ b


def custom(x, w, a, b, key, rate):
    weight = lora.LoRAWeight(w=w, a=a, b=b, scale=SCALE, dropout=rate)
    return lora.factored_matmul(x, weight, jnp.float32, key)


@pytest.mark.parametrize("rate", [0.0, 0.4])
@pytest.mark.parametrize("argnums", [(0, 2, 3), (2, 3), (0, 1, 2, 3)])
def test_factored_matmul_values_and_gradients_match_autodiff(rate, argnums):
    x, w, a, b, ct = operands()
    key = jax.random.key(3) if rate else None
    args = (x, w, a, b)

    def vjp(fn):
        out, pull = jax.vjp(lambda *d: fn(*d, key, rate), *args)
        return out, pull(ct)

    (got, got_grads), (want, want_grads) = vjp(custom), vjp(reference)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    for i in argnums:  # x, W (a trainable base), A, B
        np.testing.assert_allclose(got_grads[i], want_grads[i], rtol=1e-5, atol=1e-4)
        assert np.any(np.asarray(got_grads[i]) != 0)
    # Differentiating only some inputs gives the same numbers as the full gradient.
    partial = jax.grad(lambda *d: jnp.vdot(custom(*d, key, rate), ct), argnums=argnums)(*args)
    for i, g in zip(argnums, partial, strict=True):
        np.testing.assert_allclose(g, want_grads[i], rtol=1e-5, atol=1e-4)


def dot_shapes(fn, *args) -> list[tuple[int, ...]]:
    """Output shapes of every dot_general in ``fn``'s jaxpr (all depths)."""
    from jax.extend.core import jaxprs_in_params

    found = []

    def walk(jaxpr):
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == "dot_general":
                found.extend(tuple(v.aval.shape) for v in eqn.outvars)
            for sub in jaxprs_in_params(eqn.params):
                walk(sub)

    walk(jax.make_jaxpr(fn)(*args).jaxpr)
    return found


def test_weight_gradient_only_when_the_kernel_is_differentiated():
    x, w, a, b, ct = operands()
    loss = lambda x, w, a, b: jnp.vdot(custom(x, w, a, b, None, 0.0), ct)  # noqa: E731
    frozen = dot_shapes(jax.grad(loss, argnums=(0, 2, 3)), x, w, a, b)
    trained = dot_shapes(jax.grad(loss, argnums=(0, 1, 2, 3)), x, w, a, b)
    assert (N_IN, N_OUT) not in frozen
    assert trained.count((N_IN, N_OUT)) == 1
    # dA (computed transposed: [r, in] runs faster on XLA:CPU) and dB are there.
    assert (RANK, N_IN) in frozen and (RANK, N_OUT) in frozen


def compiled_dot_shapes(fn, *args) -> list[str]:
    """Output shapes (``f32[3,24]``) of every dot in ``fn``'s compiled HLO."""
    hlo = jax.jit(fn).lower(*args).compile().as_text()
    return [line.split(" = ")[1].split("{")[0] for line in hlo.splitlines() if " dot(" in line]


def test_lora_a_gradient_stays_in_the_fast_orientation_after_compilation():
    # XLA folds a bare transpose into the dot, which would bring back the slow [in, r] form.
    x, w, a, b, ct = operands(lead=(64,))
    loss = lambda x, a, b: jnp.vdot(custom(x, w, a, b, None, 0.0), ct)  # noqa: E731
    shapes = compiled_dot_shapes(jax.grad(loss, argnums=(0, 1, 2)), x, a, b)
    assert f"f32[{RANK},{N_IN}]" in shapes and f"f32[{N_IN},{RANK}]" not in shapes


@pytest.mark.parametrize("p", [0.95, 0.5, 1 / 3, 1.0])
@pytest.mark.parametrize("shape", [(2, 7, 33), (1,), (5,)])
def test_bernoulli_is_jax_bernoulli_bit_for_bit(p, shape):
    keys = [jax.random.PRNGKey(7), jax.random.key(11), jax.random.fold_in(jax.random.key(1), 4)]
    for key in keys:
        got, want = lora.bernoulli(key, p, shape), jax.random.bernoulli(key, p, shape)
        assert got.dtype == want.dtype and got.shape == want.shape
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    big = np.asarray(lora.bernoulli(jax.random.key(0), p, (4096,)))
    assert abs(big.mean() - p) < 5 * math.sqrt(p * (1 - p) / big.size) + 1e-9


def test_bernoulli_falls_back_for_other_key_implementations():
    key = jax.random.key(2, impl="rbg")
    got = lora.bernoulli(key, 0.7, (3, 9))
    np.testing.assert_array_equal(got, jax.random.bernoulli(key, 0.7, (3, 9)))


def test_grouped_attention_matches_numpy_heads_loop():
    b, t, n, kv, hd = 2, 7, 6, 2, 5
    rng = np.random.default_rng(1)
    q, k, v = (rng.normal(size=(b, t, h, hd)).astype(np.float32) for h in (n, kv, kv))
    lengths = [7, 4]
    mask = (
        np.tril(np.ones((t, t), bool))[None]
        & (np.arange(t)[None, :] < np.array(lengths)[:, None])[:, None, :]
    )
    got = np.asarray(qwen3.grouped_attention(q, k, v, mask, jnp.float32))
    want = np.zeros((b, t, n, hd))
    for i in range(b):
        for h in range(n):
            kh = h // (n // kv)  # query head h reads KV head h // G (HF's repeat_kv)
            s = q[i, :, h].astype(np.float64) @ k[i, :, kh].T / math.sqrt(hd)
            s = np.where(mask[i], s, -np.inf)
            p = np.exp(s - s.max(-1, keepdims=True))
            want[i, :, h] = (p / p.sum(-1, keepdims=True)) @ v[i, :, kh]
    np.testing.assert_allclose(got, want.reshape(b, t, n * hd), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("remat", [False, True])
def test_last_layer_at_pooled_rows_matches_the_full_model(remat):
    """Values and parameter gradients of the rows-only last layer equal the full model's."""
    config = qwen3.Qwen3Config(
        vocab_size=50, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=8,
    )  # fmt: skip
    model = qwen3.Qwen3Model(config, remat=remat)
    rng = np.random.default_rng(0)
    ids = jnp.asarray(rng.integers(1, 50, (3, 7)), jnp.int32)
    mask = jnp.asarray(np.arange(7)[None, :] < np.array([[7], [4], [1]]), jnp.int32)
    rows = jnp.array([6, 3, 0])
    params = model.init(jax.random.key(0), ids, mask)
    probe = jnp.asarray(rng.normal(size=(3, 32)), jnp.float32)

    def readout(params, last_rows):
        h, states = model.apply(params, ids, mask, True, last_rows)
        at_rows = h[:, 0] if last_rows is not None else h[jnp.arange(3), rows]
        return jnp.sum(at_rows * probe), (at_rows, states)

    (_, (full, full_states)), full_grads = jax.value_and_grad(readout, has_aux=True)(params, None)
    (_, (part, states)), grads = jax.value_and_grad(readout, has_aux=True)(params, rows)
    assert states[-1].shape == (3, 1, 32) and full_states[-1].shape == (3, 7, 32)
    np.testing.assert_allclose(part, full, rtol=1e-5, atol=1e-6)
    for earlier, want in zip(states[:-1], full_states[:-1], strict=True):  # computed in full
        np.testing.assert_array_equal(earlier, want)
    leaves = jax.tree_util.tree_leaves_with_path(grads)
    for (path, got), want in zip(leaves, jax.tree_util.tree_leaves(full_grads), strict=True):
        # float32 sums in another order: errors scale with the leaf's largest entries, so a
        # near-zero entry of a large gradient is judged against that scale.
        scale = float(np.max(np.abs(want)))
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6 * scale, err_msg=str(path))


def test_train_step_traces_once_per_length_bucket():
    cfg = load_config("configs/tiny.py")
    m = cfg.model
    config = qwen3.Qwen3Config(
        vocab_size=101, hidden_size=m.hidden_size, intermediate_size=m.intermediate_size,
        num_hidden_layers=m.num_layers, num_attention_heads=m.num_heads,
        num_key_value_heads=m.num_kv_heads, head_dim=m.head_dim,
    )  # fmt: skip
    model = Qwen3Classifier(config, HeadConfig.from_config(cfg.model, 3))
    ids = jnp.zeros((1, 1), jnp.int32)
    params = jax.jit(model.init)(jax.random.key(0), ids, ids)["params"]
    heads, frozen = lora.partition(params, r"^(score|projection)/")
    adapters = lora.init(frozen, lora.LoRAConfig.from_config(cfg.lora), jax.random.key(1))
    extra = steps.init_extra(ContrastiveSettings.from_config(cfg.contrastive))
    trainable = {"adapters": adapters, "params": heads, "extra": extra}
    opt = steps.make_optimizer(OptimSettings.from_config(cfg.optim), 10)
    state = steps.TrainState(
        step=jnp.zeros((), jnp.int32), trainable=trainable, opt_state=opt.init(trainable),
        rng=jax.random.PRNGKey(0), bad_steps=jnp.zeros((), jnp.int32),
    )  # fmt: skip
    # The state lives on the step's mesh, as the trainer places it (a state that came back
    # placed differently from how it went in would be traced again).
    mesh = sharding.make_mesh("0")
    state = jax.device_put(state, sharding.replicated(mesh))
    step = steps.make_train_step(model, StepSettings.from_config(cfg, 10), opt, mesh)
    # Two buckets, three steps each: a second trace of a bucket (a state that comes back with
    # another dtype, weak type or structure) fails here.
    train_step = jax.jit(chex.assert_max_traces(step, n=2), donate_argnums=(0,))
    rng = np.random.default_rng(0)
    for length in (8, 16):
        for _ in range(3):
            batch = {
                "input_ids": rng.integers(0, 101, (1, 4, length), dtype=np.int32),
                "attention_mask": np.ones((1, 4, length), np.int32),
                "labels": rng.integers(0, 3, (1, 4), dtype=np.int32),
                "valid": np.ones((1, 4), np.float32),
            }
            state, metrics = train_step(state, frozen, batch)
            assert np.isfinite(float(metrics["loss"]))
    assert int(state.step) == 6
    assert train_step._cache_size() == 2
