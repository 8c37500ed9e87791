"""LoRA (jaxcls.model.lora) on a tiny Qwen3: exactness, peft semantics, no frozen grads."""

from __future__ import annotations

import collections
import functools
import math
import re
import types

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
import scipy.stats
from flax import traverse_util
from jax.extend.core import jaxprs_in_params

from jaxcls.errors import UserError
from jaxcls.model import lora
from jaxcls.model.classifier import HeadConfig, Qwen3Classifier
from jaxcls.model.qwen3 import Qwen3Config

# Distinct sizes (hidden 40 != heads * head_dim 48) so that no two axes can be mixed up.
VOCAB, HIDDEN, INTER, LAYERS, HEADS, KV, HEAD_DIM = 97, 40, 56, 2, 4, 2, 12
RANK, ALPHA, LABELS, PROJ = 3, 7.0, 5, 11
BATCH, SEQ = 2, 7
HEAD_REGEX = r"^(score|projection)/"
CONFIG = Qwen3Config(
    vocab_size=VOCAB,
    hidden_size=HIDDEN,
    intermediate_size=INTER,
    num_hidden_layers=LAYERS,
    num_attention_heads=HEADS,
    num_key_value_heads=KV,
    head_dim=HEAD_DIM,
)
# (module under layers_i, in, out), written from the architecture, not read from params.
PROJECTIONS = [
    ("self_attn/q_proj", HIDDEN, HEADS * HEAD_DIM),
    ("self_attn/k_proj", HIDDEN, KV * HEAD_DIM),
    ("self_attn/v_proj", HIDDEN, KV * HEAD_DIM),
    ("self_attn/o_proj", HEADS * HEAD_DIM, HIDDEN),
    ("mlp/gate_proj", HIDDEN, INTER),
    ("mlp/up_proj", HIDDEN, INTER),
    ("mlp/down_proj", INTER, HIDDEN),
]
PLAIN = lora.LoRAConfig(rank=RANK, alpha=ALPHA, dropout=0.0)
DROPPY = lora.LoRAConfig(rank=RANK, alpha=ALPHA, dropout=0.5)


def model(**head) -> Qwen3Classifier:
    return Qwen3Classifier(CONFIG, HeadConfig(num_labels=LABELS, projection_dim=PROJ, **head))


@pytest.fixture(scope="module")
def tiny():
    ids = np.random.default_rng(1).integers(0, VOCAB, (BATCH, SEQ), dtype=np.int32)
    mask = np.ones((BATCH, SEQ), np.int32)
    mask[1, SEQ - 2 :] = 0  # row 1 is right-padded
    # Random params drawn in NumPy from the abstract tree: no compile of ``init`` needed, and
    # larger than the default init so that a wrong term shows in the outputs.
    shapes = jax.eval_shape(model().init, jax.random.key(1), ids, mask)["params"]
    rng = np.random.default_rng(0)

    def draw(path, leaf):
        noise = rng.normal(0.0, 0.2, leaf.shape)
        is_norm = getattr(path[-1], "key", None) == "weight"
        return jnp.asarray(1.0 + noise if is_norm else noise, leaf.dtype)

    params = jax.tree_util.tree_map_with_path(draw, shapes)
    labels = np.array([1, 4])
    return types.SimpleNamespace(ids=ids, mask=mask, params=params, labels=labels)


@functools.partial(jax.jit, static_argnames=("cfg", "deterministic"))
def forward(params, adapters, ids, mask, rng, *, cfg=None, deterministic=True):
    """(logits, features); factored LoRA when ``adapters`` is given, else plain ``params``."""
    if adapters is not None:
        params = lora.apply(params, adapters, cfg)
    return model().apply(
        {"params": params}, ids, mask, deterministic=deterministic, rngs={"dropout": rng}
    )


def run(t, params, adapters=None, rng=0, **kw):
    return forward(params, adapters, t.ids, t.mask, jax.random.key(rng), **kw)


def flat(tree) -> dict:
    return traverse_util.flatten_dict(tree, sep="/")


def with_random_b(adapters, seed: int = 5, std: float = 0.3):
    """The same A, with every B replaced by a non-zero random matrix."""
    rng = np.random.default_rng(seed)
    out = {}
    for k, v in sorted(flat(adapters).items()):
        noise = jnp.asarray(rng.normal(0.0, std, v.shape), v.dtype)
        out[k] = noise if k.endswith("lora_b") else v
    return traverse_util.unflatten_dict(out, sep="/")


