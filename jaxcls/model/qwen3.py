"""Qwen3 in Flax Linen, computed exactly as Hugging Face's PyTorch Qwen3.

Parameter names mirror Hugging Face (``embed_tokens``, ``layers_N/self_attn/q_proj``,
``q_norm``, ``input_layernorm``, ``mlp/gate_proj``, ``norm``) so that conversion is a
table (see ``jaxcls.mapping``). Kernels are stored ``[in, out]`` (HF stores ``[out, in]``).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxcls.errors import UserError
from jaxcls.model import lora, quant

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class Qwen3Config:
    """The architecture hyperparameters of a Qwen3 backbone."""

    vocab_size: int = 151936
    hidden_size: int = 2048
    intermediate_size: int = 6144
    num_hidden_layers: int = 28
    num_attention_heads: int = 16
    num_key_value_heads: int = 8
    head_dim: int = 128
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1_000_000.0
    max_position_embeddings: int = 40960
    tie_word_embeddings: bool = True

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Qwen3Config:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    @classmethod
    def from_hf(cls, source: str | Path | dict[str, Any]) -> Qwen3Config:
        """Read a Hugging Face ``config.json`` (path, model dir or dict) of a Qwen3 model."""
        where = "config"
        if isinstance(source, dict):
            hf = source
        else:
            path = Path(source)
            if path.is_dir():
                path = path / "config.json"
            where = str(path)
            if not path.is_file():
                raise UserError(f"{path}: no config.json; point at a Hugging Face Qwen3 model dir")
            try:
                hf = json.loads(path.read_text())
            except json.JSONDecodeError as e:
                raise UserError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
        _check_supported(hf, where)
        rope_theta = hf.get("rope_theta")
        rope_params = hf.get("rope_parameters") or {}
        if rope_theta is None:
            rope_theta = rope_params.get("rope_theta", 1_000_000.0)
        heads = hf["num_attention_heads"]
        return cls(
            vocab_size=hf["vocab_size"],
            hidden_size=hf["hidden_size"],
            intermediate_size=hf["intermediate_size"],
            num_hidden_layers=hf["num_hidden_layers"],
            num_attention_heads=heads,
            num_key_value_heads=hf.get("num_key_value_heads") or heads,
            head_dim=hf.get("head_dim") or hf["hidden_size"] // heads,
            rms_norm_eps=hf.get("rms_norm_eps", 1e-6),
            rope_theta=float(rope_theta),
            max_position_embeddings=hf.get("max_position_embeddings", 40960),
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
        )

    def to_hf(self) -> dict[str, Any]:
        """The fields of a Hugging Face ``Qwen3Config`` for this architecture."""
        return {
            "architectures": ["Qwen3ForSequenceClassification"],
            "model_type": "qwen3",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "hidden_act": "silu",
            "attention_bias": False,
            "use_sliding_window": False,
        }


def _check_supported(hf: dict[str, Any], where: str) -> None:
    """Raise a UserError for any setting this implementation does not compute."""
    model_type = hf.get("model_type")
    if model_type != "qwen3":
        arch = ",".join(hf.get("architectures") or []) or "unknown"
        raise UserError(
            f"{where}: model_type {model_type!r} (architectures {arch}) is not supported; "
            "jaxcls supports Qwen3 dense models (model_type 'qwen3')"
        )
    scaling = hf.get("rope_scaling") or {}
    rope_type = scaling.get("rope_type") or scaling.get("type")
    rope_type = rope_type or (hf.get("rope_parameters") or {}).get("rope_type", "default")
    if rope_type not in (None, "default"):
        raise UserError(f"{where}: rope scaling type {rope_type!r} is not supported; use 'default'")
    if hf.get("use_sliding_window"):
        raise UserError(f"{where}: use_sliding_window=true is not supported; set it to false")
    if hf.get("attention_bias"):
        raise UserError(f"{where}: attention_bias=true is not supported by Qwen3 in jaxcls")
    act = hf.get("hidden_act", "silu")
    if act != "silu":
        raise UserError(f"{where}: hidden_act {act!r} is not supported; Qwen3 uses 'silu'")


class Linear(nn.Module):
    """A bias-free projection whose kernel may be a factored ``lora.LoRAWeight`` or a
    ``quant.Int8Kernel`` (or both: LoRA on an int8 kernel)."""

    features: int
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, deterministic: bool = True) -> Array:
        init = nn.initializers.normal(0.02)
        kernel = self.param("kernel", init, (x.shape[-1], self.features), self.param_dtype)
        if isinstance(kernel, lora.LoRAWeight):
            rng = None
            if not deterministic and kernel.dropout > 0:
                rng = self.make_rng("dropout")
            return lora.factored_matmul(x.astype(self.dtype), kernel, self.dtype, rng)
        if isinstance(kernel, quant.Int8Kernel):
            return quant.int8_dot(x.astype(self.dtype), kernel.q, kernel.scale)
        return jnp.dot(x.astype(self.dtype), lora.float_kernel(kernel).astype(self.dtype))


class Embed(nn.Module):
    """The token embedding: rows gathered from the table in its stored dtype.

    ``nn.Embed`` casts the whole table to the compute dtype before the gather: a float32
    copy of Qwen3's [151936, D] table in every step (1.2 GB at D = 2048) to read B x T rows.
    """

    num_embeddings: int
    features: int
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, ids: Array) -> Array:
        init = nn.initializers.normal(0.02)
        shape = (self.num_embeddings, self.features)
        table = self.param("embedding", init, shape, self.param_dtype)
        # A frozen table may come as integer bits (layerstack.step_layout): XLA:CPU has no
        # bfloat16 gather and would convert the whole table to float32 to gather from it.
        return lora.float_kernel(jnp.take(table, ids, axis=0))


class RMSNorm(nn.Module):
    """HF's RMSNorm: normalise in float32, cast back, then scale by ``weight``."""

    eps: float = 1e-6
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        weight = self.param("weight", nn.initializers.ones, (x.shape[-1],), self.param_dtype)
        x32 = x.astype(jnp.float32)
        x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return weight.astype(self.dtype) * x32.astype(self.dtype)


