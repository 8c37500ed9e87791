"""The int8 frozen base (``model.quantize = "int8"``): weight-only, per output channel.

Each Dense kernel ``w`` [..., in, out] of the backbone becomes an ``Int8Kernel``: ``q`` int8
[..., in, out] and ``scale`` float32 [..., out], symmetric, ``scale = max_in |w| / 127`` and
``q = round(w / scale)``, so ``w ~ q * scale``. ``qwen3.Linear`` (and the factored LoRA
product, ``lora``) computes ``x @ (q * scale)`` as ``(x @ q) * scale``. The embedding table,
the norms, the score and projection heads and the LoRA factors keep their float dtypes.
A frozen base only: an integer kernel has no gradient.
"""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
PyTree = Any

QUANTIZE = ("none", "int8")
# Backbone Dense kernels: attention and MLP projections (2-D [in, out], or stacked [L, in, out]).
_PROJECTIONS = ("self_attn", "mlp")


@flax.struct.dataclass
class Int8Kernel:
    """A kernel ``q * scale``: ``q`` int8 [..., in, out], ``scale`` float32 [..., out].

    ``q`` is the first field: Flax checks a parameter's shape against its first leaf.
    """

    q: Array
    scale: Array

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.q.shape)

    @property
    def ndim(self) -> int:
        return len(self.q.shape)

    @property
    def dtype(self) -> Any:
        return self.q.dtype


def quantize(w: Any) -> Int8Kernel:
    """Symmetric per-output-channel int8 of ``w`` [..., in, out] (NumPy in, NumPy out)."""
    xp = np if isinstance(w, np.ndarray) else jnp
    w32 = w.astype(xp.float32)
    amax = xp.max(xp.abs(w32), axis=-2)
    scale = xp.where(amax > 0, amax / 127.0, 1.0).astype(xp.float32)  # an all-zero column: 1
    q = xp.clip(xp.round(w32 / scale[..., None, :]), -127, 127).astype(xp.int8)
    return Int8Kernel(q=q, scale=scale)


def dequantize(kernel: Int8Kernel, dtype: Any = jnp.float32) -> Array:
    """``q * scale`` as a float kernel of ``dtype``."""
    xp = np if isinstance(kernel.q, np.ndarray) else jnp
    return (kernel.q.astype(xp.float32) * kernel.scale[..., None, :]).astype(dtype)


def int8_dot(x: Array, q: Array, scale: Array) -> Array:
    """``x @ (q * scale)`` in x's dtype, as ``(x @ q) * scale`` accumulated in float32."""
    out = jnp.dot(x, q.astype(x.dtype), preferred_element_type=jnp.float32)
    return (out * scale).astype(x.dtype)


def is_kernel(path: str) -> bool:
    """Whether the leaf at ``path`` (``model/layers_0/mlp/up_proj/kernel``) is quantized."""
    parts = path.split("/")
    return parts[0] == "model" and parts[-1] == "kernel" and any(p in parts for p in _PROJECTIONS)


def quantize_params(params: dict) -> dict:
    """``params`` with every backbone projection kernel an ``Int8Kernel``, in place: each
    float kernel is released as it is replaced, so the base is never held twice. Other
    kernel nodes (already int8, or a factored ``lora.LoRAWeight``) are left as they are."""

    def walk(node: dict, prefix: str) -> None:
        for key, value in node.items():
            path = f"{prefix}{key}"
            if isinstance(value, dict):
                walk(value, path + "/")
            elif is_kernel(path) and isinstance(value, np.ndarray | Array):
                node[key] = quantize(value)

    walk(params, "")
    return params


def is_quantized(params: PyTree) -> bool:
    """Whether ``params`` holds any ``Int8Kernel``."""
    leaves = jax.tree_util.tree_leaves(params, is_leaf=lambda x: isinstance(x, Int8Kernel))
    return any(isinstance(x, Int8Kernel) for x in leaves)


def weight_bytes(params: PyTree) -> int:
    """Bytes of all array leaves of ``params`` (an ``Int8Kernel`` counts q and scale)."""
    return sum(
        int(np.prod(np.shape(x))) * np.dtype(x.dtype).itemsize
        for x in jax.tree_util.tree_leaves(params)
    )
