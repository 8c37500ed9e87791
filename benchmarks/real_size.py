"""jaxcls at the real Qwen3 sizes: peak memory of training and inference on a checkpoint.

    python benchmarks/real_size.py --shape 1.7b          # build, convert, measure, table
    python benchmarks/real_size.py --memory-only         # only the compiled-step table
    python benchmarks/real_size.py --quantize int8       # also on the int8 base, beside bf16
    python benchmarks/real_size.py --torch --dropout 0   # and the speed against transformers + peft

Builds once (cached under $JAXCLS_CACHE or ~/.cache/jaxcls) a random Hugging Face
checkpoint of a named Qwen3 shape (bf16, ~1 GiB safetensors shards, the real vocabulary;
written shard by shard, never a whole float32 model in memory) and its jaxcls conversion
(``python -m jaxcls.convert --dtype bfloat16``). Then runs ``train.py`` (configs/margin.py,
bf16 params, remat, batch 8 x 32, ``--steps`` steps, small text files) and ``eval.py`` on
the run, each in its own process, and reports wall time and peak RSS against the weights.
Last, for the accelerator setting (bf16 compute and params, batch 8 x 512, remat on and
off), the compiled train step's memory (``memory_analysis()``) of each shape, from abstract
shapes (no weights allocated). With ``--torch``, the training step's speed against
transformers + peft at the shape (``benchmarks/train_step.py`` in its own process, same batch
8 x 32 and LoRA settings, ``--dropout`` on both sides, float32 on both: the faster dtype of
each on a CPU without bf16 matmuls): seconds per step, tokens/s, MFU, compile time, the ratio.
Random weights of the checkpoint's shape on both sides: a step's time does not depend on
their values. The last line is one JSON object.
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


def step_memory(
    shape: str, remat: bool, batch: int = 8, seq: int = 512, quantize: str = "none"
) -> dict[str, float]:
    """GB of the compiled train step (bf16 compute and params; ``quantize="int8"``: the int8
    base of ``model.quantize``), from abstract shapes only; ``base``: the frozen base's GB."""
    import dataclasses

    import jax
    import jax.numpy as jnp

    from jaxcls.config import load_config
    from jaxcls.model import layerstack, lora, quant
    from jaxcls.model.classifier import HeadConfig, Qwen3Classifier
    from jaxcls.train import sharding, steps
    from jaxcls.train.settings import OptimSettings, StepSettings

    cfg = load_config(ROOT / "configs" / "margin.py")
    cfg.model.dtype = cfg.model.param_dtype = "bfloat16"
    cfg.model.remat = remat
    cfg.optim.lr = 2e-4  # the LoRA recipe's ("auto" is resolved by the trainer)
    config = qwen3_config(shape)
    head = HeadConfig.from_config(cfg.model, 2)
    ids = jax.ShapeDtypeStruct((1, 1), jnp.int32)
    flat = Qwen3Classifier(config, dataclasses.replace(head, scan=False))
    params = jax.eval_shape(flat.init, jax.random.key(0), ids, ids)["params"]
    heads, frozen = lora.partition(params, r"^(score|projection)/")
    lora_cfg = lora.LoRAConfig.from_config(cfg.lora)
    adapters = jax.eval_shape(lambda f: lora.init(f, lora_cfg, jax.random.PRNGKey(1)), frozen)
    n = steps.scanned_layers(Qwen3Classifier(config, head))
    if quantize == "int8":
        frozen = jax.eval_shape(quant.quantize_params, frozen)
    frozen = jax.eval_shape(lambda f: layerstack.step_layout(f, n), frozen)
    trainable = {"adapters": adapters, "params": heads, "extra": {}}
    optimizer = steps.make_optimizer(OptimSettings.from_config(cfg.optim), 100)

    def init_state(t):
        return steps.TrainState(
            step=jnp.zeros((), jnp.int32), trainable=t, opt_state=optimizer.init(t),
            rng=jax.random.PRNGKey(2), bad_steps=jnp.zeros((), jnp.int32),
        )  # fmt: skip

    state = jax.eval_shape(init_state, trainable)
    sds = jax.ShapeDtypeStruct
    batch_arg = {
        "input_ids": sds((1, batch, seq), jnp.int32),
        "attention_mask": sds((1, batch, seq), jnp.int32),
        "labels": sds((1, batch), jnp.int32),
        "valid": sds((1, batch), jnp.float32),
    }
    model = Qwen3Classifier(config, head)
    settings = StepSettings.from_config(cfg, 100)
    step_fn = steps.make_train_step(model, settings, optimizer, sharding.make_mesh("0"))
    step = jax.jit(step_fn, donate_argnums=(0,))
    m = step.lower(state, frozen, batch_arg).compile().memory_analysis()
    parts = {
        "arguments": m.argument_size_in_bytes,
        "outputs": m.output_size_in_bytes,
        "aliased": m.alias_size_in_bytes,
        "temporaries": m.temp_size_in_bytes,
    }
    gb = {k: v / 1e9 for k, v in parts.items()}
    gb["total"] = gb["arguments"] + gb["outputs"] - gb["aliased"] + gb["temporaries"]
    gb["base"] = quant.weight_bytes(frozen) / 1e9
    return gb


