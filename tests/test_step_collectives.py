"""The train and eval steps are a ``jax.shard_map`` over the data axis with the collectives
that steps.py describes (read from the traced program, on a one-device mesh)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.extend.core import jaxprs_in_params

from jaxcls.config import load_config
from jaxcls.model import lora
from jaxcls.model.classifier import HEADS, HeadConfig, Qwen3Classifier
from jaxcls.model.qwen3 import Qwen3Config
from jaxcls.train import sharding, steps
from jaxcls.train.settings import ContrastiveSettings, OptimSettings, StepSettings

QWEN = Qwen3Config(
    vocab_size=31,
    hidden_size=16,
    intermediate_size=24,
    num_hidden_layers=1,
    num_attention_heads=2,
    num_key_value_heads=1,
    head_dim=8,
)


@functools.cache
def tiny():
    model = Qwen3Classifier(QWEN, HeadConfig(num_labels=3))
    ids = jnp.ones((1, 4), jnp.int32)
    params = jax.jit(model.init)(jax.random.key(0), ids, ids)["params"]
    heads, frozen = lora.partition(params, HEADS)
    return model, heads, frozen


def equations(jaxpr):
    """Every equation of ``jaxpr``, nested ones (scan, cond, custom_vjp, ...) included."""
    for eqn in jaxpr.eqns:
        yield eqn
        for sub in jaxprs_in_params(eqn.params):
            yield from equations(sub)


def collectives(jaxpr) -> list[tuple[str, tuple]]:
    """(primitive, axes) of every communicating collective at any depth of ``jaxpr``.

    Under shard_map's varying-axes typing, psum is ``psum_invariant`` (named "psum" here);
    ``pvary`` (an invariant value used as a per-device one) moves no data and is left out.
    """
    found = []
    for eqn in equations(jaxpr):
        name = eqn.primitive.name.removesuffix("_invariant")
        if name in ("psum", "all_gather", "reduce_scatter", "all_to_all", "ppermute"):
            axes = eqn.params.get("axes", eqn.params.get("axis_name"))
            found.append((name, tuple(axes) if isinstance(axes, tuple | list) else (axes,)))
    return found


def shard_maps(jaxpr) -> list:
    return [eqn for eqn in equations(jaxpr) if eqn.primitive.name == "shard_map"]


def train_step_jaxpr(scope: str, loss: str = "simple", accumulate: int = 1):
    cfg = load_config("configs/tiny.py")
    cfg.contrastive.scope, cfg.contrastive.loss = scope, loss
    model, heads, frozen = tiny()
    settings = StepSettings.from_config(cfg, 10)
    adapters = lora.init(frozen, settings.lora, jax.random.key(1))
    extra = steps.init_extra(ContrastiveSettings.from_config(cfg.contrastive))
    trainable = {"adapters": adapters, "params": heads, "extra": extra}
    opt = steps.make_optimizer(OptimSettings.from_config(cfg.optim), 10)
    state = steps.TrainState(
        step=jnp.zeros((), jnp.int32), trainable=trainable, opt_state=opt.init(trainable),
        rng=jax.random.PRNGKey(0), bad_steps=jnp.zeros((), jnp.int32),
    )  # fmt: skip
    batch = {
        "input_ids": np.ones((accumulate, 4, 6), np.int32),
        "attention_mask": np.ones((accumulate, 4, 6), np.int32),
        "labels": np.zeros((accumulate, 4), np.int32),
        "valid": np.ones((accumulate, 4), np.float32),
    }
    step = steps.make_train_step(model, settings, opt, sharding.make_mesh("0"))
    return jax.make_jaxpr(step)(state, frozen, batch).jaxpr, trainable


@pytest.mark.parametrize("accumulate", [1, 2])
def test_global_scope_gathers_features_and_sums_gradients(accumulate):
    jaxpr, trainable = train_step_jaxpr("global", accumulate=accumulate)
    (shard_map,) = shard_maps(jaxpr)  # one: the gradient; the update runs outside it
    assert shard_map.params["mesh"].axis_names == sharding.BATCH_AXES
    assert shard_map.params["newly_manual_axes"] == {"data"}  # fsdp is left to the compiler
    # (trainable, frozen, batch [A, B, ...] split over B, rng, step), flattened.
    specs = {str(spec) for spec in shard_map.params["in_specs"]}
    assert specs == {"P()", "P(None, 'data')"}
    body = shard_map.params["jaxpr"]
    inside = collectives(body)
    assert len(inside) == len(collectives(jaxpr))  # no collective outside the shard_map
    assert {axes for _, axes in inside} == {("data",)}
    # Features, labels and valid masks gathered (once per micro-batch: in the scan body);
    # the gather's transpose returns each device the gradient of its own rows.
    assert [name for name, _ in inside].count("all_gather") == 3
    assert ("reduce_scatter", ("data",)) in inside
    # Every gradient leaf summed over devices at the top level of the body, after the
    # micro-batches (besides the scalar sums: valid rows, losses, hits).
    summed = [
        tuple(v.aval.shape)
        for eqn in body.eqns
        if eqn.primitive.name.startswith("psum")
        for v in eqn.invars
    ]
    for leaf in jax.tree.leaves(trainable):
        assert np.shape(leaf) in summed
        summed.remove(np.shape(leaf))


def test_local_scope_gathers_nothing():
    jaxpr, _ = train_step_jaxpr("local")
    names = [name for name, _ in collectives(jaxpr)]
    assert "all_gather" not in names and "reduce_scatter" not in names and "psum" in names
    jaxpr, _ = train_step_jaxpr("global", loss="none")
    assert "all_gather" not in [name for name, _ in collectives(jaxpr)]


def test_eval_step_is_a_shard_map_over_the_rows():
    model, heads, frozen = tiny()
    cfg = load_config("configs/tiny.py")
    settings = StepSettings.from_config(cfg, 10)
    trainable = {"adapters": lora.init(frozen, settings.lora, jax.random.key(1)), "params": heads}
    batch = {k: np.ones((4, 6), np.int32) for k in ("input_ids", "attention_mask")}
    batch["labels"] = np.zeros((4,), np.int32)
    step = steps.make_eval_step(model, settings.lora, sharding.make_mesh("0"))
    (shard_map,) = shard_maps(jax.make_jaxpr(step)(trainable, frozen, batch).jaxpr)
    assert {str(spec) for spec in shard_map.params["in_specs"]} == {"P()", "P('data',)"}
    assert collectives(shard_map.params["jaxpr"]) == []  # rows are independent


def test_one_device_draws_the_plain_jit_dropout_masks():
    """On one device the step's dropout masks are those of the step's own key, as a plain
    (no shard_map) loss computation draws them: the pre-shard_map stream, unchanged."""
    cfg = load_config("configs/tiny.py")
    cfg.contrastive.loss, cfg.loss.classification, cfg.lora.dropout = "none", "ce", 0.5
    model, heads, frozen = tiny()
    settings = StepSettings.from_config(cfg, 10)
    adapters = lora.init(frozen, settings.lora, jax.random.key(1))
    # B = 0 leaves the branch out of the output; a nonzero B makes dropout matter.
    adapters = jax.tree.map(lambda x: x + 0.5, adapters)
    trainable = {"adapters": adapters, "params": heads, "extra": {}}
    opt = steps.make_optimizer(OptimSettings.from_config(cfg.optim), 10)
    state = steps.TrainState(
        step=jnp.asarray(3, jnp.int32), trainable=trainable, opt_state=opt.init(trainable),
        rng=jax.random.PRNGKey(7), bad_steps=jnp.zeros((), jnp.int32),
    )  # fmt: skip
    rows = np.random.default_rng(0)
    batch = {
        "input_ids": rows.integers(1, 31, (1, 4, 6)).astype(np.int32),
        "attention_mask": np.ones((1, 4, 6), np.int32),
        "labels": np.array([[0, 1, 2, 1]], np.int32),
        "valid": np.ones((1, 4), np.float32),
    }
    step = jax.jit(steps.make_train_step(model, settings, opt, sharding.make_mesh("0")))
    _, metrics = step(state, frozen, batch)

    def plain_loss(key):
        params = steps.assemble(trainable, frozen, settings.lora, train=True)
        logits, _ = model.apply(
            {"params": params}, batch["input_ids"][0], batch["attention_mask"][0],
            deterministic=False, rngs={"dropout": key},
        )  # fmt: skip
        log_probs = jax.nn.log_softmax(logits.astype(jnp.float32))
        return -jnp.mean(jnp.take_along_axis(log_probs, batch["labels"][0][:, None], axis=1))

    key = jax.random.fold_in(state.rng, state.step)
    assert abs(float(metrics["cls_loss"]) - float(plain_loss(key))) < 1e-6
    # The masks matter: another key gives another loss.
    assert abs(float(metrics["cls_loss"]) - float(plain_loss(jax.random.fold_in(key, 0)))) > 1e-4