def rope_tables(seq_len: int, head_dim: int, theta: float, dtype: Any) -> tuple[Array, Array]:
    """cos/sin tables [T, head_dim] for half-split RoPE, positions ``arange(T)``."""
    inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    freqs = jnp.arange(seq_len, dtype=jnp.float32)[:, None] * inv_freq[None, :]
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb).astype(dtype), jnp.sin(emb).astype(dtype)


def _rotate_half(x: Array) -> Array:
    half = x.shape[-1] // 2
    return jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)


# RoPE and SwiGLU have hand-written backwards: autodiff of the concatenate/slices in
# ``rotate_half`` became pad fusions, and the SwiGLU backward several passes over the
# [tokens, intermediate] arrays (benchmarks/NOTES.md). The forwards are unchanged.
def _heads_axis(table: Array) -> Array:
    """cos/sin [T, hd] (shared) or [B, T, hd] (per sequence) -> broadcastable to [B, T, N, hd]."""
    return table[None, :, None, :] if table.ndim == 2 else table[:, :, None, :]


@jax.custom_vjp
def apply_rope(x: Array, cos: Array, sin: Array) -> Array:
    """x [B, T, N, hd] rotated with HF's ``rotate_half`` convention (cos/sin [T or B,T, hd])."""
    return x * _heads_axis(cos) + _rotate_half(x) * _heads_axis(sin)


def _apply_rope_fwd(x, cos, sin):
    return apply_rope(x, cos, sin), (cos, sin)


def _apply_rope_bwd(res, g):
    cos, sin = res
    # rotate_half is R with R^T = -R, so the input gradient is g * cos - R(g * sin).
    return g * _heads_axis(cos) - _rotate_half(g * _heads_axis(sin)), None, None


apply_rope.defvjp(_apply_rope_fwd, _apply_rope_bwd)


@jax.custom_vjp
def swiglu(gate: Array, up: Array) -> Array:
    """``silu(gate) * up``."""
    return nn.silu(gate) * up


def _swiglu_fwd(gate, up):
    return swiglu(gate, up), (gate, up)


def _swiglu_bwd(res, g):
    gate, up = res
    s = jax.nn.sigmoid(gate)
    # d silu(x) / dx = s * (1 + x * (1 - s)).
    return g * up * (s * (1 + gate * (1 - s))), g * (gate * s)


swiglu.defvjp(_swiglu_fwd, _swiglu_bwd)


def take_rows(x: Array, rows: Array) -> Array:
    """``x[b, rows[b]]`` kept as a length-1 sequence: [B, T, ...] -> [B, 1, ...]."""
    index = rows.reshape(-1, *([1] * (x.ndim - 1)))
    return jnp.take_along_axis(x, index, axis=1)


