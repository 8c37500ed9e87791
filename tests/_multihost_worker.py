"""One process of a training run through the real Trainer, for test_multihost.py.

  python _multihost_worker.py CONFIG_JSON OUT_JSON

The caller sets XLA_FLAGS (host device count) and, for a multi-process job,
JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID before jax is imported. The
config overrides come as JSON. The process trains, then builds a second Trainer on the same
run dir (which restores the last checkpoint) and writes what it observed to OUT_JSON.
"""

from __future__ import annotations

import json
import sys

import jax
import numpy as np

from jaxcls.config import load_config
from jaxcls.train import distributed, sharding
from jaxcls.train.trainer import Trainer


def device_ids(tree) -> list[int]:
    return sorted({d.id for x in jax.tree.leaves(tree) for d in x.sharding.device_set})


def local_rows(mesh, batch_size: int) -> list[int]:
    """The rows of a global batch that this process's devices hold."""
    placed = sharding.put_batch({"row": np.arange(batch_size)}, mesh)["row"]
    return sorted(int(r) for s in placed.addressable_shards for r in np.asarray(s.data))


def main(overrides: dict, out: str) -> None:
    cfg = load_config("configs/tiny.py", [f"{k}={v}" for k, v in overrides.items()])
    distributed.maybe_initialize(cfg)
    first = Trainer(cfg)
    result = first.fit()
    again = Trainer(cfg)  # resumes from the last checkpoint, saved by every process
    diffs = jax.tree.map(
        lambda a, b: float(np.max(np.abs(np.asarray(a) - np.asarray(b)))), first.state, again.state
    )
    report = {
        "process": jax.process_index(),
        "processes": jax.process_count(),
        "status": result["status"],
        "restored_step": int(again.state.step),
        "restore_diff": max(jax.tree.leaves(diffs)),
        "state_devices": device_ids(first.state),
        "frozen_devices": device_ids(first.frozen),
        "local_devices": sorted(d.id for d in jax.local_devices()),
        "global_devices": sorted(d.id for d in jax.devices()),
        "local_rows": local_rows(first.mesh, first.cfg.train.batch_size),
    }
    with open(out, "w") as f:
        json.dump(report, f)


if __name__ == "__main__":
    main(json.loads(sys.argv[1]), sys.argv[2])
