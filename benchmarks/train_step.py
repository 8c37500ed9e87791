"""Speed of one LoRA training step: jaxcls against transformers + peft, in one run.

    python benchmarks/train_step.py --preset cpu-small --torch
    python benchmarks/train_step.py --preset qwen3-1.7b --torch      # on a GPU machine

jaxcls runs the trainer's own step (``steps.make_train_step``: LoRA on all seven projections,
focal + simple contrastive loss, AdamW with clipping, jitted with the state donated). PyTorch
runs ``Qwen3ForSequenceClassification`` + peft LoRA (same rank, alpha, dropout, targets),
cross-entropy, AdamW on the trainable parameters with the same clipping, with its faster
attention implementation (sdpa or eager, timed here), in a worker process of its own
(``worker.py``: each framework with its own process settings). The two alternate ``--rounds``
times, ``--steps`` timed steps each, after warm-up. MFU = the step's matmul FLOPs (counted from the
shapes for each side, printed: jaxcls computes the last layer at the pooled token only) / the
float32 (or bfloat16) matmul peak measured here, the best of JAX and PyTorch. The last line
is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import torch_side  # noqa: E402
import worker  # noqa: E402

NUM_LABELS = 4


class CompileWatch:
    """Seconds spent tracing, lowering and compiling, and the backend compiles, per function."""

    EVENTS = ("jaxpr_trace_duration", "jaxpr_to_mlir_module_duration", "backend_compile_duration")

    def __init__(self) -> None:
        import jax

        self.reset()
        self.compiles: dict[str, int] = {}
        jax.monitoring.register_event_duration_secs_listener(self._on_event)

    def reset(self) -> None:
        self.seconds, self.parts = 0.0, dict.fromkeys(self.EVENTS, 0.0)

    def summary(self) -> str:
        parts = zip(("trace", "lower", "XLA"), self.EVENTS, strict=True)
        return ", ".join(f"{name} {self.parts[e]:.1f} s" for name, e in parts)

    def _on_event(self, event: str, duration: float, **kw) -> None:
        name = event.rsplit("/", 1)[-1]
        if name in self.EVENTS:
            self.seconds += duration
            self.parts[name] += duration
        if event.endswith("backend_compile_duration"):
            name = str(kw.get("fun_name", "?"))
            self.compiles[name] = self.compiles.get(name, 0) + 1


def build_jax(s: common.Shape) -> tuple[Any, tuple]:
    """The trainer's jitted step and its arguments ``(state, frozen, batch)``."""
    import jax
    import jax.numpy as jnp

    from jaxcls.config import load_config
    from jaxcls.model import layerstack, lora
    from jaxcls.model.classifier import HeadConfig, Qwen3Classifier
    from jaxcls.train import sharding, steps
    from jaxcls.train.settings import ContrastiveSettings, OptimSettings, StepSettings

    default = Path(__file__).resolve().parents[1] / "configs" / "default.py"
    cfg = load_config(default)
    cfg.lora.rank, cfg.lora.alpha, cfg.lora.dropout = s.rank, common.ALPHA, s.dropout
    cfg.lora.targets = rf".*({'|'.join(common.TARGETS)})$"
    cfg.model.dtype = cfg.model.param_dtype = s.dtype
    cfg.loss.classification, cfg.contrastive.loss = "focal", "simple"
    cfg.optim.lr = 2e-4  # the LoRA recipe's ("auto", 0, is resolved by the trainer)
    model = Qwen3Classifier(common.jax_config(s), HeadConfig.from_config(cfg.model, NUM_LABELS))
    ids = jnp.ones((1, 1), jnp.int32)
    params = jax.jit(model.init)(jax.random.PRNGKey(0), ids, ids)["params"]
    heads, frozen = lora.partition(params, r"^(score|projection)/")
    # The base as the trainer gives it to the step (layers stacked for a scanned model).
    frozen = layerstack.step_layout(frozen, steps.scanned_layers(model))
    adapters = lora.init(frozen, lora.LoRAConfig.from_config(cfg.lora), jax.random.PRNGKey(1))
    extra = steps.init_extra(ContrastiveSettings.from_config(cfg.contrastive))
    trainable = {"adapters": adapters, "params": heads, "extra": extra}
    total = 1000
    optimizer = steps.make_optimizer(OptimSettings.from_config(cfg.optim), total)
    state = steps.TrainState(
        step=jnp.zeros((), jnp.int32), trainable=trainable, opt_state=optimizer.init(trainable),
        rng=jax.random.PRNGKey(2), bad_steps=jnp.zeros((), jnp.int32),
    )  # fmt: skip
    one_device = sharding.make_mesh("0")
    state = jax.device_put(state, sharding.replicated(one_device))  # where the step returns it
    step = steps.make_train_step(model, StepSettings.from_config(cfg, total), optimizer, one_device)
    train_step = jax.jit(step, donate_argnums=(0,))
    host = common.random_batch(s, NUM_LABELS)
    batch = {k: jnp.asarray(v[None]) for k, v in host.items()}  # one micro-batch
    batch["valid"] = jnp.ones((1, s.batch), jnp.float32)
    return train_step, (state, frozen, batch)


