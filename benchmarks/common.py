"""Shared pieces of the speed benchmarks: shapes, FLOP counts, matmul peak, timing, torch model.

Both contenders get the same architecture, batch and LoRA settings; the FLOP count is what a
LoRA step must compute (frozen kernels need no weight gradient), written from the shapes.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import resource
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np

PRESETS = {
    # The CPU preset: a small Qwen3 (8 layers, hidden 512) with the real vocabulary.
    "cpu-small": dict(
        hidden=512, layers=8, heads=8, kv_heads=4, head_dim=64, intermediate=1536,
        vocab=151936, batch=16, seq=128, rank=16, dtype="float32",
    ),
    # Qwen3-1.7B's shape, random init, for the GPU check.
    "qwen3-1.7b": dict(
        hidden=2048, layers=28, heads=16, kv_heads=8, head_dim=128, intermediate=6144,
        vocab=151936, batch=8, seq=512, rank=16, dtype="bfloat16",
    ),
}  # fmt: skip
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# LoRA alpha of both contenders; the LoRA dropout is a shape flag (--dropout), 0.05 by default
# (jaxcls's lora.dropout; peft's own default is 0.0, where it skips the dropout entirely).
ALPHA, DROPOUT = 32.0, 0.05


@dataclasses.dataclass(frozen=True)
class Shape:
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    batch: int
    seq: int
    rank: int
    dtype: str
    dropout: float = DROPOUT

    @property
    def tokens(self) -> int:
        return self.batch * self.seq

    def projections(self) -> dict[str, tuple[int, int]]:
        """(in, out) of the seven adapted projections of one decoder layer."""
        d, q, kv, f = (
            self.hidden,
            self.heads * self.head_dim,
            self.kv_heads * self.head_dim,
            self.intermediate,
        )
        return {
            "q_proj": (d, q), "k_proj": (d, kv), "v_proj": (d, kv), "o_proj": (q, d),
            "gate_proj": (d, f), "up_proj": (d, f), "down_proj": (f, d),
        }  # fmt: skip


def add_shape_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu-small")
    for name, field in Shape.__dataclass_fields__.items():
        kind = {"str": str, "float": float}.get(field.type, int)
        parser.add_argument(f"--{name.replace('_', '-')}", type=kind, default=None)


def shape_from_args(args: argparse.Namespace) -> Shape:
    """The preset, with any flag given on the command line overriding it."""
    values = dict(PRESETS[args.preset])
    for name in Shape.__dataclass_fields__:
        if getattr(args, name) is not None:
            values[name] = getattr(args, name)
    return Shape(**values)


def step_flops(s: Shape, train: bool = True, pooled_last_layer: bool = False) -> dict[str, float]:
    """Matmul FLOPs of one LoRA training step (or one forward), by part.

    Forward: 2 * tokens * in * out per projection, QK^T and PV of causal-free dense attention
    (both implementations compute the full T x T scores), rank-r LoRA factors. Backward: the
    input gradient of every projection except layer 0's q/k/v (their input is the frozen
    embedding, so no gradient flows there), 2x the attention matmuls, and dA, dB and the
    LoRA input gradients. No weight gradient of the frozen kernels. ``pooled_last_layer``:
    the last layer computes its queries, o_proj and MLP at one token per text (jaxcls with
    last-token pooling; transformers computes every position).
    """
    parts = {"dense": 0.0, "lora": 0.0, "attention": 0.0}
    passes = 3 if train else 1  # forward, plus input gradient and LoRA/attention gradients
    for layer in range(s.layers):
        queries = 1 if pooled_last_layer and layer == s.layers - 1 else s.seq
        for name, (i, o) in s.projections().items():
            rows = s.batch * (s.seq if name in ("k_proj", "v_proj") else queries)
            dense, lora = 2.0 * rows * i * o, 2.0 * rows * s.rank * (i + o)
            embedding_input = layer == 0 and name in ("q_proj", "k_proj", "v_proj")
            parts["dense"] += dense * (1 if not train or embedding_input else 2)
            # LoRA backward: dB and d(xA) (2 * rows * r * out), dA and d(x) (2 * rows * r * in).
            parts["lora"] += lora * passes - (
                2.0 * rows * s.rank * i if train and embedding_input else 0
            )
        parts["attention"] += passes * 2 * (2.0 * s.batch * s.heads * queries * s.seq * s.head_dim)
    return parts


def matmul_peak(matmul: Callable[[], Any], n: int, repeats: int = 5) -> float:
    """Best FLOP/s of ``matmul()`` (an [n, n] @ [n, n] product, synchronised)."""
    matmul()
    best = min(timed(matmul) for _ in range(repeats))
    return 2.0 * n**3 / best


def time_calls(fn: Callable[[], Any], n: int) -> list[tuple[float, float]]:
    """Wall and process CPU seconds of ``n`` calls."""
    out = []
    for _ in range(n):
        cpu = time.process_time()
        out.append((timed(fn), time.process_time() - cpu))
    return out


def peak_size() -> int:
    """Side of the square matmul that measures the peak: 2048 on CPU, 8192 on an accelerator."""
    import jax

    return 2048 if jax.default_backend() == "cpu" else 8192


def jax_matmul_peak(dtype: str) -> float:
    """Measured FLOP/s of a jitted JAX [n, n] @ [n, n] product in ``dtype``."""
    import jax
    import jax.numpy as jnp

    n = peak_size()
    x = jnp.asarray(np.random.default_rng(0).normal(size=(n, n)), dtype)
    mm = jax.jit(lambda a: a @ a)
    return matmul_peak(lambda: mm(x).block_until_ready(), n)


def jax_config(s: Shape) -> Any:
    """The jaxcls ``Qwen3Config`` of shape ``s``."""
    from jaxcls.model.qwen3 import Qwen3Config

    return Qwen3Config(
        vocab_size=s.vocab, hidden_size=s.hidden, intermediate_size=s.intermediate,
        num_hidden_layers=s.layers, num_attention_heads=s.heads, num_key_value_heads=s.kv_heads,
        head_dim=s.head_dim,
    )  # fmt: skip


def timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def spread(times: list[float]) -> str:
    """``median (min-max)`` of times in seconds."""
    return f"{statistics.median(times):.3f} s ({min(times):.3f}-{max(times):.3f})"


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if "model name" in line)
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}"


def random_batch(s: Shape, num_labels: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Full-length texts (every position real) with random ids and labels."""
    rng = np.random.default_rng(seed)
    return {
        "input_ids": rng.integers(1, s.vocab, (s.batch, s.seq), dtype=np.int32),
        "attention_mask": np.ones((s.batch, s.seq), np.int32),
        "labels": rng.integers(0, num_labels, (s.batch,), dtype=np.int32),
    }