def to_bfloat16(tree):
    """Cast on the host (ml_dtypes), sparing a compile per shape."""
    return jax.tree.map(lambda x: jnp.asarray(np.asarray(x).astype(jnp.bfloat16)), tree)


def expected_tree() -> dict[str, tuple[int, int]]:
    tree = {}
    for layer in range(LAYERS):
        for name, d_in, d_out in PROJECTIONS:
            tree[f"model/layers_{layer}/{name}/lora_a"] = (d_in, RANK)
            tree[f"model/layers_{layer}/{name}/lora_b"] = (RANK, d_out)
    return tree


# --- exactness: init, merged vs factored, NumPy reference ---------------------------------


def test_at_init_lora_model_equals_base_exactly(tiny):
    adapters = lora.init(tiny.params, PLAIN, jax.random.key(2))
    base = run(tiny, tiny.params)
    factored = run(tiny, tiny.params, adapters, cfg=PLAIN)
    for got, want in zip(factored, base, strict=True):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_merged_equals_factored_with_random_adapters(tiny):
    adapters = with_random_b(lora.init(tiny.params, PLAIN, jax.random.key(2)))
    base_logits, _ = run(tiny, tiny.params)
    factored = run(tiny, tiny.params, adapters, cfg=PLAIN)
    merged = run(tiny, lora.merge(tiny.params, adapters, PLAIN))
    # The adapters must matter, or the agreement below would be vacuous.
    assert np.max(np.abs(np.asarray(factored[0] - base_logits))) > 1e-2
    for got, want in zip(factored, merged, strict=True):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=0, atol=1e-5)


@pytest.mark.parametrize("rslora", [False, True])
def test_merge_matches_numpy(tiny, rslora):
    cfg = lora.LoRAConfig(rank=RANK, alpha=ALPHA, rslora=rslora)
    assert cfg.scale == pytest.approx(ALPHA / (math.sqrt(RANK) if rslora else RANK), rel=1e-12)
    adapters = with_random_b(lora.init(tiny.params, cfg, jax.random.key(2)))
    merged = flat(lora.merge(tiny.params, adapters, cfg))
    base, ad = flat(tiny.params), flat(adapters)
    scale = ALPHA / math.sqrt(RANK) if rslora else ALPHA / RANK
    for module in ["model/layers_1/self_attn/q_proj", "model/layers_0/mlp/down_proj"]:
        a, b = np.asarray(ad[f"{module}/lora_a"], np.float64), np.asarray(ad[f"{module}/lora_b"])
        want = np.asarray(base[f"{module}/kernel"], np.float64) + scale * a @ b
        np.testing.assert_allclose(np.asarray(merged[f"{module}/kernel"]), want, atol=1e-6)
    untouched = [k for k in base if not k.endswith("_proj/kernel")]
    assert untouched and all(merged[k] is base[k] for k in untouched)


def test_factored_matmul_matches_numpy_and_masked_formula():
    rng = np.random.default_rng(0)
    x, w = rng.normal(size=(BATCH, SEQ, HIDDEN)), rng.normal(size=(HIDDEN, INTER))
    a, b = rng.normal(size=(HIDDEN, RANK)), rng.normal(size=(RANK, INTER))
    f32 = functools.partial(jnp.asarray, dtype=jnp.float32)
    weight = lora.LoRAWeight(w=f32(w), a=f32(a), b=f32(b), scale=ALPHA / RANK, dropout=0.5)
    got = lora.factored_matmul(f32(x), weight, jnp.float32, None)
    np.testing.assert_allclose(got, x @ w + ALPHA / RANK * (x @ a) @ b, rtol=1e-5, atol=1e-4)
    key = jax.random.key(9)
    keep = np.asarray(jax.random.bernoulli(key, 0.5, x.shape))
    assert 0.4 < keep.mean() < 0.6
    got = lora.factored_matmul(f32(x), weight, jnp.float32, key)
    want = x @ w + ALPHA / RANK * ((x * keep / 0.5) @ a) @ b  # dropout on the LoRA input only
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


# --- dropout: LoRA branch only, training only ---------------------------------------------