def grouped_attention(q: Array, k: Array, v: Array, mask: Array, dtype: Any) -> Array:
    """Grouped-query attention: q [B, T, N, hd], k/v [B, S, KV, hd], mask [B, T, S] -> [B, T, N*hd].

    The G = N / KV query heads of each KV head are stacked along the query axis, so both
    products are batched matmuls over (B, KV) with contiguous [G*T, hd] and [S, hd] operands;
    the 5-D einsum "btkgd,bskd->bkgts" ran at a third of the matmul speed on XLA:CPU.
    Scores and softmax in float32, masked positions at float32 min (HF's eager attention).
    """
    b, t, n, hd = q.shape
    n_kv = k.shape[2]
    g = n // n_kv
    q = q.reshape(b, t, n_kv, g, hd).transpose(0, 2, 3, 1, 4).reshape(b, n_kv, g * t, hd)
    k, v = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)  # [B, KV, S, hd]
    scores = jnp.einsum("bkqd,bksd->bkqs", q, k) * (hd**-0.5)  # [B, KV, G*T, S]
    scores = scores.astype(jnp.float32).reshape(b, n_kv, g, t, -1)
    scores = jnp.where(mask[:, None, None, :, :], scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(dtype).reshape(b, n_kv, g * t, -1)
    out = jnp.einsum("bkqs,bksd->bkqd", probs, v).reshape(b, n_kv, g, t, hd)
    return out.transpose(0, 3, 1, 2, 4).reshape(b, t, n * hd)  # [B, T, KV, G, hd] flattened


class Attention(nn.Module):
    config: Qwen3Config
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(
        self, x: Array, mask: Array, cos: Array, sin: Array, deterministic: bool,
        rows: Array | None = None,
    ) -> Array:  # fmt: skip
        """[B, T, D] -> [B, T, D]; with ``rows`` [B], only those queries: [B, 1, D]."""
        cfg = self.config
        n_heads, n_kv, hd = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        dense = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        norm = dict(eps=cfg.rms_norm_eps, dtype=self.dtype, param_dtype=self.param_dtype)
        b, t, _ = x.shape
        q_cos, q_sin, xq = cos, sin, x
        if rows is not None:
            q_cos, q_sin = cos[rows][:, None], sin[rows][:, None]
            xq, mask = take_rows(x, rows), take_rows(mask, rows)
        q = Linear(n_heads * hd, name="q_proj", **dense)(xq, deterministic)
        k = Linear(n_kv * hd, name="k_proj", **dense)(x, deterministic)
        v = Linear(n_kv * hd, name="v_proj", **dense)(x, deterministic)
        q, k = q.reshape(b, xq.shape[1], n_heads, hd), k.reshape(b, t, n_kv, hd)
        v = v.reshape(b, t, n_kv, hd)
        q = apply_rope(RMSNorm(name="q_norm", **norm)(q), q_cos, q_sin)
        k = apply_rope(RMSNorm(name="k_norm", **norm)(k), cos, sin)
        out = grouped_attention(q, k, v, mask, self.dtype)
        return Linear(cfg.hidden_size, name="o_proj", **dense)(out, deterministic)


class MLP(nn.Module):
    config: Qwen3Config
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, deterministic: bool) -> Array:
        dense = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        inter, hidden = self.config.intermediate_size, self.config.hidden_size
        gate = Linear(inter, name="gate_proj", **dense)(x, deterministic)
        up = Linear(inter, name="up_proj", **dense)(x, deterministic)
        return Linear(hidden, name="down_proj", **dense)(swiglu(gate, up), deterministic)


class DecoderLayer(nn.Module):
    """One pre-norm block; as a ``nn.scan`` body (``scanned``) it returns ``(h, h or None)``."""

    config: Qwen3Config
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    scanned: bool = False
    keep_hidden: bool = True

    @nn.compact
    def __call__(
        self, h: Array, mask: Array, cos: Array, sin: Array, deterministic: bool,
        rows: Array | None = None,
    ) -> Array:  # fmt: skip
        """[B, T, D] -> [B, T, D]; with ``rows`` [B], only those positions' outputs [B, 1, D]."""
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        eps = self.config.rms_norm_eps
        x = RMSNorm(eps, name="input_layernorm", **kw)(h)
        attention = Attention(self.config, name="self_attn", **kw)
        attn = attention(x, mask, cos, sin, deterministic, rows)
        h = (h if rows is None else take_rows(h, rows)) + attn
        x = RMSNorm(eps, name="post_attention_layernorm", **kw)(h)
        h = h + MLP(self.config, name="mlp", **kw)(x, deterministic)
        if self.scanned:
            return h, (h if self.keep_hidden else None)
        return h


