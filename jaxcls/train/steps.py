"""Pure train and eval step builders.

The trainable state is ``{"adapters": LoRA factors, "params": heads (+ the base when it
trains), "extra": learnable temperature / loss weights}``; the frozen base is a separate
argument that is never differentiated. A train batch carries a leading micro-batch axis
``[A, B, ...]`` (A = ``optim.accumulate``); gradients are averaged over it with ``lax.scan``.

The steps are written for the whole global batch. Jitted with inputs placed on the mesh
(``sharding.put_batch``), XLA splits the work over the devices and inserts the collectives:
the gradient all-reduce, the FSDP weight all-gathers, and for ``contrastive.scope = "global"``
the all-gather of the features, so the result equals a one-device run of the same batch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

from jaxcls.model import layerstack, lora
from jaxcls.model.classifier import Qwen3Classifier
from jaxcls.train import losses, schedules

Array = jax.Array
PyTree = Any
Batch = dict[str, Array]


@flax.struct.dataclass
class TrainState:
    step: Array  # int32 scalar: optimizer updates done (skipped ones included)
    trainable: PyTree
    opt_state: PyTree
    rng: Array  # uint32[2] base key; each step folds in its step number
    bad_steps: Array  # int32 scalar: consecutive steps with a non-finite loss or gradient


def init_extra(con: Any) -> dict[str, Array]:
    """Trainable scalars of the contrastive strategies (learned temperature and weights)."""
    extra = {}
    if con.temperature_schedule == "learnable":
        extra["log_temperature"] = jnp.log(jnp.asarray(con.temperature, jnp.float32))
    if con.schedule == "uncertainty":
        extra["log_vars"] = jnp.zeros((2,), jnp.float32)
    return extra


def make_optimizer(optim: Any, total_steps: int) -> optax.GradientTransformation:
    """AdamW (warmup + cosine) with global-norm clipping; no weight decay on ``extra``."""

    def decay_mask(tree: PyTree) -> PyTree:
        return {k: jax.tree_util.tree_map(lambda _, d=k != "extra": d, v) for k, v in tree.items()}

    parts = []
    if float(optim.grad_clip) > 0:
        parts.append(optax.clip_by_global_norm(float(optim.grad_clip)))
    lr = schedules.learning_rate(optim, total_steps)
    parts.append(optax.adamw(lr, weight_decay=float(optim.weight_decay), mask=decay_mask))
    return optax.chain(*parts)


def assemble(
    trainable: PyTree, frozen: PyTree, lora_cfg: lora.LoRAConfig, train: bool,
    scan_layers: int = 0,
) -> PyTree:  # fmt: skip
    """Model params: frozen base + trainable params, with factored LoRA kernels.

    ``scan_layers`` (the layer count of a scanned model, else 0): layers still in the
    ``layers_N`` layout are stacked here (the adapters; a frozen base comes stacked).
    """
    params = lora.combine(frozen, trainable["params"])
    adapters = trainable["adapters"]
    if scan_layers:
        params = layerstack.stack_layers(params, scan_layers)
        adapters = layerstack.stack_layers(adapters, scan_layers, fill_missing=True)
    return lora.apply(params, adapters, lora_cfg, dropout=train)


def scanned_layers(model: Qwen3Classifier) -> int:
    """The layer count when ``model`` scans its layers, else 0."""
    return model.config.num_hidden_layers if model.head.scan else 0


def make_train_step(
    model: Qwen3Classifier,
    cfg: Any,
    optimizer: optax.GradientTransformation,
    total_steps: int,
    *,
    class_alpha: Any = None,
    data_shards: int = 1,
) -> Callable[[TrainState, PyTree, Batch], tuple[TrainState, dict[str, Array]]]:
    """``train_step(state, frozen, batch) -> (state, metrics)`` for ``jax.jit``.

    ``data_shards`` is the data-parallel size; with ``contrastive.scope = "local"`` the
    contrastive loss is the mean of the per-shard losses (what per-device DDP computes).
    """
    lora_cfg = lora.LoRAConfig.from_config(cfg.lora)
    n_scan = scanned_layers(model)
    con, loss_cfg = cfg.contrastive, cfg.loss
    local = con.scope == "local" and data_shards > 1

    def contrastive(features: Array, labels: Array, valid: Array, temperature: Array) -> Array:
        def one(f: Array, y: Array, v: Array) -> Array:
            return losses.contrastive_loss(
                con.loss,
                f,
                y,
                temperature=temperature,
                base_temperature=float(con.base_temperature),
                focal_gamma=float(con.focal_gamma),
                margin=float(con.margin),
                valid=v,
            )

        if not local:
            return one(features, labels, valid)
        split = lambda x: x.reshape(data_shards, -1, *x.shape[1:])  # noqa: E731
        return jnp.mean(jax.vmap(one)(split(features), split(labels), split(valid)))

    def loss_fn(trainable: PyTree, frozen: PyTree, batch: Batch, rng: Array, step: Array):
        params = assemble(trainable, frozen, lora_cfg, train=True, scan_layers=n_scan)
        logits, features = model.apply(
            {"params": params},
            batch["input_ids"],
            batch["attention_mask"],
            deterministic=False,
            rngs={"dropout": rng},
        )
        valid = batch["valid"]
        cls = losses.classification_loss(
            loss_cfg.classification,
            logits,
            batch["labels"],
            focal_gamma=float(loss_cfg.focal_gamma),
            focal_alpha=class_alpha,
            label_smoothing=float(loss_cfg.label_smoothing),
            valid=valid,
        )
        extra = trainable["extra"]
        temperature = schedules.temperature(con, step, total_steps, extra.get("log_temperature"))
        con_loss = contrastive(features, batch["labels"], valid, temperature)
        weight = schedules.contrastive_weight(con, step)
        if "log_vars" in extra:
            s = extra["log_vars"]
            total = jnp.exp(-s[0]) * cls + 0.5 * s[0]
            total = total + weight * (jnp.exp(-s[1]) * con_loss + 0.5 * s[1])
            weight = weight * jnp.exp(s[0] - s[1])  # the effective weight relative to cls
        else:
            total = cls + weight * con_loss
        parts = {"cls_loss": cls, "con_loss": con_loss, "con_weight": weight}
        parts["temperature"] = temperature
        parts["accuracy"] = _accuracy(logits, batch["labels"], valid)
        return total, parts

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def train_step(state: TrainState, frozen: PyTree, batch: Batch):
        rng = jax.random.fold_in(state.rng, state.step)
        n_micro = batch["labels"].shape[0]

        def micro(carry, xs):
            i, mb = xs
            out = grad_fn(state.trainable, frozen, mb, jax.random.fold_in(rng, i), state.step)
            return jax.tree_util.tree_map(jnp.add, carry, out), None

        shapes = jax.eval_shape(grad_fn, state.trainable, frozen, _first(batch), rng, state.step)
        zeros = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
        if n_micro == 1:
            (loss, parts), grads = grad_fn(state.trainable, frozen, _first(batch), rng, state.step)
        else:
            ((loss, parts), grads), _ = jax.lax.scan(micro, zeros, (jnp.arange(n_micro), batch))
        loss, parts, grads = jax.tree_util.tree_map(lambda x: x / n_micro, (loss, parts, grads))
        grad_norm = optax.tree.norm(grads)
        ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm)

        def update(trainable: PyTree, opt_state: PyTree) -> tuple[PyTree, PyTree]:
            updates, opt_state = optimizer.update(grads, opt_state, trainable)
            return _project_extra(optax.apply_updates(trainable, updates), con), opt_state

        # A non-finite step keeps the old state. A cond, not a select over every leaf: the
        # select cost a pass over each trainable and optimizer leaf and copies of the moments
        # (a third of the demo step, whose 151936 x 128 embedding trains; benchmarks/NOTES.md).
        trainable, opt_state = jax.lax.cond(
            ok, update, lambda t, o: (t, o), state.trainable, state.opt_state
        )
        new_state = state.replace(
            step=state.step + 1,
            trainable=trainable,
            opt_state=opt_state,
            bad_steps=jnp.where(ok, 0, state.bad_steps + 1),
        )
        metrics = {"loss": loss, "grad_norm": grad_norm, "skipped": (~ok).astype(jnp.int32)}
        return new_state, {**metrics, **parts}

    return train_step


def _project_extra(trainable: PyTree, con: Any) -> PyTree:
    """Keep a learnable log-temperature inside [log temperature_min, log temperature_max].

    Projecting the parameter (rather than only clipping its use) keeps it where its gradient
    is alive: a clipped value has zero gradient, and Adam's momentum would carry the raw
    parameter past the bound, where it would stay for good.
    """
    extra = trainable["extra"]
    if "log_temperature" not in extra:
        return trainable
    lo, hi = jnp.log(float(con.temperature_min)), jnp.log(float(con.temperature_max))
    extra = {**extra, "log_temperature": jnp.clip(extra["log_temperature"], lo, hi)}
    return {**trainable, "extra": extra}


def _first(batch: Batch) -> Batch:
    return jax.tree_util.tree_map(lambda x: x[0], batch)


def _accuracy(logits: Array, labels: Array, valid: Array) -> Array:
    v = valid.astype(jnp.float32)
    hits = (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)
    return jnp.sum(hits * v) / jnp.maximum(jnp.sum(v), 1.0)


def make_eval_step(
    model: Qwen3Classifier, cfg: Any
) -> Callable[[PyTree, PyTree, Batch], dict[str, Array]]:
    """``eval_step(trainable, frozen, batch) -> {logits, features, nll}`` for ``jax.jit``."""
    lora_cfg = lora.LoRAConfig.from_config(cfg.lora)
    n_scan = scanned_layers(model)

    def eval_step(trainable: PyTree, frozen: PyTree, batch: Batch) -> dict[str, Array]:
        params = assemble(trainable, frozen, lora_cfg, train=False, scan_layers=n_scan)
        logits, features = model.apply(
            {"params": params}, batch["input_ids"], batch["attention_mask"], deterministic=True
        )
        log_probs = jax.nn.log_softmax(logits, axis=-1)
        nll = -jnp.take_along_axis(log_probs, batch["labels"][:, None], axis=-1)[:, 0]
        return {"logits": logits, "features": features, "nll": nll}

    return eval_step