def jax_stepper(train_step: Any, args: tuple) -> Callable[[], None]:
    """``step()``: one synchronised call, the donated state carried from call to call."""
    import jax

    box = list(args)

    def step() -> None:
        box[0], metrics = train_step(*box)
        jax.block_until_ready(metrics)

    return step


def alternate(contenders: dict[str, Callable[[int], list]], rounds: int, steps: int) -> dict:
    """Wall and CPU seconds of each step, the contenders taking turns, ``steps`` at a time."""
    times = {name: {"wall": [], "cpu": []} for name in contenders}
    for r in range(rounds):
        for name, run in contenders.items():
            for wall, cpu in run(steps):
                times[name]["wall"].append(wall)
                times[name]["cpu"].append(cpu)
        last = {k: statistics.median(v["wall"][-steps:]) for k, v in times.items()}
        line = ", ".join(f"{k} {v:.3f} s" for k, v in last.items())
        print(f"round {r + 1}: {line} (load {os.getloadavg()[0]:.1f})", flush=True)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.add_shape_flags(parser)
    parser.add_argument("--torch", action="store_true", help="also time transformers + peft")
    parser.add_argument("--torch-attn", choices=["auto", "sdpa", "eager"], default="auto")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=3, help="alternations jax/torch")
    parser.add_argument(
        "--no-tune-malloc", action="store_true",
        help="leave glibc malloc at its defaults (train.py tunes it: jaxcls.runtime)",
    )  # fmt: skip
    parser.add_argument("--profile", default="", help="dir: write a jax.profiler trace there")
    args = parser.parse_args()
    s = common.shape_from_args(args)
    from jaxcls.runtime import tune_malloc

    tuned = False if args.no_tune_malloc else tune_malloc()  # as train.py: before JAX starts
    rival = worker.Worker(torch_side.TrainStep, s, args.torch_attn) if args.torch else None

    import jax

    print(f"machine: {common.machine()}; jax {jax.__version__} on {jax.devices()[0]}")
    print(f"shape: {s}; jaxcls malloc tuned: {tuned}")
    # jaxcls computes the last layer at the pooled token only; transformers at every token.
    flops = {"jax": common.step_flops(s, pooled_last_layer=True), "torch": common.step_flops(s)}
    step_flops = {name: sum(parts.values()) for name, parts in flops.items()}
    for name, parts in flops.items():
        text = ", ".join(f"{k} {v / 1e9:.1f}" for k, v in parts.items())
        print(f"{name} FLOPs per step: {step_flops[name] / 1e9:.1f} GFLOP ({text})")
    peaks = {"jax": common.jax_matmul_peak(s.dtype)}
    if rival:
        peaks["torch"] = rival.call("matmul_peak", common.peak_size())
    best_peak = max(peaks.values())
    print("matmul peak: " + ", ".join(f"{k} {v / 1e9:.0f} GFLOP/s" for k, v in peaks.items()))

    watch = CompileWatch()
    train_step, jax_args = build_jax(s)
    jax_step = jax_stepper(train_step, jax_args)
    watch.reset()
    first = common.timed(jax_step)
    compile_s = watch.seconds
    print(f"jaxcls: compile {compile_s:.1f} s ({watch.summary()}), first step {first:.1f} s")
    for _ in range(2):  # warm-up as PyTorch's (3 steps): the malloc heap grows in the first
        jax_step()
    compiles_after_warmup = sum(watch.compiles.values())
    if args.profile:
        common.profile(jax_step, args.profile, train_step, jax_args)

    contenders = {"jax": lambda n: common.time_calls(jax_step, n)}
    if rival:
        info = rival.call("info")
        print(f"torch: attn_implementation={info['attn']}, {info['trainable']:,} trainable params")
        contenders["torch"] = lambda n: rival.call("time_calls", n)
    times = alternate(contenders, args.rounds, args.steps)
    recompiles = sum(watch.compiles.values()) - compiles_after_warmup
    memory = {"jax": {"peak_rss_mb": common.peak_rss_mb(), "device_bytes": None}}
    if jax.default_backend() == "gpu":
        stats = jax.local_devices()[0].memory_stats() or {}
        memory["jax"]["device_bytes"] = stats.get("peak_bytes_in_use")
    if rival:
        memory["torch"] = rival.call("memory")
        rival.close()
    print("peak memory: " + "; ".join(describe_memory(k, v) for k, v in memory.items()))

    result = {}
    for name, t in times.items():
        med = statistics.median(t["wall"])
        mfu = step_flops[name] / med / best_peak
        result[name] = {"step_s": med, "tokens_per_s": s.tokens / med, "mfu": mfu}
        print(
            f"{name}: step {common.spread(t['wall'])}, {s.tokens / med:,.0f} tokens/s, "
            f"MFU {mfu:.1%}, CPU {statistics.median(t['cpu']):.2f} s per step"
        )
    ratio = None
    if rival:
        ratio = result["jax"]["tokens_per_s"] / result["torch"]["tokens_per_s"]
        print(f"ratio jaxcls / transformers+peft tokens/s: {ratio:.2f}x")
    print(f"recompilations after warm-up: {recompiles}")
    get = lambda name, key, nd: round(result[name][key], nd) if name in result else None  # noqa: E731
    gib = lambda name: (  # noqa: E731
        round(memory[name]["device_bytes"] / 2**30, 2)
        if name in memory and memory[name]["device_bytes"]
        else None
    )
    summary = {
        "jax_tokens_per_s": get("jax", "tokens_per_s", 1),
        "torch_tokens_per_s": get("torch", "tokens_per_s", 1),
        "ratio": None if ratio is None else round(ratio, 3),
        "mfu": get("jax", "mfu", 3),
        "torch_mfu": get("torch", "mfu", 3),
        "jax_step_s": get("jax", "step_s", 4),
        "torch_step_s": get("torch", "step_s", 4),
        "step_gflop": round(step_flops["jax"] / 1e9, 2),
        "torch_step_gflop": round(step_flops["torch"] / 1e9, 2),
        "peak_gflops": round(best_peak / 1e9, 1),
        "compile_s": round(compile_s, 2),
        "recompiles": recompiles,
        "peak_rss_mb": round(memory["jax"]["peak_rss_mb"], 1),
        "torch_peak_rss_mb": round(memory["torch"]["peak_rss_mb"], 1) if rival else None,
        "jax_peak_device_gib": gib("jax"),
        "torch_peak_device_gib": gib("torch"),
        "tune_malloc": tuned,
        "load": round(os.getloadavg()[0], 2),
    }
    print(json.dumps(summary))


def describe_memory(name: str, mem: dict) -> str:
    text = f"{name} RSS {mem['peak_rss_mb']:,.0f} MB"
    if mem["device_bytes"]:
        text += f", device {mem['device_bytes'] / 2**30:.2f} GiB"
    return text


if __name__ == "__main__":
    main()