class Qwen3Model(nn.Module):
    """The Qwen3 backbone: returns (final normed hidden [B,T,D], all hidden states).

    ``hidden_states`` follows HF's ``output_hidden_states``: index 0 is the embeddings,
    index k the output of decoder layer k, and the last entry the final normed state.
    With ``last_rows`` [B] (e.g. each text's last token), the last layer computes only those
    positions: the final state and the last entry of ``hidden_states`` are [B, 1, D], the
    same values as the full computation at those rows, without the work for the others
    (1/L of the model: the last layer's queries, o_proj and MLP at every other position).

    With ``scan_layers``, layers 0..L-2 are one ``nn.scan`` over params stacked under
    ``layers`` (leading axis L-1; ``layerstack.stack_layers`` makes them from the
    ``layers_N`` layout) and the last layer stays ``layers_{L-1}``: one layer body to
    compile, and its temporaries are one layer's. ``keep_hidden=False`` leaves the scanned
    layers' entries of ``hidden_states`` as None (nothing reads them).
    """

    config: Qwen3Config
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    remat: bool = False
    scan_layers: bool = False
    keep_hidden: bool = True

    @nn.compact
    def __call__(
        self, input_ids: Array, attention_mask: Array, deterministic: bool = True,
        last_rows: Array | None = None,
    ) -> tuple[Array, tuple[Array, ...]]:  # fmt: skip
        cfg = self.config
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        embed = Embed(cfg.vocab_size, cfg.hidden_size, self.param_dtype, name="embed_tokens")
        h = embed(input_ids).astype(self.dtype)
        t = input_ids.shape[1]
        pad = attention_mask.astype(bool)
        causal = jnp.tril(jnp.ones((t, t), dtype=bool))
        mask = causal[None, :, :] & pad[:, None, :]  # [B, T, S]
        cos, sin = rope_tables(t, cfg.head_dim, cfg.rope_theta, self.dtype)
        layer_cls = nn.remat(DecoderLayer, static_argnums=(5,)) if self.remat else DecoderLayer
        hidden_states = [h]
        n = cfg.num_hidden_layers
        first = 0
        if self.scan_layers and n > 1:
            h, ys = self._scan(layer_cls, n - 1)(h, mask, cos, sin, deterministic)
            hidden_states += [None] * (n - 1) if ys is None else list(ys)
            first = n - 1
        for i in range(first, n):
            rows = last_rows if i == n - 1 else None
            h = layer_cls(cfg, name=f"layers_{i}", **kw)(h, mask, cos, sin, deterministic, rows)
            hidden_states.append(h)
        h = RMSNorm(cfg.rms_norm_eps, name="norm", **kw)(h)
        hidden_states[-1] = h
        return h, tuple(hidden_states)

    def _scan(self, layer_cls: Any, length: int) -> nn.Module:
        """The first ``length`` layers as one scanned layer, params stacked under ``layers``.

        Frozen LoRA kernels enter the loop as integer bit patterns (``_kernel_bits``).
        """
        scan = nn.scan(
            layer_cls,
            variable_axes={"params": 0},
            split_rngs={"params": True, "dropout": True},
            in_axes=(nn.broadcast, nn.broadcast, nn.broadcast, nn.broadcast),
            length=length,
        )
        stacked = nn.map_variables(scan, "params", _kernel_bits, lambda v: v, init=True)
        return stacked(
            self.config, dtype=self.dtype, param_dtype=self.param_dtype, scanned=True,
            keep_hidden=self.keep_hidden, name="layers",
        )  # fmt: skip


# XLA:CPU has no bfloat16/float16 dynamic-slice: its float normalization converts the whole
# stacked operand of the loop's per-layer slice to float32, and the conversion is then
# hoisted out of the loop, a float32 copy of every stacked kernel (NOTES.md, real size).
# Frozen LoRA kernels therefore cross the loop boundary as same-width integers (a bitcast,
# no copy), sliced as integers and bitcast back where they are used (``lora.float_kernel``):
# the slices are then the loop's own inputs, which remat and the backward reuse instead of
# saving a copy per layer. Only frozen kernels: an integer view has no gradient, and a
# ``LoRAWeight``'s kernel is never differentiated.
def _kernel_bits(tree: Any) -> Any:
    """``tree`` with its frozen LoRA kernels of 16-bit floats as integer bit patterns."""

    def one(x: Any) -> Any:
        if isinstance(x, lora.LoRAWeight) and x.w.dtype in lora.KERNEL_BITS:
            return x.replace(w=jax.lax.bitcast_convert_type(x.w, lora.KERNEL_BITS[x.w.dtype]))
        return x

    return jax.tree_util.tree_map(one, tree, is_leaf=lambda x: isinstance(x, lora.LoRAWeight))
