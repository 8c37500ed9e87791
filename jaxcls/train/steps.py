"""Pure train and eval step builders: data parallel as an explicit ``jax.shard_map``.

The trainable state is ``{"adapters": LoRA factors, "params": heads (+ the base when it
trains), "extra": learnable temperature / loss weights}``; the frozen base is a separate
argument that is never differentiated. A train batch carries a leading micro-batch axis
``[A, B, ...]`` (A = ``optim.accumulate``); gradients are summed over it with ``lax.scan``,
each micro-batch with its own contrastive loss, or, with ``contrastive.cached``, one
contrastive loss over all A micro-batches (``cached_contrastive``: two passes).

The gradient runs per device under ``jax.shard_map`` over the mesh's ``data`` axis; each
device holds its rows of the batch and computes, with scalar collectives, the loss of the
whole global batch:

- classification loss and accuracy: ``psum`` of each device's sums over its valid rows,
  divided by the ``psum`` of the valid-row counts (the one-device global-batch mean, exactly);
- contrastive loss, ``scope = "global"``: the features, labels and masks are gathered with
  ``all_gather(tiled=True)``, so every anchor sees the whole batch, and the gather's transpose
  (a reduce-scatter) sends each device the gradient of its own rows; ``scope = "local"``: the
  loss of each device's own rows (no gather), averaged over devices with ``pmean``;
- gradients: each device differentiates its own copy of the trainable state (``pcast`` to
  varying), so its gradient is its share of the global loss's; one ``psum`` after the
  micro-batches adds the shares. The optimizer update then runs outside the ``shard_map``, on
  the replicated (or FSDP-placed) state, the same on every device.

The ``fsdp`` axis is left to the compiler (``axis_names={"data"}``): the base kernels split
over it by ``sharding.FSDP_RULES`` are all-gathered where a layer uses them, and the rows of a
data shard are split over its fsdp devices, as without ``shard_map``. Dropout draws a separate
mask on each data shard (the step's key folded with the shard index), as data-parallel
training does; shard 0 uses the step's key itself, so a one-device run draws the masks it
drew before the step was a ``shard_map``. Splitting the rows over ``fsdp`` leaves the
masks unchanged.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxcls.model import layerstack, lora
from jaxcls.model.classifier import Qwen3Classifier
from jaxcls.train import cached_contrastive, objectives, schedules, sharding, weight_average
from jaxcls.train.settings import ContrastiveSettings, OptimSettings, StepSettings

Array = jax.Array
PyTree = Any
Batch = dict[str, Array]

DATA, FSDP = sharding.BATCH_AXES  # shard_map makes "data" manual; "fsdp" is the compiler's


@flax.struct.dataclass
class TrainState:
    step: Array  # int32 scalar: optimizer updates done (skipped ones included)
    trainable: PyTree
    opt_state: PyTree
    rng: Array  # uint32[2] base key; each step folds in its step number
    bad_steps: Array  # int32 scalar: consecutive steps with a non-finite loss or gradient


def init_extra(con: ContrastiveSettings) -> dict[str, Array]:
    """Trainable scalars of the contrastive strategies (learned temperature and weights)."""
    extra = {}
    if con.temperature_schedule == "learnable":
        extra["log_temperature"] = jnp.log(jnp.asarray(con.temperature, jnp.float32))
    if con.schedule == "uncertainty":
        extra["log_vars"] = jnp.zeros((2,), jnp.float32)
    return extra


def make_optimizer(optim: OptimSettings, total_steps: int) -> optax.GradientTransformation:
    """AdamW (warmup + cosine) with global-norm clipping; no weight decay on ``extra``."""

    def decay_mask(tree: PyTree) -> PyTree:
        return {k: jax.tree_util.tree_map(lambda _, d=k != "extra": d, v) for k, v in tree.items()}

    parts = []
    if optim.grad_clip > 0:
        parts.append(optax.clip_by_global_norm(optim.grad_clip))
    lr = schedules.learning_rate(optim, total_steps)
    parts.append(optax.adamw(lr, weight_decay=optim.weight_decay, mask=decay_mask))
    if optim.ema > 0:
        parts.append(weight_average.weight_average(optim.ema))  # last: averages the result
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


# ---------------------------------------------------------------- train step (per device)


def micro_batch_outputs(
    trainable: PyTree,
    frozen: PyTree,
    batch: Batch,
    rng: Array,
    *,
    model: Qwen3Classifier,
    settings: StepSettings,
) -> tuple[Array, Array, Array]:
    """``(cls, accuracy, features)`` of one global micro-batch, from this device's rows.

    ``cls`` and ``accuracy`` are means over the valid rows of the whole global micro-batch
    (the same on every device); ``features`` ``[b, D]`` are this device's rows'.
    """
    params = assemble(
        trainable, frozen, settings.lora, train=True, scan_layers=scanned_layers(model)
    )
    logits, features = model.apply(
        {"params": params},
        batch["input_ids"],
        batch["attention_mask"],
        deterministic=False,
        rngs={"dropout": rng},
    )
    labels, valid = batch["labels"], batch["valid"]
    # Sums over this device's valid rows, then over devices: the global-batch means.
    n_local = jnp.sum(valid.astype(jnp.float32))
    n_valid = jnp.maximum(jax.lax.psum(n_local, DATA), 1.0)
    cls_mean, hits = objectives.classification(
        settings.loss, settings.multi_label, logits, labels, valid
    )
    cls = jax.lax.psum(cls_mean * jnp.maximum(n_local, 1.0), DATA) / n_valid
    accuracy = jax.lax.psum(jnp.sum(hits.astype(jnp.float32)), DATA) / n_valid
    return cls, accuracy, features


def micro_batch_loss(
    trainable: PyTree,
    frozen: PyTree,
    batch: Batch,
    rng: Array,
    step: Array,
    *,
    model: Qwen3Classifier,
    settings: StepSettings,
    fsdp: int,
) -> tuple[Array, dict[str, Array]]:
    """``(loss, metrics)`` of one global micro-batch, from this device's rows of it.

    Every device returns the same values (``pmean`` makes them one); differentiated with
    respect to this device's copy of ``trainable``, the loss gives this device's share of
    the gradient.
    """
    cls, accuracy, features = micro_batch_outputs(
        trainable, frozen, batch, rng, model=model, settings=settings
    )
    total, parts = objectives.total_loss(
        settings, step, trainable["extra"], cls, features, batch["labels"], batch["valid"], fsdp
    )
    # The values are equal on every device; pmean makes them one value (invariant over the
    # data axis), so the gradient of each device's copy is its share, not a multiple.
    return jax.lax.pmean((total, {**parts, "accuracy": accuracy}), DATA)


def batch_gradients(
    trainable: PyTree,
    frozen: PyTree,
    batch: Batch,
    rng: Array,
    step: Array,
    *,
    model: Qwen3Classifier,
    settings: StepSettings,
    fsdp: int,
) -> tuple[Array, dict[str, Array], PyTree]:
    """``(loss, metrics, grads)`` of a global batch ``[A, B, ...]``: the shard_map body.

    Means over the A micro-batches; ``grads`` summed over devices (the same on all). With
    ``contrastive.cached`` the contrastive loss is one over all A micro-batches
    (``cached_contrastive``), else each micro-batch has its own.
    """
    grad_fn = jax.value_and_grad(
        functools.partial(micro_batch_loss, model=model, settings=settings, fsdp=fsdp),
        has_aux=True,
    )
    # Each device differentiates its own copy of the weights and its own dropout masks.
    local = jax.lax.pcast(trainable, DATA, to="varying")
    # Shard 0 keeps the step's key (a one-device run draws the masks it drew before the step
    # was a shard_map); shard i > 0 folds in i.
    shard = jax.lax.axis_index(DATA)
    rng = jnp.where(shard == 0, rng, jax.random.fold_in(rng, shard))
    n_micro = batch["labels"].shape[0]
    if cached_contrastive.applies(settings, n_micro):
        forward = functools.partial(micro_batch_outputs, model=model, settings=settings)
        loss, parts, grads = cached_contrastive.gradients(
            local, frozen, batch, rng, step, forward=forward, settings=settings, fsdp=fsdp
        )
        n_micro = 1  # the gradient of the step's loss already, not a sum of A
    elif n_micro == 1:
        first = jax.tree_util.tree_map(lambda x: x[0], batch)
        (loss, parts), grads = grad_fn(local, frozen, first, rng, step)
    else:

        def micro(acc: PyTree, xs: tuple[Array, Batch]) -> tuple[PyTree, tuple]:
            i, mb = xs
            (loss, parts), grads = grad_fn(local, frozen, mb, jax.random.fold_in(rng, i), step)
            return jax.tree_util.tree_map(jnp.add, acc, grads), (loss, parts)

        zeros = jax.lax.pcast(jax.tree_util.tree_map(jnp.zeros_like, trainable), DATA, to="varying")
        grads, (loss, parts) = jax.lax.scan(micro, zeros, (jnp.arange(n_micro), batch))
        loss, parts = jax.tree_util.tree_map(lambda x: jnp.mean(x, axis=0), (loss, parts))
    # Reduced over the compiler's fsdp axis first, into the weights' own FSDP layout: left
    # partial there, the psum over a data axis of size 1 fails in XLA's SPMD partitioner
    # (jax 0.10.2: "Cross-partition allreduce must be in (partial) manual partitioning mode").
    # It still fails for a base that trains (model.train_base) split over a 1 x fsdp mesh.
    grads = jax.lax.with_sharding_constraint(grads, _fsdp_specs(grads, fsdp))
    grads = jax.tree_util.tree_map(lambda g: g / n_micro, jax.lax.psum(grads, DATA))
    return loss, parts, grads


def _fsdp_specs(tree: PyTree, fsdp: int) -> PyTree:
    """The partition spec ``sharding.FSDP_RULES`` gives each leaf of a trainable-like tree."""

    def spec(path: tuple, leaf: Array) -> P:
        name = jax.tree_util.keystr(path, simple=True, separator="/")
        return sharding.leaf_spec(name, leaf.shape, fsdp)

    return jax.tree_util.tree_map_with_path(spec, tree)


# ---------------------------------------------------------------- train step (replicated)


def apply_update(
    state: TrainState,
    grads: PyTree,
    loss: Array,
    optimizer: optax.GradientTransformation,
    con: ContrastiveSettings,
) -> tuple[TrainState, dict[str, Array]]:
    """The optimizer update, skipped (state kept) when the loss or a gradient is not finite."""
    grad_norm = optax.tree.norm(grads)
    ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm)

    def update(trainable: PyTree, opt_state: PyTree) -> tuple[PyTree, PyTree]:
        updates, opt_state = optimizer.update(grads, opt_state, trainable)
        return _project_extra(optax.apply_updates(trainable, updates), con), opt_state

    # A cond, not a select over every leaf: the select cost a pass over each trainable and
    # optimizer leaf and copies of the moments (a third of the demo step, whose 151936 x 128
    # embedding trains; benchmarks/NOTES.md).
    trainable, opt_state = jax.lax.cond(
        ok, update, lambda t, o: (t, o), state.trainable, state.opt_state
    )
    new_state = state.replace(
        step=state.step + 1,
        trainable=trainable,
        opt_state=opt_state,
        bad_steps=jnp.where(ok, 0, state.bad_steps + 1),
    )
    return new_state, {"loss": loss, "grad_norm": grad_norm, "skipped": (~ok).astype(jnp.int32)}


def _project_extra(trainable: PyTree, con: ContrastiveSettings) -> PyTree:
    """Keep a learnable log-temperature inside [log temperature_min, log temperature_max].

    Projecting the parameter (rather than only clipping its use) keeps it where its gradient
    is alive: a clipped value has zero gradient, and Adam's momentum would carry the raw
    parameter past the bound, where it would stay for good.
    """
    extra = trainable["extra"]
    if "log_temperature" not in extra:
        return trainable
    lo, hi = jnp.log(con.temperature_min), jnp.log(con.temperature_max)
    extra = {**extra, "log_temperature": jnp.clip(extra["log_temperature"], lo, hi)}
    return {**trainable, "extra": extra}


def make_gradients(
    model: Qwen3Classifier, settings: StepSettings, mesh: Mesh
) -> Callable[..., tuple[Array, dict[str, Array], PyTree]]:
    """``gradients(trainable, frozen, batch, rng, step) -> (loss, metrics, grads)``: the
    ``batch_gradients`` of the train step, as a ``shard_map`` over ``mesh``."""
    return jax.shard_map(
        functools.partial(batch_gradients, model=model, settings=settings, fsdp=mesh.shape[FSDP]),
        mesh=mesh,
        in_specs=(P(), P(), P(None, DATA), P(), P()),
        out_specs=(P(), P(), P()),
        axis_names={DATA},
    )


def make_train_step(
    model: Qwen3Classifier,
    settings: StepSettings,
    optimizer: optax.GradientTransformation,
    mesh: Mesh,
) -> Callable[[TrainState, PyTree, Batch], tuple[TrainState, dict[str, Array]]]:
    """``train_step(state, frozen, batch) -> (state, metrics)`` for ``jax.jit``.

    ``batch`` is ``[A, B, ...]`` with B split over the mesh (``sharding.put_batch(...,
    batch_axis=1)``); the state and the base are placed by ``sharding.FSDP_RULES``.
    """
    gradients = make_gradients(model, settings, mesh)

    def train_step(state: TrainState, frozen: PyTree, batch: Batch):
        rng = jax.random.fold_in(state.rng, state.step)
        loss, parts, grads = gradients(state.trainable, frozen, batch, rng, state.step)
        new_state, metrics = apply_update(state, grads, loss, optimizer, settings.contrastive)
        return new_state, {**metrics, **parts}

    return train_step


# ---------------------------------------------------------------- eval step


def make_eval_step(
    model: Qwen3Classifier, lora_cfg: lora.LoRAConfig, mesh: Mesh, multi_label: bool = False
) -> Callable[[PyTree, PyTree, Batch], dict[str, Array]]:
    """``eval_step(trainable, frozen, batch) -> {logits, features, nll}`` for ``jax.jit``
    (``nll``: ``objectives.nll``, binary cross-entropy for a multi-label run).

    Each data shard runs its rows (``[B, ...]`` split over the mesh); the outputs come back
    replicated, so every process of a multi-host job has all rows.
    """

    def local_outputs(trainable: PyTree, frozen: PyTree, batch: Batch) -> dict[str, Array]:
        params = assemble(
            trainable, frozen, lora_cfg, train=False, scan_layers=scanned_layers(model)
        )
        logits, features = model.apply(
            {"params": params}, batch["input_ids"], batch["attention_mask"], deterministic=True
        )
        nll = objectives.nll(multi_label, logits, batch["labels"])
        return {"logits": logits, "features": features, "nll": nll}

    outputs = jax.shard_map(
        local_outputs,
        mesh=mesh,
        in_specs=(P(), P(), P(DATA)),
        out_specs=P(DATA),
        axis_names={DATA},
    )
    replicated = NamedSharding(mesh, P())

    def eval_step(trainable: PyTree, frozen: PyTree, batch: Batch) -> dict[str, Array]:
        return jax.lax.with_sharding_constraint(outputs(trainable, frozen, batch), replicated)

    return eval_step
