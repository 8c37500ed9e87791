"""Inference throughput: ``Classifier.predict_proba`` against transformers' forward, in one process.

    python benchmarks/predict.py --preset cpu-small --torch

Both sides classify the same texts (``--texts`` of exactly ``--seq`` Qwen tokens each) in
batches of ``--batch``, tokenization included: jaxcls through ``Classifier.predict_proba``
with plain (LoRA-merged) weights, PyTorch through the fast tokenizer and
``Qwen3ForSequenceClassification`` under ``torch.inference_mode`` with its faster attention
implementation. The two alternate ``--rounds`` times. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

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

    from jaxcls import lora
    from jaxcls.api import Classifier
    from jaxcls.classifier import HeadConfig, Qwen3Classifier
    from jaxcls.qwen3 import Qwen3Config

    config = Qwen3Config(
        vocab_size=s.vocab, hidden_size=s.hidden, intermediate_size=s.intermediate,
        num_hidden_layers=s.layers, num_attention_heads=s.heads, num_key_value_heads=s.kv_heads,
        head_dim=s.head_dim,
    )  # fmt: skip
    head = HeadConfig(num_labels=NUM_LABELS, dtype=s.dtype, param_dtype=s.dtype)
    ids = jnp.ones((1, 1), jnp.int32)
    params = jax.jit(Qwen3Classifier(config, head).init)(jax.random.PRNGKey(0), ids, ids)
    cfg = lora.LoRAConfig(rank=s.rank, alpha=common.ALPHA)
    adapters = lora.init(params["params"], cfg, jax.random.PRNGKey(1))
    adapters = jax.tree_util.tree_map(lambda x: x + 0.01, adapters)  # B != 0: a real merge
    merged = lora.merge(params["params"], adapters, cfg)
    labels = [f"class_{i}" for i in range(NUM_LABELS)]
    return Classifier(config, head, merged, tokenizer, labels, s.seq, batch_size=s.batch)


def build_torch(s: common.Shape, tokenizer: Any, attn: str) -> Any:
    """``predict(texts) -> probabilities`` with transformers, batch by batch."""
    import torch
    from transformers import Qwen3ForSequenceClassification

    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[s.dtype]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    model = Qwen3ForSequenceClassification(common.hf_config(s, NUM_LABELS, attn))
    model.config.pad_token_id = tokenizer.pad_token_id
    model = model.to(device=device, dtype=dtype).eval()

    def predict(texts: list[str]) -> np.ndarray:
        out = []
        with torch.inference_mode():
            for i in range(0, len(texts), s.batch):
                enc = tokenizer(
                    texts[i : i + s.batch], truncation=True, max_length=s.seq,
                    padding=True, return_tensors="pt",
                ).to(device)  # fmt: skip
                logits = model(**enc).logits.float()
                out.append(torch.softmax(logits, dim=-1).cpu().numpy())
        return np.concatenate(out)

    return predict


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.add_shape_flags(parser)
    parser.add_argument("--torch", action="store_true", help="also time transformers")
    parser.add_argument("--torch-attn", choices=["auto", "sdpa", "eager"], default="auto")
    parser.add_argument("--texts", type=int, default=128, help="texts per timed call")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--tune-malloc", action="store_true",
        help="glibc malloc settings that keep freed memory (common.tune_malloc); both sides",
    )  # fmt: skip
    args = parser.parse_args()
    s = common.shape_from_args(args)
    if args.tune_malloc:
        print(f"tune_malloc: {common.tune_malloc()}")

    import jax

    from jaxcls.backbone import load_tokenizer
    from jaxcls.demo import qwen_tokenizer_dir

    if args.torch:
        import torch

        torch.set_num_threads(os.cpu_count())
    print(f"machine: {common.machine()}; jax {jax.__version__} on {jax.devices()[0]}")
    print(f"shape: {s}; {args.texts} texts per call")
    tokenizer = load_tokenizer(qwen_tokenizer_dir())
    texts = make_texts(tokenizer, args.texts, s.seq)
    clf = build_jax(s, tokenizer)
    contenders = {"jax": lambda: clf.predict_proba(texts)}
    first = common.timed(contenders["jax"])  # compiles the one length bucket
    print(f"jaxcls: first call {first:.1f} s (compile included)")
    if args.torch:
        attn = args.torch_attn
        if attn == "auto":
            trial = {}
            for name in ("sdpa", "eager"):
                fn = build_torch(s, tokenizer, name)
                fn(texts[: s.batch])
                trial[name] = min(common.timed(lambda fn=fn: fn(texts)) for _ in range(2))
            attn = min(trial, key=trial.get)
            print("torch attention trial: " + ", ".join(f"{k} {v:.3f} s" for k, v in trial.items()))
        predict = build_torch(s, tokenizer, attn)
        predict(texts[: s.batch])
        contenders["torch"] = lambda: predict(texts)
        print(f"torch: attn_implementation={attn}")

    times: dict[str, list[float]] = {name: [] for name in contenders}
    for r in range(args.rounds):
        for name, fn in contenders.items():
            times[name] += [common.timed(fn) for _ in range(2)]
        print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.3f} s" for k, v in times.items()))
    result: dict[str, Any] = {}
    for name, ts in times.items():
        med = statistics.median(ts)
        result[f"{name}_texts_per_s"] = round(args.texts / med, 1)
        result[f"{name}_tokens_per_s"] = round(args.texts * s.seq / med, 1)
        rate = args.texts / med
        print(f"{name}: {common.spread(ts)} per {args.texts} texts, {rate:,.1f} texts/s, "
              f"{rate * s.seq:,.0f} tokens/s")  # fmt: skip
    if args.torch:
        result["ratio"] = round(result["jax_tokens_per_s"] / result["torch_tokens_per_s"], 3)
        print(f"ratio jaxcls / transformers tokens/s: {result['ratio']:.2f}x")
        np.testing.assert_allclose(contenders["jax"]().sum(-1), 1.0, rtol=1e-5)
    result["peak_rss_mb"] = round(common.peak_rss_mb(), 1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
