"""Data-parallel and FSDP train steps on 4 CPU devices against one-device runs.

Run by test_multidevice.py in a subprocess whose XLA_FLAGS ask for 4 host devices (they
must be set before jax is imported); prints one JSON object of measured differences that the
test judges. Steps are built exactly as the Trainer builds them (``sharding.put_params``,
``sharding.init_sharded``, ``sharding.put_batch``).
"""

from __future__ import annotations

import json
import sys

import jax
import jax.numpy as jnp
import numpy as np

from jaxcls.config import load_config
from jaxcls.errors import UserError
from jaxcls.model import lora
from jaxcls.model.classifier import HEADS, HeadConfig, Qwen3Classifier
from jaxcls.model.qwen3 import Qwen3Config
from jaxcls.train import sharding, steps
from jaxcls.train.settings import OptimSettings, StepSettings

# Every sharded dimension divides by 4 (vocab 100, hidden 64, MLP 88, 4 heads x 16).
QWEN = Qwen3Config(
    vocab_size=100,
    hidden_size=64,
    intermediate_size=88,
    num_hidden_layers=1,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
)
NUM_LABELS, BATCH, TOTAL_STEPS = 3, 16, 10


def make_config(scope: str = "global", dropout: float = 0.05):
    cfg = load_config("configs/tiny.py")
    cfg.contrastive.loss = "simple"
    cfg.contrastive.scope = scope
    cfg.lora.dropout = dropout
    return cfg


def make_batch(rng: np.random.Generator, n_micro: int, batch: int, length: int) -> dict:
    """Right-padded random token ids [n_micro, batch, length]; the last 3 rows are padding."""
    lengths = rng.integers(1, length + 1, (n_micro, batch))
    mask = (np.arange(length) < lengths[..., None]).astype(np.int32)
    ids = np.where(mask, rng.integers(1, QWEN.vocab_size, (n_micro, batch, length)), 0)
    valid = np.ones((n_micro, batch), np.float32)
    valid[:, -3:] = 0.0
    return {
        "input_ids": ids.astype(np.int32),
        "attention_mask": mask,
        "labels": rng.integers(0, NUM_LABELS, (n_micro, batch)).astype(np.int32),
        "valid": valid,
    }


class Model:
    """The tiny classifier's frozen base, fresh trainable state, and the step builder."""

    def __init__(self):
        cfg = make_config()
        self.model = Qwen3Classifier(QWEN, HeadConfig.from_config(cfg.model, NUM_LABELS))
        ids = jnp.ones((1, 4), jnp.int32)
        params = jax.tree_util.tree_map(
            np.asarray, jax.jit(self.model.init)(jax.random.PRNGKey(0), ids, ids)["params"]
        )
        heads, self.frozen = lora.partition(params, HEADS)
        adapters = lora.init(self.frozen, lora.LoRAConfig.from_config(cfg.lora), jax.random.key(1))
        # Non-zero B, so that the first step already moves A and the base's gradients matter.
        adapters = jax.tree_util.tree_map_with_path(
            lambda p, x: x + 0.05 if "lora_b" in jax.tree_util.keystr(p) else x, adapters
        )
        self.trainable = {"adapters": adapters, "params": heads, "extra": {}}

    def trainer(self, cfg, mesh, traces: list | None = None):
        """``train(batches)`` from fresh state on ``mesh`` (compiled once per batch shape):
        per-step metrics and trainable state, the final state and the placed base."""
        optimizer = steps.make_optimizer(OptimSettings.from_config(cfg.optim), TOTAL_STEPS)

        def init_state(trainable):
            return steps.TrainState(
                step=jnp.zeros((), jnp.int32),
                trainable=trainable,
                opt_state=optimizer.init(trainable),
                rng=jax.random.PRNGKey(0),
                bad_steps=jnp.zeros((), jnp.int32),
            )

        settings = StepSettings.from_config(cfg, TOTAL_STEPS)
        step_fn = steps.make_train_step(self.model, settings, optimizer, mesh)

        def counted(state, frozen, batch):  # Python runs once per trace: a compile counter
            if traces is not None:
                traces.append(batch["input_ids"].shape)
            return step_fn(state, frozen, batch)

        frozen = sharding.put_params(self.frozen, mesh)
        trainable = sharding.put_params(self.trainable, mesh)
        state_shardings = sharding.init_sharded(init_state, trainable, mesh=mesh)[1]
        train_step = jax.jit(counted, out_shardings=(state_shardings, sharding.replicated(mesh)))

        def train(batches: list[dict]):
            state = sharding.init_sharded(init_state, trainable, mesh=mesh)[0]
            history, snapshots = [], []
            for batch in batches:
                state, metrics = train_step(state, frozen, sharding.put_batch(batch, mesh, 1))
                history.append({k: float(v) for k, v in jax.device_get(metrics).items()})
                snapshots.append(jax.device_get(state.trainable))
            return history, snapshots, state, frozen

        return train

    def evaluate(self, cfg, mesh, trainable, batch: dict) -> np.ndarray:
        """Logits of the eval step on ``mesh`` (replicated output)."""
        eval_step = jax.jit(
            steps.make_eval_step(self.model, lora.LoRAConfig.from_config(cfg.lora), mesh),
            out_shardings=sharding.replicated(mesh),
        )
        out = eval_step(
            sharding.put_params(trainable, mesh),
            sharding.put_params(self.frozen, mesh),
            sharding.put_batch(batch, mesh),
        )
        return np.asarray(out["logits"])


