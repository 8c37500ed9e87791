"""jaxcls at the real Qwen3 sizes: memory and speed of training and inference on a checkpoint.

    python benchmarks/real_size.py --shape 1.7b                 # build, convert, measure
    python benchmarks/real_size.py --memory-only                # compiled-step memory table

Builds once (cached under $JAXCLS_CACHE or ~/.cache/jaxcls) a random Hugging Face
checkpoint of a named Qwen3 shape (bf16, ~1 GiB safetensors shards, the real vocabulary;
written shard by shard, never a whole float32 model in memory) and its jaxcls conversion
(``python -m jaxcls.convert --dtype bfloat16``). Then, each in a process of its own so that
peak RSS is that stage's: jaxcls training (``train.py``, ``--steps`` steps), jaxcls inference
(``eval.py``), and transformers + peft on the same checkpoint, batch and LoRA settings
(``benchmarks/torch_side.py``), with compile time, seconds per step, tokens/s and MFU.
Also prints, for the accelerator setting (bf16 compute and params, batch 8 x 512, remat on
and off), the compiled train step's memory (``memory_analysis()``) of each shape, from
abstract shapes (no weights allocated). The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import convert_memory  # noqa: E402

from jaxcls.model.qwen3 import Qwen3Config  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

# Hugging Face config.json of Qwen/Qwen3-{0.6B,1.7B,4B,8B} (the architecture fields).
SHAPES = {
    "0.6b": dict(hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
                 num_attention_heads=16, num_key_value_heads=8, tie_word_embeddings=True),
    "1.7b": dict(hidden_size=2048, intermediate_size=6144, num_hidden_layers=28,
                 num_attention_heads=16, num_key_value_heads=8, tie_word_embeddings=True),
    "4b": dict(hidden_size=2560, intermediate_size=9728, num_hidden_layers=36,
               num_attention_heads=32, num_key_value_heads=8, tie_word_embeddings=True),
    "8b": dict(hidden_size=4096, intermediate_size=12288, num_hidden_layers=36,
               num_attention_heads=32, num_key_value_heads=8, tie_word_embeddings=False),
}  # fmt: skip


def qwen3_config(shape: str) -> Qwen3Config:
    """The ``Qwen3Config`` of a named Qwen3 size (vocab 151936, head_dim 128, theta 1e6)."""
    return Qwen3Config(vocab_size=151936, head_dim=128, rope_theta=1e6, **SHAPES[shape])


def cache_dir() -> Path:
    return Path(os.environ.get("JAXCLS_CACHE") or Path.home() / ".cache" / "jaxcls") / "real_size"


def ensure_checkpoint(shape: str) -> tuple[Path, Path]:
    """(HF dir, converted jaxcls dir) of ``shape``, built on first use."""
    from jaxcls.data.demo import qwen_tokenizer_dir

    hf_dir, ours = cache_dir() / f"qwen3-{shape}-hf", cache_dir() / f"qwen3-{shape}-jaxcls"
    if not (hf_dir / "model.safetensors.index.json").is_file():
        tmp = hf_dir.with_name(hf_dir.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        size = convert_memory.write_checkpoint(tmp, config=qwen3_config(shape))
        for f in Path(qwen_tokenizer_dir()).iterdir():
            shutil.copy2(f, tmp / f.name)
        tmp.rename(hf_dir)
        print(f"wrote {hf_dir} ({size / 1e9:.2f} GB)", flush=True)
    if not (ours / "jaxcls_model.json").is_file():
        cmd = [sys.executable, "-m", "jaxcls.convert", "--hf", str(hf_dir), "--out", str(ours)]
        subprocess.run([*cmd, "--dtype", "bfloat16"], check=True)
    return hf_dir, ours


def checkpoint_bytes(hf_dir: Path) -> int:
    index = json.loads((hf_dir / "model.safetensors.index.json").read_text())
    return int(index["metadata"]["total_size"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="1.7b")
    args = parser.parse_args()
    hf_dir, ours = ensure_checkpoint(args.shape)
    print(json.dumps({"hf_dir": str(hf_dir), "jaxcls_dir": str(ours),
                      "checkpoint_bytes": checkpoint_bytes(hf_dir)}))  # fmt: skip


if __name__ == "__main__":
    main()
