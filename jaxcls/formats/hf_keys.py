"""The one key table between Hugging Face Qwen3 tensors and jaxcls parameters.

Each row names an HF tensor, our parameter path (``/``-separated, as in the Flax tree), the
HF shape in symbolic dimensions, and a transform that runs both ways. Import (``convert``)
and export read the same rows. ``lm_head.weight`` is skipped: a classifier does not use it.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from jaxcls.model.qwen3 import Qwen3Config


@dataclasses.dataclass(frozen=True)
class Transform:
    """How an HF tensor becomes ours and back; ``shape`` maps an HF shape to ours."""

    name: str
    to_ours: Callable[[Any], np.ndarray]
    to_hf: Callable[[Any], np.ndarray]
    shape: Callable[[tuple[int, ...]], tuple[int, ...]]


def _transpose(x: Any) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(x).T)


IDENTITY = Transform("identity", np.asarray, np.asarray, lambda s: tuple(s))
# HF Linear weights are [out, in]; our kernels are [in, out]. Transposing is its own inverse.
TRANSPOSE = Transform("transpose", _transpose, _transpose, lambda s: tuple(s)[::-1])


@dataclasses.dataclass(frozen=True)
class Rule:
    """One row: HF name and our path (``{i}`` = layer index), HF shape, transform."""

    hf: str
    ours: str
    hf_dims: tuple[str, ...]
    transform: Transform

    def _regex(self, template: str) -> re.Pattern:
        return re.compile(re.escape(template).replace(re.escape("{i}"), r"(?P<i>\d+)"))

    def match_hf(self, name: str) -> str | None:
        m = self._regex(self.hf).fullmatch(name)
        return None if m is None else self.ours.format(**m.groupdict())

    def match_ours(self, path: str) -> str | None:
        m = self._regex(self.ours).fullmatch(path)
        return None if m is None else self.hf.format(**m.groupdict())


# (HF name, our path, HF shape in named dims, transform) for the tensors outside the layers.
_TOP = (
    ("model.embed_tokens.weight", "model/embed_tokens/embedding", "vocab hidden", IDENTITY),
    ("model.norm.weight", "model/norm/weight", "hidden", IDENTITY),
    # Only in *ForSequenceClassification checkpoints (no bias).
    ("score.weight", "score/kernel", "labels hidden", TRANSPOSE),
)
# The same for each decoder layer, under model.layers.{i}. (HF) and model/layers_{i}/ (ours).
_LAYER = (
    ("input_layernorm.weight", "input_layernorm/weight", "hidden", IDENTITY),
    ("post_attention_layernorm.weight", "post_attention_layernorm/weight", "hidden", IDENTITY),
    ("self_attn.q_proj.weight", "self_attn/q_proj/kernel", "q hidden", TRANSPOSE),
    ("self_attn.k_proj.weight", "self_attn/k_proj/kernel", "kv hidden", TRANSPOSE),
    ("self_attn.v_proj.weight", "self_attn/v_proj/kernel", "kv hidden", TRANSPOSE),
    ("self_attn.o_proj.weight", "self_attn/o_proj/kernel", "hidden q", TRANSPOSE),
    ("self_attn.q_norm.weight", "self_attn/q_norm/weight", "head_dim", IDENTITY),
    ("self_attn.k_norm.weight", "self_attn/k_norm/weight", "head_dim", IDENTITY),
    ("mlp.gate_proj.weight", "mlp/gate_proj/kernel", "inter hidden", TRANSPOSE),
    ("mlp.up_proj.weight", "mlp/up_proj/kernel", "inter hidden", TRANSPOSE),
    ("mlp.down_proj.weight", "mlp/down_proj/kernel", "hidden inter", TRANSPOSE),
)
RULES: tuple[Rule, ...] = tuple(Rule(h, o, tuple(d.split()), t) for h, o, d, t in _TOP) + tuple(
    Rule("model.layers.{i}." + h, "model/layers_{i}/" + o, tuple(d.split()), t)
    for h, o, d, t in _LAYER
)

# HF tensors a classifier does not use: the LM head (tied to the embeddings or not).
SKIPPED = re.compile(r"lm_head\.weight")


def hf_to_ours(name: str) -> tuple[str, Transform] | None:
    """Our parameter path and transform for an HF tensor name; None if no row matches."""
    for rule in RULES:
        path = rule.match_hf(name)
        if path is not None:
            return path, rule.transform
    return None


def ours_to_hf(path: str) -> tuple[str, Transform] | None:
    """The HF tensor name and transform for one of our parameter paths; None if none."""
    for rule in RULES:
        name = rule.match_ours(path)
        if name is not None:
            return name, rule.transform
    return None


def is_skipped(name: str) -> bool:
    """Whether an HF tensor is deliberately left out of the conversion (``lm_head``)."""
    return SKIPPED.fullmatch(name) is not None


def _dims(config: Qwen3Config, num_labels: int | None) -> dict[str, int | None]:
    return {
        "vocab": config.vocab_size,
        "hidden": config.hidden_size,
        "q": config.num_attention_heads * config.head_dim,
        "kv": config.num_key_value_heads * config.head_dim,
        "head_dim": config.head_dim,
        "inter": config.intermediate_size,
        "labels": num_labels,
    }


def expected(
    config: Qwen3Config, num_labels: int | None
) -> Iterator[tuple[str, str, tuple[int, ...], Transform]]:
    """Every (HF name, our path, HF shape, transform) of a model; no score head if no labels."""
    dims = _dims(config, num_labels)
    for rule in RULES:
        if "labels" in rule.hf_dims and num_labels is None:
            continue
        shape = tuple(int(dims[d]) for d in rule.hf_dims)
        layers = range(config.num_hidden_layers) if "{i}" in rule.hf else [None]
        for i in layers:
            yield rule.hf.format(i=i), rule.ours.format(i=i), shape, rule.transform


def expected_hf_shapes(config: Qwen3Config, num_labels: int | None) -> dict[str, tuple[int, ...]]:
    """HF tensor name -> shape, as HF stores it."""
    return {name: shape for name, _, shape, _ in expected(config, num_labels)}


def expected_param_shapes(
    config: Qwen3Config, num_labels: int | None
) -> dict[str, tuple[int, ...]]:
    """Our parameter path -> shape, as our model stores it."""
    return {path: t.shape(shape) for _, path, shape, t in expected(config, num_labels)}


# peft adapters name tensors ``base_model.model.<HF name>``: LoRA factors of a Linear as
# ``<module>.lora_A.weight`` [r, in] and ``<module>.lora_B.weight`` [out, r] (the transposes of
# our ``lora_a`` [in, r] and ``lora_b`` [r, out], as for kernels), and the modules saved whole
# (``modules_to_save``, e.g. ``score``) under their HF name.
PEFT_PREFIX = "base_model.model."
_PEFT_LORA = {"lora_A": "lora_a", "lora_B": "lora_b"}


def hf_module(module: str) -> str | None:
    """The HF module name of one of our kernel modules (``model/layers_0/self_attn/q_proj`` ->
    ``model.layers.0.self_attn.q_proj``); None if it has no kernel row."""
    found = ours_to_hf(f"{module}/kernel")
    return None if found is None else found[0].removesuffix(".weight")


def peft_to_ours(name: str) -> tuple[str, Transform] | None:
    """Our path and transform for a peft adapter tensor; None if no row matches."""
    if not name.startswith(PEFT_PREFIX):
        return None
    name = name[len(PEFT_PREFIX) :]
    m = re.fullmatch(r"(.+)\.(lora_A|lora_B)\.weight", name)
    if m is None:
        return hf_to_ours(name)
    found = hf_to_ours(f"{m[1]}.weight")
    if found is None or not found[0].endswith("/kernel"):
        return None
    return found[0].removesuffix("kernel") + _PEFT_LORA[m[2]], TRANSPOSE


def ours_to_peft(path: str) -> tuple[str, Transform] | None:
    """The peft adapter tensor name and transform for one of our adapter or param paths."""
    module, _, leaf = path.rpartition("/")
    factor = {v: k for k, v in _PEFT_LORA.items()}.get(leaf)
    if factor is None:
        found = ours_to_hf(path)
        return None if found is None else (PEFT_PREFIX + found[0], found[1])
    name = hf_module(module)
    return None if name is None else (f"{PEFT_PREFIX}{name}.{factor}.weight", TRANSPOSE)