def memory_table(
    shapes: list[str], batch: int, seq: int, bases: tuple[str, ...] = ("none",)
) -> list[dict]:
    """Print and return the compiled step's memory of each shape and base (none = bf16,
    int8), remat on and off."""
    print(f"compiled train step, bf16 compute and params, batch {batch} x {seq}, LoRA r16 (GB):")
    head = f"{'shape':6s} {'base':5s} {'remat':5s} {'weights':>7s} {'args':>7s} {'temp':>7s}"
    print(f"{head} {'total':>7s}")
    rows = []
    for shape in shapes:
        for base in bases:
            for remat in (True, False):
                gb = step_memory(shape, remat, batch, seq, base)
                name = "bf16" if base == "none" else base
                rows.append({
                    "shape": shape, "base_dtype": name, "remat": remat,
                    **{k: round(v, 2) for k, v in gb.items()},
                })  # fmt: skip
                cells = (gb[k] for k in ("base", "arguments", "temporaries", "total"))
                print(
                    f"{shape:6s} {name:5s} {str(remat):5s} " + " ".join(f"{v:7.2f}" for v in cells)
                )
    return rows


def measured_runs(
    hf_dir: Path, ours: Path, work: Path, steps: int, quantize: str = "none"
) -> dict[str, float]:
    """Peak RSS and wall time of ``train.py`` and ``eval.py`` on the converted checkpoint
    (``quantize``: its ``model.quantize``)."""
    data = work / "data"
    data.mkdir(parents=True, exist_ok=True)
    words = "the cat sat on a mat and we saw good food in this old town".split()
    for name, n in (("train", 64), ("val", 16), ("test", 48)):
        rows = [
            f"{' '.join(words[(i + j) % len(words)] for j in range(12))},{i % 2}" for i in range(n)
        ]
        (data / f"{name}.csv").write_text("text,label\n" + "\n".join(rows) + "\n")
    run = work / ("run" if quantize == "none" else f"run-{quantize}")
    shutil.rmtree(run, ignore_errors=True)
    flags = [
        f"--config.model.path={ours}", "--config.model.param_dtype=bfloat16",
        "--config.model.remat=True", "--config.train.batch_size=8",
        "--config.data.max_length=32", f"--config.train.max_steps={steps}",
        "--config.train.eval_batch_size=8", f"--config.data.train={data / 'train.csv'}",
        f"--config.data.val={data / 'val.csv'}", f"--config.data.test={data / 'test.csv'}",
        f"--config.workdir={run}", f"--config.model.quantize={quantize}",
    ]  # fmt: skip
    train = [sys.executable, str(ROOT / "train.py"), "--config", str(ROOT / "configs/margin.py")]
    train_s, train_peak = convert_memory.run_measured(train + flags)
    evaluate = [sys.executable, str(ROOT / "eval.py"), "--workdir", str(run)]
    eval_s, eval_peak = convert_memory.run_measured(
        evaluate + ["--out", str(run.with_name(run.name.replace("run", "eval")))]
    )
    size = checkpoint_bytes(hf_dir)
    return {
        "train_s": round(train_s, 1), "train_peak_rss_gb": round(train_peak / 1e9, 2),
        "train_peak_over_weights": round(train_peak / size, 2),
        "eval_s": round(eval_s, 1), "eval_peak_rss_gb": round(eval_peak / 1e9, 2),
        "eval_peak_over_weights": round(eval_peak / size, 2),
    }  # fmt: skip


