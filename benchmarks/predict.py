"""Inference throughput: ``Classifier.predict_proba`` against transformers' forward, in one run.

    python benchmarks/predict.py --preset cpu-small --torch

Both sides classify the same texts (``--texts`` of exactly ``--seq`` Qwen tokens each) in
batches of ``--batch``, tokenization included: jaxcls through ``Classifier.predict_proba``
with plain (LoRA-merged) weights, PyTorch through the fast tokenizer and
``Qwen3ForSequenceClassification`` under ``torch.inference_mode`` with its faster attention
implementation, in a worker process of its own (``worker.py``). The two alternate
``--rounds`` times. Each side's share of the matmul peak is its FLOPs per call (printed;
jaxcls computes the last layer at the pooled token only) over the better of JAX's and
PyTorch's measured peak. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import torch_side  # noqa: E402
import worker  # noqa: E402

NUM_LABELS = 4
WORDS = "the cat sat on a mat and we saw good food in this old town but it was very far".split()


def make_texts(tokenizer: Any, n: int, seq: int, seed: int = 0) -> list[str]:
    """``n`` texts of exactly ``seq`` tokens (words that are one token each, space-separated)."""
    words = [w for w in WORDS if len(tokenizer(" " + w)["input_ids"]) == 1]
    rng = np.random.default_rng(seed)
    texts = ["".join(" " + words[i] for i in rng.integers(0, len(words), seq)) for _ in range(n)]
    lengths = {len(x) for x in tokenizer(texts)["input_ids"]}
    if lengths != {seq}:
        raise RuntimeError(f"texts tokenize to {sorted(lengths)} tokens, not {seq}")
    return texts


def build_jax(s: common.Shape, tokenizer: Any) -> Any:
    """A ``Classifier`` with random-init weights and merged random LoRA adapters."""
    import jax
    import jax.numpy as jnp

    from jaxcls.api import Classifier
    from jaxcls.model import lora
    from jaxcls.model.classifier import HeadConfig, Qwen3Classifier

    config = common.jax_config(s)
    head = HeadConfig(num_labels=NUM_LABELS, dtype=s.dtype, param_dtype=s.dtype)
    ids = jnp.ones((1, 1), jnp.int32)
    params = jax.jit(Qwen3Classifier(config, head).init)(jax.random.PRNGKey(0), ids, ids)
    cfg = lora.LoRAConfig(rank=s.rank, alpha=common.ALPHA)
    adapters = lora.init(params["params"], cfg, jax.random.PRNGKey(1))
    adapters = jax.tree_util.tree_map(lambda x: x + 0.01, adapters)  # B != 0: a real merge
    merged = lora.merge(params["params"], adapters, cfg)
    labels = [f"class_{i}" for i in range(NUM_LABELS)]
    return Classifier(config, head, merged, tokenizer, labels, s.seq, batch_size=s.batch)


def call_gflop(s: common.Shape, texts: int, pooled_last_layer: bool) -> float:
    """Matmul GFLOP of classifying ``texts`` texts: merged weights, so no LoRA factors."""
    parts = common.step_flops(s, train=False, pooled_last_layer=pooled_last_layer)
    return (parts["dense"] + parts["attention"]) * texts / s.batch / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.add_shape_flags(parser)
    parser.add_argument("--torch", action="store_true", help="also time transformers")
    parser.add_argument("--torch-attn", choices=["auto", "sdpa", "eager"], default="auto")
    parser.add_argument("--texts", type=int, default=128, help="texts per timed call")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--no-tune-malloc", action="store_true",
        help="leave glibc malloc at its defaults (predict.py tunes it: jaxcls.runtime)",
    )  # fmt: skip
    args = parser.parse_args()
    s = common.shape_from_args(args)
    from jaxcls.runtime import tune_malloc

    tuned = False if args.no_tune_malloc else tune_malloc()  # as predict.py: before JAX starts

    import jax

    from jaxcls.data.demo import qwen_tokenizer_dir
    from jaxcls.data.tokenizer import load_tokenizer

    print(f"machine: {common.machine()}; jax {jax.__version__} on {jax.devices()[0]}")
    print(f"shape: {s}; {args.texts} texts per call; jaxcls malloc tuned: {tuned}")
    tokenizer = load_tokenizer(qwen_tokenizer_dir())
    texts = make_texts(tokenizer, args.texts, s.seq)
    clf = build_jax(s, tokenizer)
    first = common.timed(lambda: clf.predict_proba(texts))  # compiles the one length bucket
    print(f"jaxcls: first call {first:.1f} s (compile included)")
    contenders = {"jax": lambda: [common.timed(lambda: clf.predict_proba(texts)) for _ in range(2)]}
    peaks = {"jax": common.jax_matmul_peak(s.dtype)}
    rival = None
    if args.torch:
        tok_dir = str(qwen_tokenizer_dir())
        rival = worker.Worker(torch_side.Predict, s, tok_dir, texts, args.torch_attn)
        print(f"torch: attn_implementation={rival.call('info')['attn']}")
        contenders["torch"] = lambda: [wall for wall, _ in rival.call("time_calls", 2)]
        peaks["torch"] = rival.call("matmul_peak", common.peak_size())
    best_peak = max(peaks.values())
    print("matmul peak: " + ", ".join(f"{k} {v / 1e9:.0f} GFLOP/s" for k, v in peaks.items()))
    call_flops = {name: call_gflop(s, args.texts, name == "jax") * 1e9 for name in contenders}
    for name, flops in call_flops.items():
        print(f"{name} FLOPs per call: {flops / 1e9:.1f} GFLOP")

    times: dict[str, list[float]] = {name: [] for name in contenders}
    for r in range(args.rounds):
        for name, run in contenders.items():
            times[name] += run()
        print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.3f} s" for k, v in times.items()))
    result: dict[str, Any] = {}
    for name, ts in times.items():
        med = statistics.median(ts)
        result[f"{name}_texts_per_s"] = round(args.texts / med, 1)
        result[f"{name}_tokens_per_s"] = round(args.texts * s.seq / med, 1)
        rate, share = args.texts / med, call_flops[name] / med / best_peak
        result[f"{name}_peak_share"] = round(share, 3)
        print(f"{name}: {common.spread(ts)} per {args.texts} texts, {rate:,.1f} texts/s, "
              f"{rate * s.seq:,.0f} tokens/s, {share:.0%} of the matmul peak")  # fmt: skip
    if rival:
        result["ratio"] = round(result["jax_tokens_per_s"] / result["torch_tokens_per_s"], 3)
        print(f"ratio jaxcls / transformers tokens/s: {result['ratio']:.2f}x")
        result["torch_peak_rss_mb"] = round(rival.call("memory")["peak_rss_mb"], 1)
        rival.close()
    np.testing.assert_allclose(clf.predict_proba(texts).sum(-1), 1.0, rtol=1e-5)
    result["jax_call_gflop"] = round(call_flops["jax"] / 1e9, 1)
    result["peak_gflops"] = round(best_peak / 1e9, 1)
    result["peak_rss_mb"] = round(common.peak_rss_mb(), 1)
    result["tune_malloc"] = tuned
    print(json.dumps(result))


if __name__ == "__main__":
    main()