def test_dropout_only_on_lora_branch_and_only_in_training(tiny):
    adapters = lora.init(tiny.params, DROPPY, jax.random.key(2))
    base = run(tiny, tiny.params)
    # B = 0: dropout in training leaves the base path untouched.
    train0 = run(tiny, tiny.params, adapters, rng=1, cfg=DROPPY, deterministic=False)
    np.testing.assert_array_equal(np.asarray(train0[0]), np.asarray(base[0]))
    adapters = with_random_b(adapters)
    no_dropout = run(tiny, tiny.params, adapters, cfg=PLAIN)
    evaluation = run(tiny, tiny.params, adapters, cfg=DROPPY, deterministic=True)
    np.testing.assert_array_equal(np.asarray(evaluation[0]), np.asarray(no_dropout[0]))
    train1 = run(tiny, tiny.params, adapters, rng=1, cfg=DROPPY, deterministic=False)
    again = run(tiny, tiny.params, adapters, rng=1, cfg=DROPPY, deterministic=False)
    train2 = run(tiny, tiny.params, adapters, rng=2, cfg=DROPPY, deterministic=False)
    np.testing.assert_array_equal(np.asarray(train1[0]), np.asarray(again[0]))
    assert np.max(np.abs(np.asarray(train1[0] - no_dropout[0]))) > 1e-3
    assert np.max(np.abs(np.asarray(train1[0] - train2[0]))) > 1e-3


# --- gradients: adapters and heads only, never the frozen base ----------------------------


def loss_fn(trainable, frozen, t, cfg, *, merged=False, head=None):
    adapters, heads = trainable
    params = lora.combine(frozen, heads)
    if merged:  # the forbidden variant: W + scale * A @ B inside the step
        params = lora.merge(params, adapters, cfg)
    else:
        params = lora.apply(params, adapters, cfg)
    logits, features = (head or model()).apply({"params": params}, t.ids, t.mask)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, t.labels).mean()
    return ce + 0.1 * jnp.mean(features**2)


def frozen_shaped_ops(fn, *args, shapes) -> collections.Counter:
    """``(primitive, shape)`` of every equation, at any depth of ``fn``'s jaxpr, whose output
    has one of ``shapes``; casts of an input (``convert_element_type``) are not computations."""
    found: collections.Counter = collections.Counter()

    def walk(jaxpr) -> None:
        for eqn in jaxpr.eqns:
            if eqn.primitive.name != "convert_element_type":
                for var in eqn.outvars:
                    shape = tuple(getattr(var.aval, "shape", ()))
                    if shape in shapes:
                        found[(eqn.primitive.name, shape)] += 1
            for sub in jaxprs_in_params(eqn.params):
                walk(sub)

    walk(jax.make_jaxpr(fn)(*args).jaxpr)
    return found


def split(params, adapters):
    heads, frozen = lora.partition(params, HEAD_REGEX)
    return (adapters, heads), frozen


def assert_nonzero(tree, what: str) -> None:
    for path, leaf in flat(tree).items():
        assert np.any(np.asarray(leaf) != 0), f"{what}: zero gradient for {path}"


