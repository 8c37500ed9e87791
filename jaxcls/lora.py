"""LoRA as a functional transform of a parameter pytree (peft semantics).

``init`` makes the adapters, ``apply`` turns each targeted frozen kernel into a
``LoRAWeight`` node that ``qwen3.Linear`` computes factored as
``x @ W + scale * (dropout(x) @ A) @ B`` (W is never differentiated nor merged during
training), and ``merge`` folds the adapters back into plain kernels for inference and
export. Adapters mirror the parameter tree: ``{..., "q_proj": {"lora_a": [in, r],
"lora_b": [r, out]}}``.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
PyTree = Any

DEFAULT_TARGETS = r"(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)$"


@dataclasses.dataclass(frozen=True)
class LoRAConfig:
    rank: int = 16
    alpha: float = 32.0
    dropout: float = 0.05
    targets: str = DEFAULT_TARGETS
    rslora: bool = False

    @property
    def scale(self) -> float:
        return self.alpha / (math.sqrt(self.rank) if self.rslora else self.rank)

    @classmethod
    def from_config(cls, cfg: Any) -> LoRAConfig:
        """From the ``lora`` section of an ml_collections config."""
        return cls(
            rank=int(cfg.rank),
            alpha=float(cfg.alpha),
            dropout=float(cfg.dropout),
            targets=str(cfg.targets),
            rslora=bool(cfg.rslora),
        )


@flax.struct.dataclass
class LoRAWeight:
    """A frozen kernel ``w`` [in, out] with its factors ``a`` [in, r] and ``b`` [r, out].

    ``w`` is the first field: Flax checks a parameter's shape against its first leaf.
    """

    w: Array
    a: Array
    b: Array
    scale: float = flax.struct.field(pytree_node=False)
    dropout: float = flax.struct.field(pytree_node=False, default=0.0)


def factored_matmul(x: Array, weight: LoRAWeight, dtype: Any, dropout_rng: Array | None) -> Array:
    """``x @ W + scale * (dropout(x) @ A) @ B`` in ``dtype``."""
    base = jnp.dot(x, weight.w.astype(dtype))
    xa = x
    if dropout_rng is not None:
        keep = jax.random.bernoulli(dropout_rng, 1.0 - weight.dropout, x.shape)
        xa = jnp.where(keep, x / (1.0 - weight.dropout), 0).astype(dtype)
    low = jnp.dot(jnp.dot(xa, weight.a.astype(dtype)), weight.b.astype(dtype))
    return base + (weight.scale * low).astype(dtype)


def _path_str(path: tuple) -> str:
    return "/".join(str(getattr(k, "key", k)) for k in path)


def target_paths(params: PyTree, targets: str) -> list[str]:
    """Module paths (e.g. ``model/layers_0/self_attn/q_proj``) whose kernel LoRA adapts."""
    pattern = re.compile(targets)
    flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(params), sep="/")
    found = []
    for key, leaf in flat.items():
        module, _, name = key.rpartition("/")
        if name == "kernel" and np.ndim(leaf) == 2 and pattern.search(module):
            found.append(module)
    return sorted(found)


def init(params: PyTree, cfg: LoRAConfig, rng: Array) -> PyTree:
    """Adapters for every targeted kernel: A ~ U(+-1/sqrt(in)), B = 0 (float32)."""
    flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(params), sep="/")
    paths = target_paths(params, cfg.targets)
    adapters = {}
    for i, module in enumerate(paths):
        d_in, d_out = flat[f"{module}/kernel"].shape
        bound = 1.0 / math.sqrt(d_in)
        key = jax.random.fold_in(rng, i)
        a = jax.random.uniform(key, (d_in, cfg.rank), jnp.float32, -bound, bound)
        adapters[f"{module}/lora_a"] = a
        adapters[f"{module}/lora_b"] = jnp.zeros((cfg.rank, d_out), jnp.float32)
    return flax.traverse_util.unflatten_dict(adapters, sep="/")


def _pairs(adapters: PyTree) -> dict[str, tuple[Array, Array]]:
    flat = flax.traverse_util.flatten_dict(adapters, sep="/")
    modules = {k.rpartition("/")[0] for k in flat}
    return {m: (flat[f"{m}/lora_a"], flat[f"{m}/lora_b"]) for m in modules}


def apply(params: PyTree, adapters: PyTree, cfg: LoRAConfig, *, dropout: bool = True) -> PyTree:
    """Params whose adapted kernels are factored ``LoRAWeight`` nodes (nothing is merged)."""
    flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(params), sep="/")
    rate = cfg.dropout if dropout else 0.0
    for module, (a, b) in _pairs(adapters).items():
        key = f"{module}/kernel"
        flat[key] = LoRAWeight(w=flat[key], a=a, b=b, scale=cfg.scale, dropout=rate)
    return flax.traverse_util.unflatten_dict(flat, sep="/")


def merge(params: PyTree, adapters: PyTree, cfg: LoRAConfig) -> PyTree:
    """Plain params with ``W + scale * A @ B`` folded in (computed in float32)."""
    flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(params), sep="/")
    for module, (a, b) in _pairs(adapters).items():
        key = f"{module}/kernel"
        w = flat[key]
        delta = cfg.scale * (a.astype(jnp.float32) @ b.astype(jnp.float32))
        flat[key] = (w.astype(jnp.float32) + delta).astype(w.dtype)
    return flax.traverse_util.unflatten_dict(flat, sep="/")


def partition(params: PyTree, trainable: str) -> tuple[PyTree, PyTree]:
    """Split params into (trainable, frozen) by a regex over leaf paths (``re.search``)."""
    pattern = re.compile(trainable) if trainable else None
    flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(params), sep="/")
    train = {k: v for k, v in flat.items() if pattern is not None and pattern.search(k)}
    frozen = {k: v for k, v in flat.items() if k not in train}
    unflatten = flax.traverse_util.unflatten_dict
    return unflatten(train, sep="/"), unflatten(frozen, sep="/")


def combine(*trees: PyTree) -> PyTree:
    """The union of disjoint parameter trees (the inverse of ``partition``)."""
    flat: dict[str, Any] = {}
    for tree in trees:
        flat.update(flax.traverse_util.flatten_dict(flax.core.unfreeze(tree), sep="/"))
    return flax.traverse_util.unflatten_dict(flat, sep="/")


def count(tree: PyTree) -> int:
    return sum(int(np.prod(np.shape(x))) for x in jax.tree_util.tree_leaves(tree))


def summary(trainable: PyTree, frozen: PyTree) -> str:
    """A peft-style line: trainable params, all params, trainable percentage."""
    n_train, n_frozen = count(trainable), count(frozen)
    total = n_train + n_frozen
    return (
        f"trainable params: {n_train:,} || all params: {total:,} "
        f"|| trainable%: {100.0 * n_train / max(total, 1):.4f}"
    )
