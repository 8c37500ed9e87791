"""The stacked layer layout of a scanned Qwen3 (``Qwen3Model(scan_layers=True)``).

Files, checkpoints and LoRA adapters keep the Hugging Face-mirroring ``model/layers_N``
layout. The scanned model reads layers 0..L-2 from ``model/layers``, each leaf stacked along
a new leading axis, and the last layer from ``model/layers_{L-1}``. ``stack_layers`` turns
one layout into the other (inside a jitted step for small trees such as the adapters; once,
on the host, for the frozen base: ``stack_layers(..., consume=True)`` frees each layer's
arrays as soon as they are copied into the stack, so the base is never held twice, and
allocates the stacks aligned so that placing them on a CPU device copies nothing).
"""

from __future__ import annotations

import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxcls.model.lora import KERNEL_BITS

PyTree = Any
STACKED = "layers"
_LAYER = re.compile(r"^layers_(\d+)$")
# The buffer alignment below which jax copies a host array onto a CPU device (zero-copy above).
XLA_CPU_ALIGNMENT = 64


def _flat(tree: PyTree) -> dict[tuple, Any]:
    """``{path: leaf}`` of a nested dict (a LoRAWeight, Int8Kernel or array is a leaf)."""
    if not isinstance(tree, dict):
        return {(): tree}
    return {(k, *p): v for k, sub in tree.items() for p, v in _flat(sub).items()}


def _nest(flat: dict[tuple, Any]) -> dict:
    out: dict = {}
    for path, leaf in flat.items():
        node = out
        for k in path[:-1]:
            node = node.setdefault(k, {})
        node[path[-1]] = leaf
    return out


def _stack(leaves: list[Any]) -> Any:
    """Stack arrays, or pytree nodes of arrays (``quant.Int8Kernel``) leaf by leaf."""

    def one(*xs: Any) -> Any:
        return np.stack(xs) if all(isinstance(x, np.ndarray) for x in xs) else jnp.stack(xs)

    return jax.tree_util.tree_map(one, *leaves)


def stack_layers(
    tree: PyTree, num_layers: int, *, fill_missing: bool = False, consume: bool = False
) -> PyTree:
    """``tree`` with ``model/layers_0..L-2`` stacked into ``model/layers`` (L = num_layers).

    A tree without those layers (already stacked, heads only, empty) is returned as it is.
    ``fill_missing``: a leaf that some of the layers lack is stacked with zeros there (LoRA
    factors of adapters that target only some layers: a zero B adds exactly nothing).
    ``consume``: the per-layer leaves are removed from ``tree``'s dicts as they are stacked.
    """
    model = tree.get("model") if isinstance(tree, dict) else None
    first = num_layers - 1
    if not isinstance(model, dict) or not any(f"layers_{i}" in model for i in range(first)):
        return tree
    per_layer = [_flat(model.get(f"layers_{i}", {})) for i in range(first)]
    paths = sorted({p for layer in per_layer for p in layer})
    missing = [i for i, layer in enumerate(per_layer) if set(layer) != set(paths)]
    if missing and not fill_missing:
        raise ValueError(f"layers {missing} lack some of the leaves {paths[:3]}...")
    stacked = {}
    for path in paths:
        if consume and all(isinstance(layer.get(path), np.ndarray) for layer in per_layer):
            stacked[path] = _stack_consuming(per_layer, model, path)
            continue
        like = next(layer[path] for layer in per_layer if path in layer)
        leaves = [layer.get(path) for layer in per_layer]
        leaves = [jnp.zeros_like(like) if x is None else x for x in leaves]
        stacked[path] = _stack(leaves)
        if consume:  # drop every reference to this leaf's per-layer arrays
            del leaves, like
            for i, layer in enumerate(per_layer):
                layer.pop(path, None)
                _pop(model.get(f"layers_{i}", {}), path)
    rest = {k: v for k, v in model.items() if not _is_stacked_layer(k, first)}
    return {**tree, "model": {**rest, STACKED: _nest(stacked)}}


def _stack_consuming(per_layer: list[dict], model: dict, path: tuple) -> np.ndarray:
    """``np.stack`` of each layer's ``path`` leaf, each dropped as soon as it is copied (the
    stack never exists twice), into an array aligned for XLA:CPU, which places it on the
    device without a copy: jax aliases host arrays aligned to ``XLA_CPU_ALIGNMENT``."""
    first = per_layer[0][path]
    out = aligned_empty((len(per_layer), *first.shape), first.dtype)
    del first
    for i, layer in enumerate(per_layer):
        out[i] = layer.pop(path)
        _pop(model.get(f"layers_{i}", {}), path)
    return out


def aligned_empty(shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """``np.empty`` whose data starts on an ``XLA_CPU_ALIGNMENT`` boundary (NumPy's own
    arrays are 16-byte aligned, so jax copies them when it places them on a CPU device)."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape)) * dtype.itemsize
    raw = np.empty(nbytes + XLA_CPU_ALIGNMENT, np.uint8)
    offset = -raw.ctypes.data % XLA_CPU_ALIGNMENT
    return raw[offset : offset + nbytes].view(dtype).reshape(shape)


def _pop(tree: dict, path: tuple) -> None:
    for k in path[:-1]:
        tree = tree.get(k, {})
    tree.pop(path[-1], None)


def _is_stacked_layer(key: str, first: int) -> bool:
    m = _LAYER.match(key)
    return m is not None and int(m.group(1)) < first


def unstack_layers(tree: PyTree) -> PyTree:
    """The inverse of ``stack_layers``: ``model/layers`` back to ``model/layers_N``."""
    model = tree.get("model") if isinstance(tree, dict) else None
    if not isinstance(model, dict) or STACKED not in model:
        return tree
    flat = _flat(model[STACKED])
    n = jax.tree_util.tree_leaves(next(iter(flat.values())))[0].shape[0]
    layers = {f"layers_{i}": _nest({p: v[i] for p, v in flat.items()}) for i in range(n)}
    rest = {k: v for k, v in model.items() if k != STACKED}
    return {**tree, "model": {**layers, **rest}}


def _to_bits(x: Any) -> Any:
    """A 16-bit float array as its integer bits (a NumPy view: no copy); others unchanged."""
    bits = KERNEL_BITS.get(np.dtype(x.dtype))
    if bits is None:
        return x
    return x.view(bits) if isinstance(x, np.ndarray) else jax.lax.bitcast_convert_type(x, bits)


def step_layout(frozen: PyTree, num_layers: int = 0, *, consume: bool = False) -> PyTree:
    """The frozen base as the train and eval steps read it.

    Layers stacked for a scanned model (``num_layers`` > 0), and the 16-bit float kernels
    and embedding table as integer bit patterns: XLA:CPU has no bfloat16 dynamic-slice or
    gather and converts such operands whole to float32 (NOTES.md, real size); the model
    bitcasts the slices and rows it reads back (``lora.float_kernel``). Frozen leaves only:
    bits carry no gradient.
    """
    if num_layers:
        frozen = stack_layers(frozen, num_layers, consume=consume)

    def one(path: tuple, x: Any) -> Any:
        name = getattr(path[-1], "key", None)
        return _to_bits(x) if name in ("kernel", "embedding") else x

    return jax.tree_util.tree_map_with_path(one, frozen)
