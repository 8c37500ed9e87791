"""The train step on a scanned layer stack (model.scan_layers, the default) computes the loss
and LoRA gradients of the unrolled model (the HF-parity tests cover the unrolled one)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from jaxcls.config import load_config
from jaxcls.model import layerstack, lora
from jaxcls.model.classifier import HeadConfig, Qwen3Classifier
from jaxcls.model.qwen3 import Qwen3Config
from jaxcls.train import sharding, steps
from jaxcls.train.settings import ContrastiveSettings, StepSettings

QWEN = Qwen3Config(
    vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=4,
    num_attention_heads=4, num_key_value_heads=2, head_dim=8,
)  # fmt: skip


def gradients(scan: bool, settings: StepSettings, cfg) -> tuple[float, dict]:
    head = HeadConfig(num_labels=3, scan=scan)
    unrolled = Qwen3Classifier(QWEN, dataclasses.replace(head, scan=False))
    ids = jnp.ones((1, 4), jnp.int32)
    params = jax.jit(unrolled.init)(jax.random.key(0), ids, ids)["params"]
    heads, frozen = lora.partition(params, r"^(score|projection)/")
    # B = 0 at init leaves the LoRA branch out of the output; shifted, every factor matters.
    adapters = jax.tree.map(lambda x: x + 0.1, lora.init(frozen, settings.lora, jax.random.key(1)))
    model = Qwen3Classifier(QWEN, head)
    frozen = layerstack.step_layout(frozen, steps.scanned_layers(model))  # as the trainer does
    extra = steps.init_extra(ContrastiveSettings.from_config(cfg.contrastive))
    trainable = {"adapters": adapters, "params": heads, "extra": extra}
    rows = np.random.default_rng(0)
    batch = {
        "input_ids": rows.integers(1, 64, (1, 8, 10)).astype(np.int32),
        "attention_mask": np.ones((1, 8, 10), np.int32),
        "labels": rows.integers(0, 3, (1, 8)).astype(np.int32),
        "valid": np.ones((1, 8), np.float32),
    }
    grad_fn = jax.jit(steps.make_gradients(model, settings, sharding.make_mesh("0")))
    loss, _, grads = grad_fn(trainable, frozen, batch, jax.random.PRNGKey(0), jnp.asarray(0))
    return float(loss), grads


def test_scanned_step_has_the_unrolled_loss_and_gradients():
    cfg = load_config("configs/tiny.py")
    cfg.lora.dropout, cfg.optim.lr = 0.0, 1e-3
    cfg.lora.targets = r".*(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)$"
    settings = StepSettings.from_config(cfg, 10)
    loss, grads = gradients(False, settings, cfg)
    scanned_loss, scanned_grads = gradients(True, settings, cfg)
    assert abs(loss - scanned_loss) < 1e-5
    leaves = jax.tree_util.tree_leaves_with_path(grads["adapters"])
    assert len(leaves) == 4 * 7 * 2  # A and B of seven projections in each of the 4 layers
    for (path, ours), theirs in zip(
        leaves, jax.tree.leaves(scanned_grads["adapters"]), strict=True
    ):
        assert float(jnp.max(jnp.abs(ours))) > 0, path
        np.testing.assert_allclose(theirs, ours, atol=1e-6, err_msg=str(path))
    np.testing.assert_allclose(
        scanned_grads["params"]["score"]["kernel"], grads["params"]["score"]["kernel"], atol=1e-6
    )
