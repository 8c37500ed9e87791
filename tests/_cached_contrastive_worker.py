"""Cached contrastive gradients against full-batch computations; prints a JSON report.

``test_cached_contrastive.py`` calls ``measure()`` in its own process (one device) and runs this
file in a subprocess with 4 host devices (``XLA_FLAGS`` set before jax is imported). A batch
of 32 rows is fed two ways: as one batch (``optim.accumulate = 1``) and as 4 micro-batches of
8 (``accumulate = 4``), arranged so that each device holds the same 8 rows both ways (the
scope ``local`` compares equal sets). The reference is a plain ``jax.grad`` of one forward
of the 32 rows, without ``shard_map``.
"""

from __future__ import annotations

import json
import sys

import jax
import jax.numpy as jnp
import numpy as np

from jaxcls.config import load_config
from jaxcls.model import lora
from jaxcls.model.classifier import HEADS, HeadConfig, Qwen3Classifier
from jaxcls.model.qwen3 import Qwen3Config
from jaxcls.train import losses, sharding, steps
from jaxcls.train.settings import StepSettings

QWEN = Qwen3Config(
    vocab_size=100,
    hidden_size=64,
    intermediate_size=88,
    num_hidden_layers=1,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
)
NUM_LABELS, ROWS, MICRO, LENGTH = 3, 32, 4, 8


def make_config(loss: str = "simple", scope: str = "global", cached: bool = True, **extra):
    cfg = load_config("configs/tiny.py")
    cfg.model.projection_dim = 8
    cfg.lora.dropout = extra.get("dropout", 0.0)
    cfg.contrastive.loss, cfg.contrastive.scope, cfg.contrastive.cached = loss, scope, cached
    cfg.contrastive.temperature_schedule = extra.get("temperature_schedule", "constant")
    cfg.contrastive.schedule = extra.get("schedule", "constant")
    return cfg


