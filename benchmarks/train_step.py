"""Speed of one LoRA training step: jaxcls against transformers + peft, in one process.

    python benchmarks/train_step.py --preset cpu-small --torch
    python benchmarks/train_step.py --preset qwen3-1.7b --torch      # on a GPU machine

jaxcls runs the trainer's own step (``steps.make_train_step``: LoRA on all seven projections,
focal + simple contrastive loss, AdamW with clipping, jitted with the state donated). PyTorch
runs ``Qwen3ForSequenceClassification`` + peft LoRA (same rank, alpha, dropout, targets),
cross-entropy, AdamW on the trainable parameters with the same clipping, with its faster
attention implementation (sdpa or eager, timed here). The two alternate ``--rounds`` times,
``--steps`` timed steps each, after warm-up. MFU = the step's matmul FLOPs (counted from the
shapes, printed) / the float32 (or bfloat16) matmul peak measured here, the best of JAX and
PyTorch. The last line is one JSON object.
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

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

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

    from jaxcls import lora, steps
    from jaxcls.classifier import HeadConfig, Qwen3Classifier
    from jaxcls.config import load_config
    from jaxcls.qwen3 import Qwen3Config

    default = Path(__file__).resolve().parents[1] / "configs" / "default.py"
    cfg = load_config(default)
    cfg.lora.rank, cfg.lora.alpha, cfg.lora.dropout = s.rank, common.ALPHA, common.DROPOUT
    cfg.lora.targets = rf".*({'|'.join(common.TARGETS)})$"
    cfg.model.dtype = cfg.model.param_dtype = s.dtype
    cfg.loss.classification, cfg.contrastive.loss = "focal", "simple"
    config = Qwen3Config(
        vocab_size=s.vocab, hidden_size=s.hidden, intermediate_size=s.intermediate,
        num_hidden_layers=s.layers, num_attention_heads=s.heads, num_key_value_heads=s.kv_heads,
        head_dim=s.head_dim,
    )  # fmt: skip
    model = Qwen3Classifier(config, HeadConfig.from_config(cfg.model, NUM_LABELS))
    ids = jnp.ones((1, 1), jnp.int32)
    params = jax.jit(model.init)(jax.random.PRNGKey(0), ids, ids)["params"]
    heads, frozen = lora.partition(params, r"^(score|projection)/")
    adapters = lora.init(frozen, lora.LoRAConfig.from_config(cfg.lora), jax.random.PRNGKey(1))
    trainable = {"adapters": adapters, "params": heads, "extra": steps.init_extra(cfg.contrastive)}
    total = 1000
    optimizer = steps.make_optimizer(cfg.optim, total)
    state = steps.TrainState(
        step=jnp.zeros((), jnp.int32), trainable=trainable, opt_state=optimizer.init(trainable),
        rng=jax.random.PRNGKey(2), bad_steps=jnp.zeros((), jnp.int32),
    )  # fmt: skip
    train_step = jax.jit(steps.make_train_step(model, cfg, optimizer, total), donate_argnums=(0,))
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


def build_torch(s: common.Shape, attn: str):
    """``step()`` of transformers + peft on the same shapes."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import Qwen3ForSequenceClassification

    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[s.dtype]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # built in place: a 1.7B model is not made on the host first
    try:
        with torch.device(device):
            model = Qwen3ForSequenceClassification(common.hf_config(s, NUM_LABELS, attn))
    finally:
        torch.set_default_dtype(default)
    lora_cfg = LoraConfig(
        task_type="SEQ_CLS", r=s.rank, lora_alpha=common.ALPHA, lora_dropout=common.DROPOUT,
        target_modules=list(common.TARGETS),
    )  # fmt: skip
    model = get_peft_model(model, lora_cfg)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    fused = device == "cuda" or dtype == torch.float32
    opt = torch.optim.AdamW(params, lr=2e-4, weight_decay=0.01, fused=fused)
    host = common.random_batch(s, NUM_LABELS)
    batch = {k: torch.as_tensor(v, dtype=torch.long).to(device) for k, v in host.items()}

    def step() -> None:
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()

    for _ in range(3):  # warm-up: the first steps are several times slower
        step()
    return step, {"trainable": sum(p.numel() for p in params)}


def peaks(s: common.Shape, with_torch: bool) -> dict[str, float]:
    """Measured matmul FLOP/s of JAX (and PyTorch) at the step's dtype."""
    import jax
    import jax.numpy as jnp

    n = 2048 if jax.default_backend() == "cpu" else 8192
    x = jnp.asarray(np.random.default_rng(0).normal(size=(n, n)), s.dtype)
    mm = jax.jit(lambda a: a @ a)
    out = {"jax": common.matmul_peak(lambda: mm(x).block_until_ready(), n)}
    if with_torch:
        import torch

        cuda = torch.cuda.is_available()
        dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[s.dtype]
        y = torch.randn(n, n, dtype=dtype, device="cuda" if cuda else "cpu")
        sync = torch.cuda.synchronize if cuda else (lambda: None)
        out["torch"] = common.matmul_peak(lambda: (y @ y, sync()), n)
    return out


def alternate(contenders: dict[str, Callable[[], None]], rounds: int, steps: int) -> dict:
    """Wall and process CPU seconds of each step, the contenders taking turns."""
    import time

    times = {name: {"wall": [], "cpu": []} for name in contenders}
    for r in range(rounds):
        for name, fn in contenders.items():
            for _ in range(steps):
                cpu = time.process_time()
                times[name]["wall"].append(common.timed(fn))
                times[name]["cpu"].append(time.process_time() - cpu)
        last = {k: statistics.median(v["wall"][-steps:]) for k, v in times.items()}
        line = ", ".join(f"{k} {v:.3f} s" for k, v in last.items())
        print(f"round {r + 1}: {line} (load {os.getloadavg()[0]:.1f})")
    return times