def max_diff(a, b) -> float:
    diffs = jax.tree_util.tree_map(
        lambda x, y: float(np.max(np.abs(np.asarray(x) - np.asarray(y)))), a, b
    )
    return max(jax.tree_util.tree_leaves(diffs))


def loss_diff(h1: list[dict], h2: list[dict], key: str = "loss") -> float:
    return max(abs(a[key] - b[key]) for a, b in zip(h1, h2, strict=True))


def devices_of(tree) -> list[list[int]]:
    """The sorted device ids of every leaf's sharding (deduplicated)."""
    found = {tuple(sorted(d.id for d in x.sharding.device_set)) for x in jax.tree.leaves(tree)}
    return sorted(list(ids) for ids in found)


def shard_shapes(frozen) -> dict[str, list]:
    """Per sharded base leaf: its full shape and the set of per-device shard shapes."""
    out = {}
    for path, x in jax.tree_util.tree_leaves_with_path(frozen):
        name = jax.tree_util.keystr(path, simple=True, separator="/")
        if name.endswith(("kernel", "embedding")):
            shapes = sorted({tuple(s.data.shape) for s in x.addressable_shards})
            out[name] = [list(x.shape), [list(s) for s in shapes], len(x.addressable_shards)]
    return out


def main() -> dict:
    assert jax.device_count() == 4, jax.devices()
    m = Model()
    rng = np.random.default_rng(0)
    # Two length buckets: one compile for each, none when one comes back.
    batches = [make_batch(rng, 2, BATCH, t) for t in (12, 12, 20, 12)]
    one, four = sharding.make_mesh("0"), sharding.make_mesh("all")
    result = {}

    # Global contrastive scope: 4 devices compute exactly what 1 device computes. (Without
    # dropout: each data shard draws its own masks, checked under "dropout" below.)
    cfg = make_config("global", dropout=0.0)
    h1, t1, _, _ = m.trainer(cfg, one)(batches)
    traces: list = []
    h4, t4, s4, _ = m.trainer(cfg, four, traces)(batches)
    result["global"] = {
        "loss_diff": loss_diff(h1, h4),
        "trainable_diff": max(max_diff(a, b) for a, b in zip(t1, t4, strict=True)),
        "moved": max_diff(m.trainable, t1[-1]),
        "traces": [list(t) for t in traces],
        "state_devices": devices_of(s4),
    }

    # Local scope (all rows valid): the loss is the mean of the per-device losses, each
    # computed on one device from that device's quarter of the batch.
    full = make_batch(rng, 1, BATCH, 12)
    full["valid"][:] = 1.0
    cfg_local = make_config("local", dropout=0.0)
    train_four = m.trainer(cfg_local, four)
    (local,), *_ = train_four([full])
    quarters = [{k: v[:, i * 4 : (i + 1) * 4] for k, v in full.items()} for i in range(4)]
    train_one = m.trainer(cfg_local, one)
    per_shard = [train_one([q])[0][0] for q in quarters]
    (whole,), *_ = m.trainer(cfg, one)([full])
    result["local"] = {
        "loss": local["loss"],
        "con_loss": local["con_loss"],
        "shard_mean_loss": float(np.mean([h["loss"] for h in per_shard])),
        "shard_mean_con_loss": float(np.mean([h["con_loss"] for h in per_shard])),
        "global_con_loss": whole["con_loss"],
    }

    # devices="0,2": the mesh, the state, the base and the batch live on exactly those.
    pair = sharding.make_mesh("0,2")
    h02, t02, s02, f02 = m.trainer(cfg, pair)(batches[:2])
    placed = sharding.put_batch(batches[0], pair, 1)
    result["pair"] = {
        "mesh": sorted(d.id for d in pair.devices.flat),
        "state": devices_of(s02),
        "frozen": devices_of(f02),
        "batch": devices_of(placed),
        "loss_diff": loss_diff(h1[:2], h02),
        "trainable_diff": max_diff(t1[1], t02[1]),
    }

    # Dropout: every device draws its own masks. A batch of four copies of one quarter, on
    # four devices with local scope, gives the one-device loss of that quarter without
    # dropout, and another loss with it (device 0 draws the one-device masks, 1-3 others).
    same = {k: np.concatenate([v[:, :4]] * 4, axis=1) for k, v in full.items()}
    dropout_local = make_config("local", dropout=0.05)
    result["dropout"] = {
        "copies_diff_without": loss_diff(train_four([same])[0], train_one([quarters[0]])[0]),
        "copies_diff_with": loss_diff(
            m.trainer(dropout_local, four)([same])[0],
            m.trainer(dropout_local, one)([quarters[0]])[0],
        ),
    }
    # The fsdp axis does not change the masks: a 2x2 mesh draws what 2 devices draw.
    dropout = make_config("global", dropout=0.05)
    h02d, t02d, _, _ = m.trainer(dropout, pair)(batches[:2])

    # FSDP: the base split in quarters (fsdp=4) or halves on a 2x2 mesh; same results (the
    # 2x2 mesh with dropout, as the two data-parallel devices of "pair" with dropout).
    for name, fsdp, run_cfg, (h_ref, t_ref) in (
        ("fsdp4", 4, cfg, (h1[:2], t1[1])),
        ("fsdp2x2", 2, dropout, (h02d, t02d[1])),
    ):
        mesh = sharding.make_mesh("all", fsdp=fsdp)
        hf, tf, _, ff = m.trainer(run_cfg, mesh)(batches[:2])
        result[name] = {
            "loss_diff": loss_diff(h_ref, hf),
            "trainable_diff": max_diff(t_ref, tf[1]),
            "shards": shard_shapes(ff),
            "replicated_leaves": sum(x.sharding.is_fully_replicated for x in jax.tree.leaves(ff)),
        }
    # Sharded evaluation with an FSDP base: same logits as one device.
    eval_batch = {k: v[0] for k, v in batches[0].items()}
    fsdp_mesh = sharding.make_mesh("all", fsdp=4)
    result["eval_diff"] = max_diff(
        m.evaluate(cfg, one, t1[-1], eval_batch),
        m.evaluate(cfg, fsdp_mesh, t1[-1], eval_batch),
    )
    # User mistakes: a batch that does not split, a device that does not exist.
    errors = {}
    for name, call in (
        ("batch", lambda: sharding.check_batch_size(10, four, "train.batch_size")),
        ("device", lambda: sharding.make_mesh("0,9")),
        ("fsdp", lambda: sharding.make_mesh("0,1,2", fsdp=2)),
    ):
        try:
            call()
        except UserError as e:
            errors[name] = str(e)
    result["errors"] = errors
    return result


if __name__ == "__main__":
    json.dump(main(), sys.stdout)
