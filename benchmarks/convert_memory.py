"""Peak RAM of the converter on a random-init Qwen3-1.7B-shaped bf16 checkpoint.

  python benchmarks/convert_memory.py [--work /tmp/jaxcls-bench] [--keep]

Writes a ``Qwen3ForSequenceClassification`` checkpoint of the real Qwen3-1.7B shapes as
sharded bf16 safetensors, one shard at a time (never the whole model in memory), then runs
``python -m jaxcls.convert --dtype bfloat16`` in a subprocess and reports its peak RSS
against the checkpoint's size. Results go to benchmarks/out/convert_memory.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import ml_dtypes
import numpy as np
from safetensors.numpy import save_file

from jaxcls.formats import hf_keys
from jaxcls.model.qwen3 import Qwen3Config

# Qwen3-1.7B (config.json on the Hugging Face hub), with a 2-class seq-cls head.
QWEN3_1P7B = Qwen3Config(
    vocab_size=151936,
    hidden_size=2048,
    intermediate_size=6144,
    num_hidden_layers=28,
    num_attention_heads=16,
    num_key_value_heads=8,
    head_dim=128,
    rope_theta=1_000_000.0,
    max_position_embeddings=40960,
    tie_word_embeddings=True,
)
NUM_LABELS = 2
SHARD_BYTES = 1 << 30


def write_checkpoint(out: Path, seed: int = 0, config: Qwen3Config = QWEN3_1P7B) -> int:
    """A random bf16 checkpoint of ``config`` in ~1 GiB shards + index; returns its size."""
    out.mkdir(parents=True)
    hf = config.to_hf()
    hf.update(id2label={"0": "negative", "1": "positive"}, pad_token_id=151643, dtype="bfloat16")
    (out / "config.json").write_text(json.dumps(hf, indent=2))
    shapes = hf_keys.expected_hf_shapes(config, NUM_LABELS)
    groups: list[list[str]] = [[]]
    filled = 0
    for name, shape in shapes.items():
        nbytes = 2 * int(np.prod(shape))
        if filled and filled + nbytes > SHARD_BYTES:
            groups.append([])
            filled = 0
        groups[-1].append(name)
        filled += nbytes
    rng = np.random.default_rng(seed)
    weight_map = {}
    for i, group in enumerate(groups, start=1):
        file = f"model-{i:05d}-of-{len(groups):05d}.safetensors"
        tensors = {
            name: (rng.standard_normal(shapes[name], np.float32) * 0.02).astype(ml_dtypes.bfloat16)
            for name in group
        }
        save_file(tensors, out / file, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(group, file))
    size = sum(2 * int(np.prod(shape)) for shape in shapes.values())
    index = {"metadata": {"total_size": size}, "weight_map": weight_map}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    return size


def run_measured(cmd: list[str]) -> tuple[float, int]:
    """Run a command; (seconds, its peak RSS in bytes) from the kernel's accounting."""
    t0 = time.time()
    proc = subprocess.Popen(cmd)
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}")
    return time.time() - t0, usage.ru_maxrss * 1024  # ru_maxrss is in KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", default="/tmp/jaxcls-bench", help="scratch dir (about 7 GB)")
    parser.add_argument("--keep", action="store_true", help="keep the checkpoints afterwards")
    args = parser.parse_args()
    work = Path(args.work)
    hf_dir, out_dir = work / "qwen3-1.7b-hf", work / "qwen3-1.7b-jaxcls"
    shutil.rmtree(work, ignore_errors=True)
    t0 = time.time()
    size = write_checkpoint(hf_dir)
    print(f"wrote {hf_dir}: {size / 1e9:.2f} GB bf16 in {time.time() - t0:.0f} s")
    cmd = [sys.executable, "-m", "jaxcls.convert", "--hf", str(hf_dir), "--out", str(out_dir)]
    cmd += ["--dtype", "bfloat16"]
    seconds, peak = run_measured(cmd)
    read = [
        sys.executable,
        "-c",
        f"from jaxcls.formats.model_dir import read_model; read_model({str(out_dir)!r})",
    ]
    read_seconds, read_peak = run_measured(read)
    result = {
        "checkpoint_bytes": size,
        "convert_peak_rss_bytes": peak,
        "convert_peak_over_size": round(peak / size, 3),
        "convert_seconds": round(seconds, 1),
        "read_model_peak_rss_bytes": read_peak,
        "read_model_peak_over_size": round(read_peak / size, 3),
        "read_model_seconds": round(read_seconds, 1),
        "command": " ".join(cmd),
    }
    print(json.dumps(result, indent=2))
    bench_out = Path(__file__).resolve().parent / "out"
    bench_out.mkdir(exist_ok=True)
    (bench_out / "convert_memory.json").write_text(json.dumps(result, indent=2) + "\n")
    if not args.keep:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
