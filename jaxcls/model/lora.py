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
import functools
import math
import re
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np

from jaxcls.errors import UserError
from jaxcls.model import quant

Array = jax.Array
PyTree = Any

DEFAULT_TARGETS = r"(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)$"
# LoRA adapts the backbone's kernels only (under ``model/``); the classifier's heads are
# trained whole, whatever ``lora.targets`` says.
BACKBONE = "model/"


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


# 16-bit float kernels and the same-width integers a scanned model slices them as (qwen3).
KERNEL_BITS = {jnp.dtype(jnp.bfloat16): jnp.uint16, jnp.dtype(jnp.float16): jnp.int16}
_BIT_FLOATS = {jnp.dtype(v): k for k, v in KERNEL_BITS.items()}


def float_kernel(w: Array) -> Array:
    """A kernel given as integer bits (``KERNEL_BITS``) bitcast back to its float dtype."""
    float_dtype = _BIT_FLOATS.get(jnp.dtype(w.dtype))
    return w if float_dtype is None else jax.lax.bitcast_convert_type(w, float_dtype)


def factored_matmul(x: Array, weight: LoRAWeight, dtype: Any, dropout_rng: Array | None) -> Array:
    """``x @ W + scale * (dropout(x) @ A) @ B`` in ``dtype``."""
    xa = x
    if dropout_rng is not None:
        keep = bernoulli(dropout_rng, 1.0 - weight.dropout, x.shape)
        xa = jnp.where(keep, x / (1.0 - weight.dropout), 0).astype(dtype)
    a, b = weight.a.astype(dtype), weight.b.astype(dtype)
    w, w_scale = weight.w, None
    if isinstance(w, quant.Int8Kernel):  # x @ (q * s) as (x @ q) * s
        w, w_scale = w.q, w.scale
    return _lora_dot(x, xa, w, w_scale, a, b, weight.scale)


def bernoulli(key: Array, p: float, shape: tuple[int, ...]) -> Array:
    """``jax.random.bernoulli(key, p, shape)``, bit for bit, as one fused elementwise loop.

    On CPU, JAX lowers the threefry hash as a rolled 5-step while loop over whole arrays
    (written and re-read at every step); the dropout masks of a step took 15% of its time.
    This is the same hash (threefry-2x32, JAX's partitionable counter layout: element i
    hashes the 64-bit counter i) unrolled, so XLA fuses it with the mask. Other key
    implementations, the legacy counter layout and 2**32 elements or more fall back to JAX.
    """
    typed = jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key)
    impl = str(jax.random.key_impl(key)) if typed else jax.config.jax_default_prng_impl
    size = math.prod(shape)
    if impl != "threefry2x32" or not jax.config.jax_threefry_partitionable or size >= 2**32:
        return jax.random.bernoulli(key, p, shape)
    k = jax.random.key_data(key) if typed else key
    counts = jax.lax.iota(jnp.uint32, size).reshape(shape)
    hi, lo = _threefry2x32(k[0], k[1], jnp.zeros(shape, jnp.uint32), counts)
    # JAX's uniform takes the top 23 bits m as the mantissa: u = m / 2**23, keep = u < p.
    threshold = math.ceil(float(np.float32(p)) * 2**23)
    keep = ((hi ^ lo) >> np.uint32(9)) < np.uint32(min(threshold, 2**23))
    # A reduction against a false plane (the value is unchanged) ends the fusion here: XLA
    # stores the mask once instead of re-running the 20-round hash in every fusion that reads
    # it (the forward select and the backward's), 3% of a cpu-small step (NOTES.md).
    return jnp.any(jnp.stack([keep, jnp.zeros_like(keep)]), axis=0)


def _threefry2x32(k0: Array, k1: Array, x0: Array, x1: Array) -> tuple[Array, Array]:
    """The Threefry-2x32 block cipher (20 rounds, Salmon et al. 2011), elementwise."""
    keys = (k0, k1, k0 ^ k1 ^ np.uint32(0x1BD11BDA))
    rotations = ((13, 15, 26, 6), (17, 29, 16, 24))
    x0, x1 = x0 + keys[0], x1 + keys[1]
    for i in range(5):
        for r in rotations[i % 2]:
            x0 = x0 + x1
            x1 = ((x1 << np.uint32(r)) | (x1 >> np.uint32(32 - r))) ^ x0
        x0 = x0 + keys[(i + 1) % 3]
        x1 = x1 + keys[(i + 2) % 3] + np.uint32(i + 1)
    return x0, x1


