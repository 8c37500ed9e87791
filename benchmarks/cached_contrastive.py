"""Memory and step time of cached contrastive accumulation against one big batch.

    python benchmarks/cached_contrastive.py --preset cpu-small --micro 8 --accumulate 8

Runs the trainer's step (``steps.make_train_step``: LoRA on all seven projections, focal +
simple contrastive loss, AdamW, jitted with the state donated) on four configurations, each
in a fresh process (so its peak RSS is its own): one micro-batch (``micro`` rows, accumulate
1), the cached accumulation (``accumulate`` x ``micro``, ``contrastive.cached=true``), the
plain accumulation (the same, ``cached=false``: a contrastive loss per micro-batch) and one
batch of ``accumulate * micro`` rows. Memory: XLA's compiled ``memory_analysis()`` (temp bytes:
the activations and scratch the step needs beyond its arguments and outputs) and the
process's peak RSS. Time: the median of ``--steps`` steps after one warm-up step. Writes
``--out`` (.json and .md).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "benchmarks"), str(REPO)]  # this checkout's jaxcls
import common  # noqa: E402

NUM_LABELS = 4
# name -> (rows per micro-batch, micro-batches, cached) as functions of (micro, accumulate)
RUNS = {
    "one micro-batch": lambda m, a: (m, 1, True),
    "cached accumulation": lambda m, a: (m, a, True),
    "plain accumulation": lambda m, a: (m, a, False),
    "one big batch": lambda m, a: (m * a, 1, True),
}


def build(s: common.Shape, rows: int, n_micro: int, cached: bool) -> tuple[Any, tuple]:
    """The trainer's jitted step and its arguments for a batch ``[n_micro, rows, seq]``."""
    import dataclasses

    import jax
    import jax.numpy as jnp

    from jaxcls.config import load_config
    from jaxcls.model import lora
    from jaxcls.model.classifier import HeadConfig, Qwen3Classifier
    from jaxcls.train import sharding, steps
    from jaxcls.train.settings import ContrastiveSettings, OptimSettings, StepSettings

    cfg = load_config(REPO / "configs" / "default.py")
    cfg.lora.rank, cfg.lora.alpha, cfg.lora.dropout = s.rank, common.ALPHA, s.dropout
    cfg.lora.targets = rf".*({'|'.join(common.TARGETS)})$"
    cfg.model.dtype = cfg.model.param_dtype = s.dtype
    cfg.loss.classification, cfg.contrastive.loss = "focal", "simple"
    cfg.contrastive.cached, cfg.optim.accumulate, cfg.optim.lr = cached, n_micro, 2e-4
    model = Qwen3Classifier(common.jax_config(s), HeadConfig.from_config(cfg.model, NUM_LABELS))
    ids = jnp.ones((1, 1), jnp.int32)
    params = jax.jit(model.init)(jax.random.PRNGKey(0), ids, ids)["params"]
    heads, frozen = lora.partition(params, r"^(score|projection)/")
    adapters = lora.init(frozen, lora.LoRAConfig.from_config(cfg.lora), jax.random.PRNGKey(1))
    extra = steps.init_extra(ContrastiveSettings.from_config(cfg.contrastive))
    trainable = {"adapters": adapters, "params": heads, "extra": extra}
    optimizer = steps.make_optimizer(OptimSettings.from_config(cfg.optim), 1000)
    state = steps.TrainState(
        step=jnp.zeros((), jnp.int32), trainable=trainable, opt_state=optimizer.init(trainable),
        rng=jax.random.PRNGKey(2), bad_steps=jnp.zeros((), jnp.int32),
    )  # fmt: skip
    mesh = sharding.make_mesh("0")
    state = jax.device_put(state, sharding.replicated(mesh))
    settings = StepSettings.from_config(cfg, 1000)
    step = jax.jit(steps.make_train_step(model, settings, optimizer, mesh), donate_argnums=(0,))
    host = common.random_batch(dataclasses.replace(s, batch=rows * n_micro), NUM_LABELS)
    batch = {k: jnp.asarray(v.reshape(n_micro, rows, *v.shape[1:])) for k, v in host.items()}
    batch["valid"] = jnp.ones((n_micro, rows), jnp.float32)
    return step, (state, frozen, batch)


def measure(s: common.Shape, name: str, micro: int, accumulate: int, n_steps: int) -> dict:
    """One configuration, in this process: compiled memory, step times, peak RSS."""
    import jax

    rows, n_micro, cached = RUNS[name](micro, accumulate)
    step, args = build(s, rows, n_micro, cached)
    compiled = step.lower(*args).compile()
    mem = compiled.memory_analysis()
    box = list(args)

    def run() -> None:
        box[0], metrics = compiled(*box)
        jax.block_until_ready(metrics)

    times = [common.timed(run) for _ in range(n_steps + 1)][1:]
    return {
        "name": name,
        "rows_per_update": rows * n_micro,
        "micro_batch": rows,
        "accumulate": n_micro,
        "cached": cached,
        "temp_mb": mem.temp_size_in_bytes / 2**20,
        "argument_mb": mem.argument_size_in_bytes / 2**20,
        "step_s": statistics.median(times),
        "step_s_min": min(times),
        "step_s_max": max(times),
        "peak_rss_mb": common.peak_rss_mb(),
    }


def table(results: list[dict]) -> str:
    lines = [
        "| run | rows per update | XLA temp memory | peak RSS | step (median, min-max) |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in results:
        shape = f"{r['accumulate']} x {r['micro_batch']}"
        lines.append(
            f"| {r['name']} ({shape}) | {r['rows_per_update']} | {r['temp_mb']:,.0f} MB | "
            f"{r['peak_rss_mb']:,.0f} MB | {r['step_s']:.2f} s "
            f"({r['step_s_min']:.2f}-{r['step_s_max']:.2f}) |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.add_shape_flags(parser)
    parser.add_argument("--micro", type=int, default=8, help="rows per micro-batch")
    parser.add_argument("--accumulate", type=int, default=8, help="micro-batches per update")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per configuration")
    parser.add_argument("--out", default=str(REPO / "benchmarks/results/cached_contrastive"))
    parser.add_argument("--only", default="", help=argparse.SUPPRESS)  # the worker process
    args = parser.parse_args()
    s = common.shape_from_args(args)
    if args.only:
        from jaxcls.runtime import tune_malloc

        tune_malloc()  # as train.py, before JAX starts
        print(json.dumps(measure(s, args.only, args.micro, args.accumulate, args.steps)))
        return
    print(f"machine: {common.machine()}\nshape: {s}")
    results = []
    for name in RUNS:
        cmd = [sys.executable, __file__, "--only", name] + sys.argv[1:]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(table(results[-1:]).splitlines()[-1], flush=True)
    command = "python benchmarks/cached_contrastive.py " + " ".join(sys.argv[1:])
    note = f"{common.machine()}; shape {s}; load after the runs {os.getloadavg()[0]:.1f}"
    Path(args.out).with_suffix(".json").write_text(
        json.dumps({"command": command, "machine": note, "results": results}, indent=1) + "\n"
    )
    md = f"{table(results)}\n\nCommand: `{command.strip()}`\n\nMachine: {note}.\n"
    Path(args.out).with_suffix(".md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
