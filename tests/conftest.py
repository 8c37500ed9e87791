"""Shared fixtures: a tiny offline tokenizer and tiny random Hugging Face Qwen3 checkpoints."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# XLA's CPU backend at optimisation level 0 (no LLVM optimisation of the generated kernels;
# the same results to float rounding): most of the suite's time is compiling tiny models, and
# this cuts it by about 40%. Set before jax is imported; the processes the tests start inherit
# it.
os.environ["XLA_FLAGS"] = " ".join(
    [os.environ.get("XLA_FLAGS", ""), "--xla_backend_optimization_level=0"]
).strip()

PAD = "<|endoftext|>"
CORPUS = [
    "the movie was great and the actors were wonderful",
    "a terrible plot, boring scenes and bad acting",
    "service was slow but the food tasted fine",
    "I would buy this phone again, battery lasts two days",
    "这部电影非常好看，演员的表演很精彩",
    "物流太慢了，包装也破损了，非常失望",
    "价格便宜，质量一般，还可以接受",
    "客服态度很好，问题很快就解决了",
]
# Prime-ish sizes so that a transposed or mixed-up axis cannot hide.
TINY = dict(
    hidden_size=64,
    intermediate_size=88,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    rope_theta=1_000_000.0,
    rms_norm_eps=1e-6,
    max_position_embeddings=512,
)
LABELS = {0: "negative", 1: "neutral", 2: "positive"}


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory) -> Path:
    """A byte-level BPE tokenizer trained offline, saved as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=331,
        special_tokens=[PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(CORPUS * 4, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD, eos_token=PAD)
    out = tmp_path_factory.mktemp("tokenizer")
    fast.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def make_hf_model(tmp_path_factory, tokenizer_dir):
    """Factory: a saved random ``Qwen3ForSequenceClassification`` dir (cached; do not modify).

    Options: ``mha`` (as many KV heads as query heads), ``tie`` (tied embeddings), ``dtype``
    ("float32" | "bfloat16"), ``shard`` (``max_shard_size``), ``causal_lm`` (a
    ``Qwen3ForCausalLM`` instead), ``rope`` ("parameters" = the newer config style,
    "theta" = the older top-level ``rope_theta``), ``seed``.
    """
    import torch
    from transformers import AutoTokenizer, Qwen3Config, Qwen3ForCausalLM
    from transformers import Qwen3ForSequenceClassification as SeqCls

    cache: dict[tuple, Path] = {}
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)

    def make(
        *,
        mha: bool = False,
        tie: bool = False,
        dtype: str = "float32",
        shard: str | None = None,
        causal_lm: bool = False,
        rope: str = "parameters",
        seed: int = 0,
    ) -> Path:
        key = (mha, tie, dtype, shard, causal_lm, rope, seed)
        if key in cache:
            return cache[key]
        sizes = dict(TINY)
        if mha:
            sizes["num_key_value_heads"] = sizes["num_attention_heads"]
        config = Qwen3Config(
            vocab_size=len(tokenizer),
            tie_word_embeddings=tie,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            id2label=None if causal_lm else LABELS,
            **sizes,
        )
        torch.manual_seed(seed)
        model = (Qwen3ForCausalLM if causal_lm else SeqCls)(config).eval()
        # Larger than HF's init (std 0.02) so that a wrong transform or axis shows.
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith("norm.weight"):
                    p.copy_(1.0 + 0.2 * torch.randn_like(p))
                else:
                    p.normal_(0.0, 0.15)
        model = model.to(getattr(torch, dtype))
        out = tmp_path_factory.mktemp("hf_model")
        model.save_pretrained(out, **({"max_shard_size": shard} if shard else {}))
        tokenizer.save_pretrained(out)
        if rope == "theta":
            _old_rope_style(out / "config.json")
        cache[key] = out
        return out

    return make


def _old_rope_style(path: Path) -> None:
    """Rewrite config.json the way transformers < 5 saved it: a top-level ``rope_theta``."""
    hf = json.loads(path.read_text())
    params = hf.pop("rope_parameters")
    hf["rope_theta"] = params["rope_theta"]
    hf["rope_scaling"] = None
    path.write_text(json.dumps(hf, indent=2))


@pytest.fixture(scope="session")
def padded_batch(tokenizer_dir):
    """Right-padded token ids [4, 13] of lengths 13, 8, 5, 1 (no pad id among real tokens)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    pad = tokenizer.pad_token_id
    rng = np.random.default_rng(0)
    lengths = [13, 8, 5, 1]
    ids = np.full((len(lengths), max(lengths)), pad, dtype=np.int32)
    mask = np.zeros_like(ids)
    for row, n in enumerate(lengths):
        choices = np.setdiff1d(np.arange(len(tokenizer)), [pad])
        ids[row, :n] = rng.choice(choices, n)
        mask[row, :n] = 1
    return ids, mask


@pytest.fixture(scope="session")
def torch_forward():
    """Run an HF dir with transformers in float32: (logits, hidden_states) as NumPy."""
    import torch
    from transformers import AutoModelForSequenceClassification

    def run(hf_dir: Path, ids: np.ndarray, mask: np.ndarray):
        model = AutoModelForSequenceClassification.from_pretrained(
            hf_dir, dtype=torch.float32, attn_implementation="eager"
        ).eval()
        with torch.no_grad():
            out = model(
                input_ids=torch.tensor(ids, dtype=torch.long),
                attention_mask=torch.tensor(mask),
                output_hidden_states=True,
            )
        return out.logits.numpy(), [h.numpy() for h in out.hidden_states]

    return run


@pytest.fixture(scope="session")
def quality():
    """``benchmarks/quality.py`` as a module (the quality suite and its TF-IDF baseline)."""
    benchmarks = str(Path(__file__).resolve().parents[1] / "benchmarks")
    sys.path.insert(0, benchmarks)
    try:
        spec = importlib.util.spec_from_file_location("quality", Path(benchmarks) / "quality.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.path.remove(benchmarks)