# The backward of the factored projection is written by hand. Left to autodiff, XLA:CPU
# fused the elementwise producers of the output gradient (the SwiGLU backward) into the
# transposes that feed the LoRA factor gradients: strided loop fusions that took as long as
# all the matmuls (benchmarks/NOTES.md). Here the gradients are plain 2-D matmuls of the
# incoming gradient as it is; the LoRA scale goes on the small factors, so no scaled copy
# of the gradient is made (XLA re-ran the whole SwiGLU backward, dropout mask included, to
# produce it); and dW is computed only when W is differentiated, never for a frozen kernel.
# W comes in its stored dtype and is cast where it is used (forward and backward): the
# backward keeps the stored kernel, not a float32 copy of a bf16 one (NOTES.md, real size).
@functools.partial(jax.custom_vjp, nondiff_argnums=(6,))
def _lora_dot(
    x: Array, xa: Array, w: Array, w_scale: Array | None, a: Array, b: Array, scale: float
) -> Array:
    """``x @ w + scale * (xa @ a) @ b`` in x's dtype; ``xa`` is the (dropped-out) LoRA input.

    ``w_scale`` [out]: ``w`` is an int8 kernel whose columns are scaled by it (``quant``).
    """
    return _base_dot(x, w, w_scale) + (scale * jnp.dot(jnp.dot(xa, a), b)).astype(x.dtype)


def _base_dot(x: Array, w: Array, w_scale: Array | None) -> Array:
    """``x @ w`` (``w`` float, or its integer bits), or ``x @ (w * w_scale)`` (``w`` int8)."""
    if w_scale is not None:
        return quant.int8_dot(x, w, w_scale)
    return jnp.dot(x, float_kernel(w).astype(x.dtype))


def _lora_dot_fwd(x, xa, w, w_scale, a, b, scale):
    u = jnp.dot(xa.value, a.value)
    dtype = x.value.dtype
    s = None if w_scale is None else w_scale.value
    out = _base_dot(x.value, w.value, s) + (scale * jnp.dot(u, b.value)).astype(dtype)
    # Only what the backward needs: x for dW (trainable W; with an empty array of W's dtype),
    # W (and its column scale) for dx and A for d(xa) when those inputs are differentiated
    # (None is an empty pytree: the choice is static).
    keep_x = (x.value, jnp.zeros((0,), w.value.dtype)) if w.perturbed else None
    keep_w = (w.value, s) if x.perturbed else None
    keep_a = a.value if xa.perturbed else None
    return out, (keep_x, xa.value, u, keep_w, keep_a, b.value)


def _lora_dot_bwd(scale, res, g):
    x, xa, u, w, a, b = res
    if isinstance(g, jax.custom_derivatives.SymbolicZero):
        return None, None, None, None, None, None
    lead = g.shape[:-1]
    flat = lambda t: t.reshape(-1, t.shape[-1])  # noqa: E731  [..., d] -> [N, d]
    g = flat(g)  # [N, out]
    dot = jax.lax.dot_general
    tn = ((0,), (0,)), ((), ())  # t1^T @ t2: contract the token axis
    nt = ((1,), (1,)), ((), ())  # t1 @ t2^T, with no transpose of t2 (W stays as it is)
    gb = scale * dot(flat(u), g, tn)  # [r, out]
    gu = dot(g, b, nt)  # [N, r], unscaled
    # dA^T = gu^T @ xa ([r, in]) runs 3-4x faster on XLA:CPU than dA = xa^T @ gu ([in, r]:
    # a generic dot at ~30 GFLOP/s). The scale between the dot and the transpose keeps XLA
    # from folding the transpose back into the dot (it does fold a bare transpose).
    ga = (scale * dot(gu, flat(xa), tn)).T  # [in, r]
    gxa = None if a is None else dot(gu, scale * a, nt).reshape(*lead, -1)
    gx = None if w is None else _base_dot_t(g, *w).reshape(*lead, -1)
    gw = None if x is None else dot(flat(x[0]), g, tn).astype(x[1].dtype)
    return gx, gxa, gw, None, ga, gb


def _base_dot_t(g: Array, w: Array, w_scale: Array | None) -> Array:
    """``g @ W^T`` [N, in] for the W of ``_base_dot`` (int8 with scale: ``(g * s) @ q^T``)."""
    nt = ((1,), (1,)), ((), ())
    if w_scale is not None:
        g32 = g.astype(jnp.float32) * w_scale
        return jax.lax.dot_general(g32.astype(g.dtype), w.astype(g.dtype), nt)
    return jax.lax.dot_general(g, float_kernel(w).astype(g.dtype), nt)


_lora_dot.defvjp(_lora_dot_fwd, _lora_dot_bwd, symbolic_zeros=True)


def _path_str(path: tuple) -> str:
    return "/".join(str(getattr(k, "key", k)) for k in path)


def _kernel_modules(params: PyTree) -> list[str]:
    """Paths of the backbone's modules that own a 2-D ``kernel``, sorted."""
    flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(params), sep="/")
    found = []
    for key, leaf in flat.items():
        module, _, name = key.rpartition("/")
        if name == "kernel" and np.ndim(leaf) == 2 and module.startswith(BACKBONE):
            found.append(module)
    return sorted(found)


def target_paths(params: PyTree, targets: str) -> list[str]:
    """Module paths (e.g. ``model/layers_0/self_attn/q_proj``) whose kernel LoRA adapts.

    ``targets`` is ``re.search``-ed against each backbone module path.
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
        *lead, d_in, d_out = np.shape(w)  # lead: the layer axis of a stacked kernel
        want_a, want_b = (*lead, d_in, cfg.rank), (*lead, cfg.rank, d_out)
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