class Setup:
    """The tiny model, its frozen base and trainable state, and a batch of 32 rows."""

    def __init__(self):
        cfg = make_config()
        self.model = Qwen3Classifier(QWEN, HeadConfig.from_config(cfg.model, NUM_LABELS))
        ids = jnp.ones((1, 4), jnp.int32)
        params = jax.jit(self.model.init)(jax.random.PRNGKey(0), ids, ids)["params"]
        heads, self.frozen = lora.partition(params, HEADS)
        adapters = lora.init(self.frozen, lora.LoRAConfig.from_config(cfg.lora), jax.random.key(1))
        # Non-zero B, so that the gradient of A is not zero.
        adapters = jax.tree_util.tree_map_with_path(
            lambda p, x: x + 0.05 if "lora_b" in jax.tree_util.keystr(p) else x, adapters
        )
        self.trainable = {"adapters": adapters, "params": heads}
        rng = np.random.default_rng(0)
        lengths = rng.integers(2, LENGTH + 1, ROWS)
        mask = (np.arange(LENGTH) < lengths[:, None]).astype(np.int32)
        self.rows = {
            "input_ids": np.where(mask, rng.integers(1, QWEN.vocab_size, (ROWS, LENGTH)), 0),
            "attention_mask": mask,
            "labels": rng.integers(0, NUM_LABELS, ROWS).astype(np.int32),
        }
        self.rows["input_ids"] = self.rows["input_ids"].astype(np.int32)

    def state(self, cfg) -> dict:
        settings = StepSettings.from_config(cfg, 10)
        return {**self.trainable, "extra": steps.init_extra(settings.contrastive)}

    def batch(self, n_devices: int, n_micro: int) -> dict:
        """The rows as ``[n_micro, ROWS / n_micro]``, device d holding the same rows for any
        ``n_micro``; 4 padding rows (valid 0), one in each of the MICRO micro-batches."""

        def arrange(x, n_micro=n_micro):
            x = x.reshape(n_devices, n_micro, -1, *x.shape[1:]).swapaxes(0, 1)
            return x.reshape(n_micro, ROWS // n_micro, *x.shape[3:])

        valid = np.ones(ROWS, np.float32)
        valid[arrange(np.arange(ROWS), MICRO)[:, 0]] = 0.0
        return {k: arrange(v) for k, v in {**self.rows, "valid": valid}.items()}

    def gradients(self, cfg, mesh, batch: dict) -> tuple[float, dict, dict]:
        """``(loss, metrics, grads)`` of the train step's gradient function on ``mesh``."""
        settings = StepSettings.from_config(cfg, 10)
        fn = jax.jit(steps.make_gradients(self.model, settings, mesh))
        loss, parts, grads = fn(
            sharding.put_params(self.state(cfg), mesh),
            sharding.put_params(self.frozen, mesh),
            sharding.put_batch(batch, mesh, 1),
            jax.random.PRNGKey(3),
            jnp.zeros((), jnp.int32),
        )
        return float(loss), jax.device_get(parts), jax.device_get(grads)

    def reference(self, cfg, batch: dict, groups: int, keys=None) -> tuple[float, dict]:
        """Loss and ``jax.grad`` of one plain computation over all rows of ``batch``: the mean
        classification loss of its micro-batches + weight * the contrastive loss of all rows
        (scope local: the mean over ``groups`` devices of the loss of the rows each holds).
        ``keys``: one dropout key per micro-batch (then one forward per micro-batch)."""
        settings = StepSettings.from_config(cfg, 10)
        con, loss_cfg = settings.contrastive, settings.loss
        n_micro = batch["labels"].shape[0]
        flat = {k: v.reshape(-1, *v.shape[2:]) for k, v in batch.items()}

        def classification(logits, labels, valid):
            return losses.classification_loss(
                loss_cfg.classification, logits, labels, focal_gamma=loss_cfg.focal_gamma,
                valid=valid,
            )  # fmt: skip

        def contrastive(features, labels, valid):
            return losses.contrastive_loss(
                con.loss, features, labels, temperature=con.temperature,
                base_temperature=con.base_temperature, margin=con.margin, valid=valid,
            )  # fmt: skip

        def by_micro(x):  # [A * b, ...] -> [A, b, ...]
            return x.reshape(n_micro, -1, *x.shape[1:])

        def by_device(x):  # [A * b, ...] -> [groups, A * b / groups, ...]: each device's rows
            x = x.reshape(n_micro, groups, -1, *x.shape[1:]).swapaxes(0, 1)
            return x.reshape(groups, -1, *x.shape[3:])

        def total(trainable):
            params = steps.assemble(trainable, self.frozen, settings.lora, train=keys is not None)
            if keys is None:
                ids, mask = flat["input_ids"], flat["attention_mask"]
                logits, features = self.model.apply({"params": params}, ids, mask)
            else:
                outs = [
                    self.model.apply(
                        {"params": params},
                        batch["input_ids"][i],
                        batch["attention_mask"][i],
                        deterministic=False,
                        rngs={"dropout": keys[i]},
                    )  # fmt: skip
                    for i in range(n_micro)
                ]
                logits, features = (jnp.concatenate(x) for x in zip(*outs, strict=True))
            cls = jax.vmap(classification)(by_micro(logits), batch["labels"], batch["valid"])
            con_loss = jax.vmap(contrastive)(
                by_device(features), by_device(flat["labels"]), by_device(flat["valid"])
            )
            return jnp.mean(cls) + con.weight * jnp.mean(con_loss)

        loss, grads = jax.jit(jax.value_and_grad(total))(self.state(cfg))
        return float(loss), jax.device_get(grads)


def max_diff(a, b) -> float:
    diffs = jax.tree_util.tree_map(lambda x, y: float(np.max(np.abs(x - y))), a, b)
    return max(jax.tree_util.tree_leaves(diffs), default=0.0)


def size(tree) -> float:
    return max(float(np.max(np.abs(x))) for x in jax.tree_util.tree_leaves(tree))


def compare(a: tuple, b: tuple) -> dict:
    """Loss and gradient differences of two ``(loss, ..., grads)`` results."""
    return {"loss": abs(a[0] - b[0]), "grads": max_diff(a[-1], b[-1]), "size": size(a[-1])}


def measure(devices: str, fsdp: int, cases: list[tuple[str, str, bool]]) -> dict:
    """Cached gradients on the mesh of ``devices`` against the reference and (the cases
    marked so) the step with ``accumulate = 1``, for each ``(loss, scope, one batch)``."""
    s = Setup()
    mesh = sharding.make_mesh(devices, fsdp=fsdp)
    n = mesh.devices.size
    whole, micro = s.batch(n, 1), s.batch(n, MICRO)
    out = {}
    for loss, scope, one_batch in cases:
        cfg = make_config(loss, scope)
        cached = s.gradients(cfg, mesh, micro)
        reference = s.reference(cfg, micro, n if scope == "local" else 1)
        r = out[f"{loss}_{scope}"] = {"vs_reference": compare(cached, reference)}
        if one_batch:
            r["vs_one_batch"] = compare(cached, s.gradients(cfg, mesh, whole))
        r["con_loss"] = float(cached[1]["con_loss"])
    return out


def one_device_extras() -> dict:
    """The learned temperature and weighting, dropout, and ``cached = false``."""
    s = Setup()
    mesh = sharding.make_mesh("0")
    micro = s.batch(1, MICRO)
    out = {}
    cfg = make_config(temperature_schedule="learnable", schedule="uncertainty")
    cached = s.gradients(cfg, mesh, micro)
    out["extra"] = compare(cached, s.gradients(cfg, mesh, s.batch(1, 1)))
    out["extra"]["extra_grads"] = size(cached[-1]["extra"])
    # Dropout: both passes draw micro-batch i's masks from fold_in(device key, i); device 0's
    # key is the step's own.
    cfg = make_config(dropout=0.3)
    device_key = jax.random.PRNGKey(3)
    keys = [jax.random.fold_in(device_key, i) for i in range(MICRO)]
    cached = s.gradients(cfg, mesh, micro)
    out["dropout"] = {
        "same_keys": compare(cached, s.reference(cfg, micro, 1, keys)),
        "no_dropout": compare(cached, s.reference(cfg, micro, 1)),
    }
    # cached = false: the mean of each micro-batch's own loss and gradient.
    cfg = make_config(cached=False)
    plain = s.gradients(cfg, mesh, micro)
    singles = [
        s.gradients(cfg, mesh, {k: v[i : i + 1] for k, v in micro.items()}) for i in range(MICRO)
    ]
    mean_grads = jax.tree_util.tree_map(lambda *g: np.mean(g, axis=0), *(r[-1] for r in singles))
    out["uncached"] = {
        **compare(plain, (np.mean([r[0] for r in singles]), mean_grads)),
        "con_loss": float(plain[1]["con_loss"]),
    }
    return out


if __name__ == "__main__":
    assert jax.device_count() == 4, jax.devices()
    both = [("simple", "global", True), ("margin", "global", False)]
    report = {
        "one": measure("0", 1, both),
        "data4": measure("all", 1, [*both, ("simple", "local", False)]),
        "fsdp2x2": measure("all", 2, [("simple", "local", False)]),
    }
    json.dump({**report, **one_device_extras()}, sys.stdout)