def hf_config(s: Shape, num_labels: int, attn: str) -> Any:
    """A transformers ``Qwen3Config`` of shape ``s`` (pad id 0: the batch has none)."""
    from transformers import Qwen3Config

    return Qwen3Config(
        vocab_size=s.vocab, hidden_size=s.hidden, intermediate_size=s.intermediate,
        num_hidden_layers=s.layers, num_attention_heads=s.heads, num_key_value_heads=s.kv_heads,
        head_dim=s.head_dim, num_labels=num_labels, pad_token_id=0, tie_word_embeddings=False,
        attn_implementation=attn, use_cache=False,
    )  # fmt: skip


def profile(step: Callable[[], None], trace_dir: str, jitted: Any, args: tuple, n: int = 2) -> None:
    """Trace ``n`` calls of ``step`` with jax.profiler; print time per HLO op group.

    Ops are grouped by their source (the ``op_name`` metadata of the compiled HLO with layer
    numbers removed), so the table reads as "what the step spends its time on".
    """
    import collections
    import glob
    import re

    import jax

    with jax.profiler.trace(trace_dir):
        for _ in range(n):
            step()
    hlo = jitted.lower(*args).compile().as_text()
    source = {}
    for line in hlo.splitlines():
        m = re.match(r"\s*(?:ROOT )?%?([\w.\-]+) = (\S+?)\{?[\d,]*\}? .*op_name=\"([^\"]+)\"", line)
        if m:
            op = re.sub(r"layers_\d+", "L", m.group(3)).replace("jit(train_step)/", "")
            source[m.group(1)] = (m.group(2), op.replace("transpose(jvp(Qwen3Classifier))", "bwd"))
    busy: collections.Counter = collections.Counter()
    total = 0
    path = sorted(glob.glob(f"{trace_dir}/**/*.xplane.pb", recursive=True))[-1]
    for plane in jax.profiler.ProfileData.from_file(path).planes:
        for line in plane.lines:
            if "XLA" not in line.name:
                continue
            for ev in line.events:
                if ev.name in source:
                    kind = re.sub(r"\.\d+$", "", ev.name)
                    busy[(kind, *source[ev.name])] += ev.duration_ns / n
                    total += ev.duration_ns / n
    print(f"profile: {total / 1e6:.0f} ms of op time per step (all threads); top 30:")
    for (kind, shape, op), ns in busy.most_common(30):
        share = 100 * ns / total
        print(f"  {ns / 1e6:8.1f} ms {share:5.1f}%  {kind[:22]:22s} {shape[:24]:24s} {op[-70:]}")
