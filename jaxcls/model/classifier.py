"""Qwen3 backbone + pooling + ``score`` head (+ projection head) -> (logits, features)."""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxcls.model.dtypes import DTYPES
from jaxcls.model.qwen3 import Linear, Qwen3Config, Qwen3Model

Array = jax.Array
# The classifier's heads: trained whole (peft's modules_to_save), never LoRA-adapted.
HEADS = r"^(score|projection)(/|$)"


def last_token(attention_mask: Array) -> Array:
    """Index [B] of each row's last real token (HF's seq-cls rule; 0 for an empty row)."""
    return jnp.maximum(jnp.sum(attention_mask.astype(jnp.int32), axis=1) - 1, 0)


def pool(hidden: Array, attention_mask: Array, how: str) -> Array:
    """Pool [B, T, D] -> [B, D]: ``last`` real token (HF's seq-cls rule) or ``mean``."""
    mask = attention_mask.astype(jnp.int32)
    if how == "last":
        return jnp.take_along_axis(hidden, last_token(mask)[:, None, None], axis=1)[:, 0, :]
    if how == "mean":
        m = mask[..., None].astype(jnp.float32)
        total = jnp.sum(hidden.astype(jnp.float32) * m, axis=1)
        return (total / jnp.maximum(jnp.sum(m, axis=1), 1.0)).astype(hidden.dtype)
    raise ValueError(f"unknown pooling {how!r}")


@dataclasses.dataclass(frozen=True)
class HeadConfig:
    """What sits on top of the backbone, and how it computes."""

    num_labels: int
    pooling: str = "last"
    feature_layer: int = -1
    projection_dim: int = 0
    dtype: str = "float32"
    param_dtype: str = "float32"
    remat: bool = False
    scan: bool = False

    @classmethod
    def from_config(cls, model_cfg: Any, num_labels: int) -> HeadConfig:
        """From the ``model`` section of an ml_collections config."""
        return cls(
            num_labels=num_labels,
            pooling=model_cfg.pooling,
            feature_layer=int(model_cfg.feature_layer),
            projection_dim=int(model_cfg.projection_dim),
            dtype=model_cfg.dtype,
            param_dtype=model_cfg.param_dtype,
            remat=bool(model_cfg.remat),
            scan=bool(model_cfg.get("scan_layers", False)),
        )


class ProjectionHead(nn.Module):
    """A two-layer MLP mapping pooled features to the contrastive space."""

    hidden: int
    out: int

    @nn.compact
    def __call__(self, x: Array) -> Array:
        x = nn.gelu(nn.Dense(self.hidden, name="hidden")(x.astype(jnp.float32)))
        return nn.Dense(self.out, name="out")(x)


class Qwen3Classifier(nn.Module):
    """``Qwen3ForSequenceClassification`` with contrastive features.

    Returns ``(logits [B, C] float32, features [B, F] float32)``; the features are the
    pooled hidden state of ``feature_layer`` (HF ``hidden_states`` index; -1 = final
    normed) passed through the projection head when ``projection_dim > 0``.
    """

    config: Qwen3Config
    head: HeadConfig

    @nn.compact
    def __call__(
        self, input_ids: Array, attention_mask: Array, deterministic: bool = True
    ) -> tuple[Array, Array]:
        dtype, param_dtype = DTYPES[self.head.dtype], DTYPES[self.head.param_dtype]
        # hidden_states[k] of a scanned layer (0 < k < L) is kept only when it is the feature.
        layer = self.head.feature_layer % (self.config.num_hidden_layers + 1)
        backbone = Qwen3Model(
            self.config, dtype=dtype, param_dtype=param_dtype, remat=self.head.remat,
            scan_layers=self.head.scan, keep_hidden=0 < layer < self.config.num_hidden_layers,
            name="model",
        )  # fmt: skip
        # Last-token pooling reads one position of the last layer: only that one is computed.
        how = self.head.pooling
        rows = last_token(attention_mask) if how == "last" else None
        hidden, hidden_states = backbone(input_ids, attention_mask, deterministic, rows)
        pooled = hidden[:, 0] if rows is not None else pool(hidden, attention_mask, how)
        score = Linear(self.head.num_labels, dtype=dtype, param_dtype=param_dtype, name="score")
        logits = score(pooled).astype(jnp.float32)
        features = pooled
        if layer != len(hidden_states) - 1:  # an earlier layer: computed in full
            features = pool(hidden_states[layer], attention_mask, how)
        features = features.astype(jnp.float32)
        if self.head.projection_dim > 0:
            hidden = self.config.hidden_size
            features = ProjectionHead(hidden, self.head.projection_dim, name="projection")(features)
        return logits, features
