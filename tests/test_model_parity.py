"""The converted Flax Qwen3 computes what Hugging Face's PyTorch Qwen3 computes."""

from __future__ import annotations

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcls.convert import load_hf
from jaxcls.errors import UserError
from jaxcls.model.classifier import HeadConfig, Qwen3Classifier
from jaxcls.model.qwen3 import Qwen3Config, Qwen3Model

VARIANTS = {
    "gqa": {},
    "mha": {"mha": True},
    "tied": {"tie": True},
    "sharded": {"shard": "60KB"},
    "old_rope_theta": {"rope": "theta"},
}


def flax_forward(hf_dir, ids, mask, dtype="float32"):
    """Convert in memory, then (logits, hidden_states) from our model, as NumPy."""
    config, params, id2label = load_hf(hf_dir, dtype)
    head = HeadConfig(num_labels=len(id2label))
    logits, _ = Qwen3Classifier(config, head).apply({"params": params}, ids, mask)
    _, hidden = Qwen3Model(config).apply({"params": params["model"]}, ids, mask)
    return np.asarray(logits), [np.asarray(h) for h in hidden]


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_matches_transformers(variant, make_hf_model, padded_batch, torch_forward):
    hf_dir = make_hf_model(**VARIANTS[variant])
    ids, mask = padded_batch
    want_logits, want_hidden = torch_forward(hf_dir, ids, mask)
    logits, hidden = flax_forward(hf_dir, ids, mask)
    assert len(hidden) == len(want_hidden) == 3 + 1
    real = mask[..., None].astype(bool)  # padded positions are not compared
    for ours, theirs in zip(hidden, want_hidden, strict=True):
        np.testing.assert_allclose(
            np.where(real, ours, 0), np.where(real, theirs, 0), atol=1e-5, rtol=1e-5
        )
    # The logits are O(1) or larger, so the comparison is not trivially satisfied.
    assert np.abs(want_logits).max() > 0.5
    np.testing.assert_allclose(logits, want_logits, atol=1e-5, rtol=1e-5)


def test_bf16_checkpoint(make_hf_model, padded_batch, torch_forward):
    hf_dir = make_hf_model(dtype="bfloat16")
    ids, mask = padded_batch
    want_logits, want_hidden = torch_forward(hf_dir, ids, mask)  # upcast to float32 by HF
    logits, hidden = flax_forward(hf_dir, ids, mask, dtype="float32")
    real = mask[..., None].astype(bool)
    final, want_final = np.where(real, hidden[-1], 0), np.where(real, want_hidden[-1], 0)
    np.testing.assert_allclose(final, want_final, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(logits, want_logits, atol=1e-5, rtol=1e-5)
    for dtype in (None, "bfloat16"):  # as stored, or asked for: bfloat16 stays bfloat16
        _, params, _ = load_hf(hf_dir, dtype)
        assert {x.dtype.name for x in jax.tree_util.tree_leaves(params)} == {"bfloat16"}


@pytest.mark.parametrize("rope", ["parameters", "theta"])
def test_config_from_hf_reads_both_rope_styles(rope, make_hf_model):
    hf_dir = make_hf_model(rope=rope)
    raw = json.loads((hf_dir / "config.json").read_text())
    assert ("rope_parameters" in raw) == (rope == "parameters")
    config = Qwen3Config.from_hf(hf_dir)
    assert config.rope_theta == 1_000_000.0
    assert (config.num_key_value_heads, config.head_dim) == (2, 16)
    assert not config.tie_word_embeddings


@pytest.mark.parametrize(
    "change, words",
    [
        ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e6, "factor": 4.0}}, "yarn"),
        ({"rope_scaling": {"type": "yarn", "factor": 4.0}}, "yarn"),
        ({"use_sliding_window": True, "sliding_window": 64}, "use_sliding_window"),
        ({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}, "llama"),
    ],
)
def test_unsupported_config_is_user_error(change, words, make_hf_model, tmp_path):
    src = make_hf_model()
    shutil.copy(src / "config.json", tmp_path / "config.json")
    raw = json.loads((tmp_path / "config.json").read_text())
    raw.update(change)
    (tmp_path / "config.json").write_text(json.dumps(raw))
    with pytest.raises(UserError, match=words) as err:
        Qwen3Config.from_hf(tmp_path)
    assert "\n" not in str(err.value)


def test_qwen3_1p7b_shapes_without_allocating():
    config = Qwen3Config(
        vocab_size=151936,
        hidden_size=2048,
        intermediate_size=6144,
        num_hidden_layers=28,
        num_attention_heads=16,
        num_key_value_heads=8,
        head_dim=128,
        tie_word_embeddings=True,
    )
    ids = jnp.zeros((1, 8), jnp.int32)
    shapes = jax.eval_shape(Qwen3Model(config).init, jax.random.key(0), ids, ids)["params"]
    n = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(shapes))
    # Independently from the architecture: embeddings, per layer (2 norms, q/k/v/o, q/k norms,
    # gate/up/down), final norm; the LM head is tied so it adds nothing.
    v, d, inter, hd, q, kv = 151936, 2048, 6144, 128, 16 * 128, 8 * 128
    per_layer = 2 * d + d * q + 2 * d * kv + q * d + 2 * hd + 3 * d * inter
    assert n == v * d + 28 * per_layer + d
    assert 1.70e9 < n < 1.75e9
    assert shapes["layers_27"]["self_attn"]["k_proj"]["kernel"].shape == (d, kv)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_scanned_layers_match_transformers(dtype, make_hf_model, padded_batch, torch_forward):
    """The scanned layer stack (model.scan_layers) on the steps' layout of the base (layers
    stacked, 16-bit kernels and embedding as integer bits) computes what HF computes."""
    from jaxcls.model import layerstack

    hf_dir = make_hf_model(dtype=dtype)
    ids, mask = padded_batch
    want_logits, want_hidden = torch_forward(hf_dir, ids, mask)
    config, params, id2label = load_hf(hf_dir, None)  # as stored: bf16 stays bf16
    layout = layerstack.step_layout(params, config.num_hidden_layers)
    assert "layers" in layout["model"] and "layers_0" not in layout["model"]
    head = HeadConfig(num_labels=len(id2label), param_dtype=dtype, scan=True)
    logits, _ = Qwen3Classifier(config, head).apply({"params": layout}, ids, mask)
    model = Qwen3Model(config, param_dtype=jnp.dtype(dtype), scan_layers=True)
    _, hidden = model.apply({"params": layout["model"]}, ids, mask)
    assert len(hidden) == len(want_hidden)
    real = mask[..., None].astype(bool)
    for ours, theirs in zip(hidden, want_hidden, strict=True):
        np.testing.assert_allclose(
            np.where(real, ours, 0), np.where(real, theirs, 0), atol=1e-5, rtol=1e-5
        )
    np.testing.assert_allclose(logits, want_logits, atol=1e-5, rtol=1e-5)
