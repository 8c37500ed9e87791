"""LoRA as a functional transform of a parameter pytree (peft semantics).

``init`` makes the adapters, ``apply`` turns each targeted frozen kernel into a
``LoRAWeight`` node that ``qwen3.Linear`` computes factored as
``x @ W + scale * (dropout(x) @ A) @ B`` (W is never differentiated nor merged during
training), and ``merge`` folds the adapters back into plain kernels for inference and
export. Adapters mirror the parameter tree: ``{..., "q_proj": {"lora_a": [in, r],
"lora_b": [r, out]}}``. Only backbone kernels are targeted: the heads (``score``,
``projection``) are trained whole, as peft's ``modules_to_save``.
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

from jaxcls.errors import UserError

Array = jax.Array
PyTree = Any

DEFAULT_TARGETS = r"(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)$"
# Classifier heads are trained whole, never adapted, whatever ``lora.targets`` says.
HEADS = re.compile(r"^(score|projection)(/|$)")


def _compile(regex: str, key: str) -> re.Pattern:
    try:
        return re.compile(regex)
    except re.error as e:
        raise UserError(f"{key} {regex!r} is not a valid regex ({e}); fix it") from None


@dataclasses.dataclass(frozen=True)
class LoRAConfig:
    rank: int = 16
    alpha: float = 32.0
    dropout: float = 0.05
    targets: str = DEFAULT_TARGETS
    rslora: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.rank, int) or self.rank < 1:
            raise UserError(f"lora.rank must be a positive integer, got {self.rank!r}")
        if not self.alpha > 0:
            raise UserError(f"lora.alpha must be positive, got {self.alpha!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise UserError(f"lora.dropout must be in [0, 1), got {self.dropout!r}")
        _compile(self.targets, "lora.targets")

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


def _kernel_modules(params: PyTree) -> list[str]:
    """Paths of the modules that own a 2-D ``kernel`` outside the heads, sorted."""
    flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(params), sep="/")
    found = []
    for key, leaf in flat.items():
        module, _, name = key.rpartition("/")
        if name == "kernel" and np.ndim(leaf) == 2 and not HEADS.match(module):
            found.append(module)
    return sorted(found)


def target_paths(params: PyTree, targets: str) -> list[str]:
    """Module paths (e.g. ``model/layers_0/self_attn/q_proj``) whose kernel LoRA adapts.

    ``targets`` is ``re.search``-ed against each module path; heads never match.
    """
    pattern = _compile(targets, "lora.targets")
    return [m for m in _kernel_modules(params) if pattern.search(m)]


def init(params: PyTree, cfg: LoRAConfig, rng: Array) -> PyTree:
    """Adapters for every targeted kernel: A ~ U(+-1/sqrt(in)), B = 0 (float32)."""
    flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(params), sep="/")
    paths = target_paths(params, cfg.targets)
    if not paths:
        examples = ", ".join(_kernel_modules(params)[:3]) or "none (the model has no kernels)"
        raise UserError(
            f"lora.targets {cfg.targets!r} matches no parameter; paths look like {examples}; "
            "set lora.targets to a regex searched in such paths"
        )
    adapters = {}
    for i, module in enumerate(paths):
        d_in, d_out = flat[f"{module}/kernel"].shape
        bound = 1.0 / math.sqrt(d_in)
        key = jax.random.fold_in(rng, i)
        a = jax.random.uniform(key, (d_in, cfg.rank), jnp.float32, -bound, bound)
        adapters[f"{module}/lora_a"] = a
        adapters[f"{module}/lora_b"] = jnp.zeros((cfg.rank, d_out), jnp.float32)
    return flax.traverse_util.unflatten_dict(adapters, sep="/")


def _pairs(flat: dict[str, Any], adapters: PyTree, cfg: LoRAConfig) -> dict[str, tuple]:
    """``{module: (A, B)}``, checked against the kernels in ``flat`` and ``cfg.rank``.

    Adapters may come from a file (``lora.init_from``), so a mismatch is a UserError.
    """
    ad = flax.traverse_util.flatten_dict(flax.core.unfreeze(adapters), sep="/")
    pairs = {}
    for module in sorted({k.rpartition("/")[0] for k in ad}):
        a, b = ad.get(f"{module}/lora_a"), ad.get(f"{module}/lora_b")
        w = flat.get(f"{module}/kernel")
        if a is None or b is None or w is None:
            raise UserError(
                f"LoRA adapter {module!r} needs lora_a, lora_b and a model kernel of that "
                "name; the adapters were made for another model (check lora.init_from)"
            )
        d_in, d_out = np.shape(w)
        want_a, want_b = (d_in, cfg.rank), (cfg.rank, d_out)
        if np.shape(a) != want_a or np.shape(b) != want_b:
            raise UserError(
                f"LoRA adapter {module!r} has A {np.shape(a)} and B {np.shape(b)}, expected "
                f"{want_a} and {want_b}; set lora.rank to the adapters' rank or re-initialise"
            )
        pairs[module] = (a, b)
    return pairs


def apply(params: PyTree, adapters: PyTree, cfg: LoRAConfig, *, dropout: bool = True) -> PyTree:
    """Params whose adapted kernels are factored ``LoRAWeight`` nodes (nothing is merged)."""
    flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(params), sep="/")
    rate = cfg.dropout if dropout else 0.0
    for module, (a, b) in _pairs(flat, adapters, cfg).items():
        key = f"{module}/kernel"
        flat[key] = LoRAWeight(w=flat[key], a=a, b=b, scale=cfg.scale, dropout=rate)
    return flax.traverse_util.unflatten_dict(flat, sep="/")


def merge(params: PyTree, adapters: PyTree, cfg: LoRAConfig) -> PyTree:
    """Plain params with ``W + scale * A @ B`` folded in (computed in float32)."""
    flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(params), sep="/")
    for module, (a, b) in _pairs(flat, adapters, cfg).items():
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


def trainable_mask(tree: PyTree, trainable: str) -> PyTree:
    """A bool pytree like ``tree``, True where ``partition`` trains (labels for optax)."""
    pattern = re.compile(trainable) if trainable else None

    def leaf(path: tuple, _: Any) -> bool:
        return pattern is not None and pattern.search(_path_str(path)) is not None

    return jax.tree_util.tree_map_with_path(leaf, tree)


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