def test_gradients_reach_adapters_and_heads_like_the_merged_model(tiny):
    adapters = lora.init(tiny.params, PLAIN, jax.random.key(2))
    trainable, frozen = split(tiny.params, adapters)
    grad = jax.jit(jax.grad(functools.partial(loss_fn, t=tiny, cfg=PLAIN)))
    g_adapters, g_heads = grad(trainable, frozen)
    assert set(flat(g_adapters)) == set(expected_tree())
    assert set(flat(g_heads)) == {k for k in flat(tiny.params) if re.search(HEAD_REGEX, k)}
    assert_nonzero(g_heads, "heads at init")
    # peft at init: B = 0 makes dL/dA exactly zero, while dL/dB is not.
    for path, leaf in flat(g_adapters).items():
        zero = not np.any(np.asarray(leaf))
        assert zero == path.endswith("lora_a"), path
    # One SGD step makes B non-zero; then every adapter has a gradient.
    step = (g_adapters, g_heads)
    trainable = jax.tree.map(lambda p, g: np.asarray(p) - 0.5 * np.asarray(g), trainable, step)
    g_adapters, g_heads = grad(trainable, frozen)
    assert_nonzero(g_adapters, "adapters after one step")
    assert_nonzero(g_heads, "heads after one step")
    # The factored gradient is the gradient of the merged model (differentiated via merge).
    merged_grad = jax.jit(jax.grad(functools.partial(loss_fn, t=tiny, cfg=PLAIN, merged=True)))
    reference = jax.tree.leaves(merged_grad(trainable, frozen))
    for got, want in zip(jax.tree.leaves((g_adapters, g_heads)), reference, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(
    "head", [{}, {"remat": True, "dtype": "bfloat16", "param_dtype": "bfloat16"}]
)
def test_frozen_base_is_never_differentiated(tiny, head):
    params = tiny.params
    if head:
        params = to_bfloat16(params)
    adapters = with_random_b(lora.init(params, PLAIN, jax.random.key(2)))
    trainable, frozen = split(params, adapters)
    frozen_shapes = {tuple(x.shape) for x in jax.tree.leaves(frozen) if x.ndim == 2}
    targeted = {(d_in, d_out) for _, d_in, d_out in PROJECTIONS}
    assert targeted < frozen_shapes  # the embedding [vocab, hidden] is frozen too
    step = jax.grad(functools.partial(loss_fn, t=tiny, cfg=PLAIN, head=model(**head)))
    assert frozen_shaped_ops(step, trainable, frozen, shapes=frozen_shapes) == {}
    # The walker reaches the backward pass (inside remat too): it sees the gradients of A.
    a_shapes = {(d_in, RANK) for _, d_in, _ in PROJECTIONS}
    assert sum(frozen_shaped_ops(step, trainable, frozen, shapes=a_shapes).values()) >= 7 * LAYERS
    # The detector works: merging inside the step computes frozen-kernel-shaped arrays.
    merged = jax.grad(
        functools.partial(loss_fn, t=tiny, cfg=PLAIN, head=model(**head), merged=True)
    )
    found = frozen_shaped_ops(merged, trainable, frozen, shapes=frozen_shapes)
    assert {shape for (prim, shape) in found if prim == "dot_general"} == targeted


# --- the adapter tree and the targets regex -----------------------------------------------


def test_exact_adapter_tree_and_init_distribution(tiny):
    adapters = flat(lora.init(tiny.params, PLAIN, jax.random.key(2)))
    assert {k: tuple(v.shape) for k, v in adapters.items()} == expected_tree()
    assert all(v.dtype == jnp.float32 for v in adapters.values())
    uniform = []  # A / bound, which must be U(-1, 1) for every module
    for key, value in adapters.items():
        value = np.asarray(value)
        if key.endswith("lora_b"):
            assert not np.any(value), key
            continue
        bound = 1.0 / math.sqrt(value.shape[0])
        assert np.all(np.abs(value) <= bound), key
        assert value.max() > 0.5 * bound and value.min() < -0.5 * bound, key
        uniform.append(value.ravel() / bound)
    assert scipy.stats.kstest(np.concatenate(uniform), "uniform", args=(-1, 2)).pvalue > 1e-3
    a_leaves = [tuple(np.asarray(v).ravel()[:5]) for k, v in adapters.items() if "lora_a" in k]
    assert len(set(a_leaves)) == len(a_leaves)  # each module draws its own A


def test_adapters_are_float32_for_bfloat16_params(tiny):
    params = to_bfloat16(tiny.params)
    adapters = lora.init(params, PLAIN, jax.random.key(2))
    assert {v.dtype for v in jax.tree.leaves(adapters)} == {jnp.dtype(jnp.float32)}
    merged = lora.merge(params, with_random_b(adapters), PLAIN)
    assert {v.dtype for v in jax.tree.leaves(merged)} == {jnp.dtype(jnp.bfloat16)}


ALL = [f"layers_{i}/{name}" for i in range(LAYERS) for name, _, _ in PROJECTIONS]


@pytest.mark.parametrize(
    "targets, modules",
    [
        (lora.DEFAULT_TARGETS, ALL),
        (r".*(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)$", ALL),
        (".", ALL),  # matches every path, yet the heads stay unadapted
        (r"(q_proj|v_proj)$", [f"layers_{i}/self_attn/{p}_proj" for i in (0, 1) for p in "qv"]),
        (r"layers_1/.*(gate_proj|up_proj)$", ["layers_1/mlp/gate_proj", "layers_1/mlp/up_proj"]),
    ],
)
def test_targets_regex_selects_what_it_says(tiny, targets, modules):
    want = sorted(f"model/{m}" for m in modules)
    assert lora.target_paths(tiny.params, targets) == want
    cfg = lora.LoRAConfig(rank=RANK, targets=targets)
    adapters = lora.init(tiny.params, cfg, jax.random.key(2))
    assert sorted({k.rpartition("/")[0] for k in flat(adapters)}) == want
    applied = flat(lora.apply(tiny.params, adapters, cfg))
    factored = [k for k, v in applied.items() if isinstance(v, lora.LoRAWeight)]
    # Only the targets; embeddings, norms and heads stay plain arrays.
    assert sorted(factored) == [f"{m}/kernel" for m in want]


@pytest.mark.parametrize("targets", ["nothing_here", "score", "projection", "embed_tokens"])
def test_targets_matching_nothing_raise(tiny, targets):
    cfg = lora.LoRAConfig(rank=RANK, targets=targets)
    message = r"lora.targets .* matches no parameter; paths look like model/layers_0/"
    with pytest.raises(UserError, match=message):
        lora.init(tiny.params, cfg, jax.random.key(2))


# --- config, errors, summary, partition ---------------------------------------------------


def test_config_from_ml_collections_and_bad_values():
    section = ml_collections.ConfigDict(
        dict(rank=8, alpha=16, dropout=0.1, targets="q_proj$", rslora=True, init_from="")
    )
    cfg = lora.LoRAConfig.from_config(section)
    assert cfg == lora.LoRAConfig(rank=8, alpha=16.0, dropout=0.1, targets="q_proj$", rslora=True)
    assert cfg.scale == pytest.approx(16 / math.sqrt(8))
    for key, bad in [
        ("rank", 0),
        ("alpha", 0.0),
        ("dropout", 1.0),
        ("dropout", -0.1),
        ("targets", "(q_proj"),
    ]:
        with pytest.raises(UserError, match=f"lora.{key}"):
            lora.LoRAConfig.from_config(ml_collections.ConfigDict({**section.to_dict(), key: bad}))


def test_mismatched_adapters_raise(tiny):
    adapters = lora.init(tiny.params, PLAIN, jax.random.key(2))
    other_rank = lora.LoRAConfig(rank=RANK + 2, alpha=ALPHA)
    for fn in (lora.apply, lora.merge):
        with pytest.raises(UserError, match="set lora.rank"):
            fn(tiny.params, adapters, other_rank)
    stray = {**flat(adapters), "model/layers_9/mlp/up_proj/lora_a": jnp.zeros((HIDDEN, RANK))}
    with pytest.raises(UserError, match="layers_9/mlp/up_proj"):
        lora.apply(tiny.params, traverse_util.unflatten_dict(stray, sep="/"), PLAIN)


def test_summary_counts(tiny):
    adapters = lora.init(tiny.params, PLAIN, jax.random.key(2))
    (adapters, heads), frozen = split(tiny.params, adapters)
    per_layer = sum(d_in * d_out for _, d_in, d_out in PROJECTIONS) + 2 * HIDDEN + 2 * HEAD_DIM
    base = VOCAB * HIDDEN + LAYERS * per_layer + HIDDEN
    n_heads = HIDDEN * LABELS + (HIDDEN * HIDDEN + HIDDEN) + (HIDDEN * PROJ + PROJ)
    n_adapters = LAYERS * sum(RANK * (d_in + d_out) for _, d_in, d_out in PROJECTIONS)
    line = lora.summary((adapters, heads), frozen)
    match = re.fullmatch(
        r"trainable params: ([\d,]+) \|\| all params: ([\d,]+) \|\| trainable%: ([\d.]+)", line
    )
    assert match, line
    n_train, total = (int(g.replace(",", "")) for g in match.groups()[:2])
    assert (n_train, total) == (n_adapters + n_heads, base + n_adapters + n_heads)
    assert float(match.group(3)) == pytest.approx(100 * n_train / total, abs=1e-4)


def test_partition_combine_round_trip(tiny):
    heads, frozen = lora.partition(tiny.params, HEAD_REGEX)
    assert set(heads) == {"score", "projection"} and set(frozen) == {"model"}
    restored = flat(lora.combine(heads, frozen))
    assert restored.keys() == flat(tiny.params).keys()
    assert all(restored[k] is v for k, v in flat(tiny.params).items())