def speed(shape: str, dropout: float, dtype: str, steps: int, rounds: int) -> dict:
    """``train_step.py --torch`` at ``shape`` (batch 8 x 32): its JSON summary."""
    c = qwen3_config(shape)
    flags = {
        "hidden": c.hidden_size, "layers": c.num_hidden_layers, "heads": c.num_attention_heads,
        "kv-heads": c.num_key_value_heads, "head-dim": c.head_dim,
        "intermediate": c.intermediate_size, "vocab": c.vocab_size, "batch": 8, "seq": 32,
        "dtype": dtype, "dropout": dropout, "steps": steps, "rounds": rounds,
    }  # fmt: skip
    cmd = [sys.executable, str(ROOT / "benchmarks" / "train_step.py"), "--torch"]
    cmd += [f"--{k}={v}" for k, v in flags.items()]
    print("speed: " + " ".join(cmd[1:]), flush=True)
    out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
    print(out, end="", flush=True)
    return json.loads(out.strip().splitlines()[-1])


def checkpoint_bytes(hf_dir: Path) -> int:
    index = json.loads((hf_dir / "model.safetensors.index.json").read_text())
    return int(index["metadata"]["total_size"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="1.7b")
    parser.add_argument("--steps", type=int, default=2, help="training steps of the timed run")
    parser.add_argument("--memory-only", action="store_true", help="only the compiled-step table")
    parser.add_argument("--table-shapes", default="0.6b,1.7b,4b,8b")
    parser.add_argument("--table-batch", type=int, default=8)
    parser.add_argument("--table-seq", type=int, default=512)
    parser.add_argument(
        "--quantize", choices=("none", "int8"), default="none",
        help="int8: also measure on the int8 base (model.quantize), beside bf16",
    )  # fmt: skip
    parser.add_argument("--torch", action="store_true", help="also the speed against peft")
    parser.add_argument("--dropout", type=float, default=0.05, help="LoRA dropout, both sides")
    parser.add_argument("--speed-dtype", default="float32", help="dtype of the speed runs")
    parser.add_argument("--speed-steps", type=int, default=2, help="timed steps per round")
    parser.add_argument("--speed-rounds", type=int, default=2, help="alternations jax/torch")
    args = parser.parse_args()
    bases = ("none",) if args.quantize == "none" else ("none", args.quantize)
    result: dict = {"shape": args.shape}
    if not args.memory_only:
        hf_dir, ours = ensure_checkpoint(args.shape)
        result["checkpoint_bytes"] = checkpoint_bytes(hf_dir)
        result.update(measured_runs(hf_dir, ours, cache_dir() / "work", args.steps))
        for base in bases[1:]:
            runs = measured_runs(hf_dir, ours, cache_dir() / "work", args.steps, base)
            result[base] = runs
        print(json.dumps(result), flush=True)
    if args.torch:
        result["speed"] = speed(
            args.shape, args.dropout, args.speed_dtype, args.speed_steps, args.speed_rounds
        )
        print(json.dumps(result), flush=True)
    shapes = [s for s in args.table_shapes.split(",") if s]
    result["step_memory"] = memory_table(shapes, args.table_batch, args.table_seq, bases)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