def pick_torch_attention(s: common.Shape) -> str:
    """PyTorch's faster attention implementation here, by the best of two steps each."""
    trial = {}
    for name in ("sdpa", "eager"):
        fn, _ = build_torch(s, name)
        trial[name] = min(common.timed(fn) for _ in range(2))
    print("torch attention trial: " + ", ".join(f"{k} {v:.3f} s" for k, v in trial.items()))
    return min(trial, key=trial.get)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.add_shape_flags(parser)
    parser.add_argument("--torch", action="store_true", help="also time transformers + peft")
    parser.add_argument("--torch-attn", choices=["auto", "sdpa", "eager"], default="auto")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=3, help="alternations jax/torch")
    parser.add_argument(
        "--tune-malloc", action="store_true",
        help="glibc malloc settings that keep freed memory (common.tune_malloc); both sides",
    )  # fmt: skip
    parser.add_argument("--profile", default="", help="dir: write a jax.profiler trace there")
    args = parser.parse_args()
    s = common.shape_from_args(args)
    if args.tune_malloc:
        print(f"tune_malloc: {common.tune_malloc()}")

    import jax

    if args.torch:
        import torch

        torch.set_num_threads(os.cpu_count())
    print(f"machine: {common.machine()}; jax {jax.__version__} on {jax.devices()[0]}")
    print(f"shape: {s}")
    flops = common.step_flops(s)
    step_flops = sum(flops.values())
    parts = ", ".join(f"{k} {v / 1e9:.1f}" for k, v in flops.items())
    print(f"model FLOPs per step: {step_flops / 1e9:.1f} GFLOP ({parts})")
    peak = peaks(s, args.torch)
    best_peak = max(peak.values())
    print("matmul peak: " + ", ".join(f"{k} {v / 1e9:.0f} GFLOP/s" for k, v in peak.items()))

    watch = CompileWatch()
    train_step, jax_args = build_jax(s)
    jax_step = jax_stepper(train_step, jax_args)
    watch.reset()
    first = common.timed(jax_step)
    compile_s = watch.seconds
    print(f"jaxcls: compile {compile_s:.1f} s ({watch.summary()}), first step {first:.1f} s")
    jax_step()
    rss_jax = common.peak_rss_mb()
    jax_mem = None
    if jax.default_backend() == "gpu":
        jax_mem = (jax.local_devices()[0].memory_stats() or {}).get("peak_bytes_in_use")
    compiles_after_warmup = sum(watch.compiles.values())
    if args.profile:
        common.profile(jax_step, args.profile, train_step, jax_args)

    contenders = {"jax": jax_step}
    if args.torch:
        attn = pick_torch_attention(s) if args.torch_attn == "auto" else args.torch_attn
        contenders["torch"], torch_info = build_torch(s, attn)
        print(f"torch: attn_implementation={attn}, {torch_info['trainable']:,} trainable params")
    times = alternate(contenders, args.rounds, args.steps)
    torch_mem = None
    if args.torch and jax.default_backend() == "gpu":
        torch_mem = torch.cuda.max_memory_allocated()
    if jax_mem is not None or torch_mem is not None:
        mem = {"jax": jax_mem, "torch": torch_mem}
        print(
            "peak device memory: "
            + ", ".join(f"{k} {v / 2**30:.1f} GiB" for k, v in mem.items() if v)
        )
    recompiles = sum(watch.compiles.values()) - compiles_after_warmup

    result = {}
    for name, t in times.items():
        med = statistics.median(t["wall"])
        result[name] = {"step_s": med, "tokens_per_s": s.tokens / med}
        mfu = step_flops / med / best_peak
        print(
            f"{name}: step {common.spread(t['wall'])}, {s.tokens / med:,.0f} tokens/s, "
            f"MFU {mfu:.1%}, CPU {statistics.median(t['cpu']):.2f} s per step"
        )
        result[name]["mfu"] = mfu
    ratio = None
    if args.torch:
        ratio = result["jax"]["tokens_per_s"] / result["torch"]["tokens_per_s"]
        print(f"ratio jaxcls / transformers+peft tokens/s: {ratio:.2f}x")
    print(f"recompilations after warm-up: {recompiles}")
    get = lambda name, key, nd: round(result[name][key], nd) if name in result else None  # noqa: E731
    summary = {
        "jax_tokens_per_s": get("jax", "tokens_per_s", 1),
        "torch_tokens_per_s": get("torch", "tokens_per_s", 1),
        "ratio": None if ratio is None else round(ratio, 3),
        "mfu": get("jax", "mfu", 3),
        "torch_mfu": get("torch", "mfu", 3),
        "jax_step_s": get("jax", "step_s", 4),
        "torch_step_s": get("torch", "step_s", 4),
        "step_gflop": round(step_flops / 1e9, 2),
        "peak_gflops": round(best_peak / 1e9, 1),
        "compile_s": round(compile_s, 2),
        "recompiles": recompiles,
        "peak_rss_mb": round(rss_jax, 1),
        "peak_rss_mb_with_torch": round(common.peak_rss_mb(), 1),
        "jax_peak_device_gib": None if jax_mem is None else round(jax_mem / 2**30, 2),
        "torch_peak_device_gib": None if torch_mem is None else round(torch_mem / 2**30, 2),
        "tune_malloc": args.tune_malloc,
        "load": round(os.getloadavg()[0], 2),
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
