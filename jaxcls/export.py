"""A trained run -> a peft LoRA adapter dir, or a merged Hugging Face checkpoint.

  python -m jaxcls.export --ckpt best --workdir runs/margin --format peft --out exported/peft
  python -m jaxcls.export --ckpt best --workdir runs/margin --format merged --out exported/hf

``peft``: ``adapter_config.json`` and ``adapter_model.safetensors`` (the LoRA factors and the
score head under peft's names), ``labels.json`` and the tokenizer; load it with
``PeftModel.from_pretrained(Qwen3ForSequenceClassification.from_pretrained(BASE), OUT)``.
When the run's base is not a Hugging Face dir on disk (the random-init demo base, trained or
not), it is written as ``OUT/base`` and named as the adapter's base.
``merged``: a plain ``Qwen3ForSequenceClassification`` dir with LoRA folded into the kernels
(``config.json`` with id2label/label2id and pad_token_id, ``model.safetensors``, tokenizer),
for transformers or vLLM. Tensor names go through ``jaxcls.mapping``, the converter's table.
The projection head and the contrastive loss state are training-only and are not exported.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import flax
import jax
import ml_dtypes
import numpy as np

from jaxcls.data import batches
from jaxcls.formats import hf_keys, model_dir, peft_dir
from jaxcls.model import lora
from jaxcls.model.qwen3 import Qwen3Config

log = logging.getLogger("jaxcls")

FORMATS = ("peft", "merged")
DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16, "float16": np.float16}
_ST_CODES = {"float32": "F32", "bfloat16": "BF16", "float16": "F16"}
# (name, shape, dtype, make): a tensor to write, computed only when its turn comes.
Entry = tuple[str, tuple[int, ...], np.dtype, Callable[[], np.ndarray]]


def save_safetensors(path: Path, entries: Iterable[Entry]) -> None:
    """Write a safetensors file one tensor at a time (no second copy of the model)."""
    entries = list(entries)
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape, dtype, _ in entries:
        size = int(np.prod(shape)) * np.dtype(dtype).itemsize
        code = _ST_CODES[np.dtype(dtype).name]
        header[name] = {
            "dtype": code,
            "shape": list(shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned
    with open(path, "wb") as f:
        f.write(len(raw).to_bytes(8, "little") + raw)
        for name, shape, dtype, make in entries:
            array = np.ascontiguousarray(make(), dtype=dtype)
            assert array.shape == tuple(shape), (name, array.shape, shape)
            f.write(memoryview(array.reshape(-1).view(np.uint8)))


def _hf_entries(config: Qwen3Config, flat: dict[str, Any], num_labels: int, dtype) -> list[Entry]:
    def make(path: str, transform: hf_keys.Transform) -> Callable[[], np.ndarray]:
        return lambda: transform.to_hf(np.asarray(flat[path]).astype(DTYPES[dtype]))

    return [
        (name, shape, np.dtype(DTYPES[dtype]), make(path, t))
        for name, path, shape, t in hf_keys.expected(config, num_labels)
    ]


def write_hf(
    out: Path, config: Qwen3Config, params: Any, labels: list[str], tokenizer: Any, dtype: str
) -> None:
    """A ``Qwen3ForSequenceClassification`` dir: config.json, model.safetensors, tokenizer."""
    out.mkdir(parents=True, exist_ok=True)
    hf = config.to_hf() | {
        "id2label": {str(i): name for i, name in enumerate(labels)},
        "label2id": {name: i for i, name in enumerate(labels)},
        "pad_token_id": batches.pad_id(tokenizer),
        "eos_token_id": tokenizer.eos_token_id,
        "dtype": dtype,
        "torch_dtype": dtype,  # the key transformers < 5 and older vLLM read
    }
    (out / "config.json").write_text(json.dumps(hf, indent=2, ensure_ascii=False) + "\n")
    flat = flax.traverse_util.flatten_dict(params, sep="/")
    save_safetensors(out / "model.safetensors", _hf_entries(config, flat, len(labels), dtype))
    tokenizer.save_pretrained(out)


def _target_modules(adapted: list[str], params: Any) -> list[str]:
    """peft ``target_modules``: a module kind (``q_proj``) when every layer's is adapted, else
    the full names of the adapted ones, so that peft adapts exactly these modules."""
    names = [hf_keys.hf_module(m) for m in adapted]
    every = [hf_keys.hf_module(m) for m in lora.target_paths(params, ".")]
    kinds = sorted({n.rpartition(".")[2] for n in names})
    out = []
    for kind in kinds:
        mine = [n for n in names if n.endswith("." + kind)]
        if len(mine) == sum(n.endswith("." + kind) for n in every):
            out.append(kind)
        else:
            out.extend(mine)
    return out


def write_peft(out: Path, run: Any, base_name: str | None) -> None:
    """adapter_config.json, adapter_model.safetensors (float32 LoRA, score), labels, tokenizer."""
    out.mkdir(parents=True, exist_ok=True)
    cfg = run.cfg.lora
    adapters = flax.traverse_util.flatten_dict(run.trainable["adapters"], sep="/")
    flat = {**adapters, peft_dir.SCORE: run.trainable["params"]["score"]["kernel"]}
    entries = []
    for path, value in flat.items():
        name, transform = hf_keys.ours_to_peft(path)
        array = np.asarray(value)
        entries.append(
            (name, array.shape[::-1], array.dtype, lambda a=array, t=transform: t.to_hf(a))
        )
    save_safetensors(out / "adapter_model.safetensors", sorted(entries, key=lambda e: e[0]))
    modules = sorted({k.rpartition("/")[0] for k in adapters})
    config = {
        "peft_type": "LORA",
        "task_type": "SEQ_CLS",
        "base_model_name_or_path": base_name,
        "r": int(cfg.rank),
        "lora_alpha": float(cfg.alpha),
        "lora_dropout": float(cfg.dropout),
        "use_rslora": bool(cfg.rslora),
        "target_modules": _target_modules(modules, run.frozen or run.trainable["params"]),
        "modules_to_save": ["score"],
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
        "init_lora_weights": True,
        "rank_pattern": {},
        "alpha_pattern": {},
    }
    (out / peft_dir.CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    (out / peft_dir.LABELS_FILE).write_text(json.dumps(run.label_names, ensure_ascii=False) + "\n")
    run.tokenizer.save_pretrained(out)


def _hf_base(run: Any) -> str | None:
    """The run's base as a Hugging Face dir on disk, if it is one (or was converted from one)."""
    path = Path(run.cfg.model.path) if run.cfg.model.path else None
    if run.train_base or path is None:
        return None
    if (path / model_dir.META_FILE).is_file():
        source = json.loads((path / model_dir.META_FILE).read_text()).get("source", "")
        path = Path(source)
    return str(path.absolute()) if (path / "config.json").is_file() else None


def _param_dtype(params: Any) -> str:
    return np.dtype(jax.tree_util.tree_leaves(params["model"])[0].dtype).name


def write(run: Any, fmt: str, out: Path, dtype: str | None = None) -> Path:
    """Write a loaded run (``evaluation.load_run``) as ``fmt`` (peft | merged) into ``out``,
    atomically: built in ``OUT.tmp-<pid>``, renamed when complete."""
    out = Path(out).absolute()
    model_dir.check_out_dir(out)
    left = [k for k in ("projection",) if k in run.trainable["params"]]
    left += [f"extra/{k}" for k in run.trainable.get("extra", {})]
    if left:
        log.info("not exported (training only): %s", ", ".join(left))
    with model_dir.atomic_dir(out) as tmp:
        if fmt == "merged":
            params = jax.device_get(run.merged_params())
            dtype = dtype or _param_dtype(params)
            write_hf(tmp, run.config, params, run.label_names, run.tokenizer, dtype)
        else:
            base = _hf_base(run)
            if base is None:
                params = jax.device_get(lora.combine(run.frozen, run.trainable["params"]))
                dtype = dtype or _param_dtype(params)
                write_hf(tmp / "base", run.config, params, run.label_names, run.tokenizer, dtype)
                base = str(out / "base")
                log.info("the run's base is not a Hugging Face dir: written to %s", base)
            write_peft(tmp, run, base)
    return out


def export(workdir: Path, ckpt: str, fmt: str, out: Path, dtype: str | None = None) -> Path:
    """Load run ``workdir`` at ``ckpt`` and write it as ``fmt`` into ``out``."""
    from jaxcls.evaluate_run import load_run

    model_dir.check_out_dir(Path(out))  # before the slow load
    run, step = load_run(Path(workdir), ckpt)
    write(run, fmt, out, dtype)
    log.info("exported %s step %d as %s to %s", workdir, step, fmt, out)
    return Path(out)


def main(argv: list[str] | None = None) -> int:
    from jaxcls import cli
    from jaxcls.evaluate_run import split_ckpt

    parser = argparse.ArgumentParser(
        prog="python -m jaxcls.export",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--ckpt", default="best", help="best, latest, a step, or a checkpoint path")
    parser.add_argument("--workdir", default=None, help="run directory (default: runs/LATEST)")
    parser.add_argument("--format", choices=FORMATS, required=True, help="what to write")
    parser.add_argument("--out", required=True, help="output dir (must not exist or be empty)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), help="merged/base weights' dtype")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of user errors")
    args = parser.parse_args(argv)
    cli.setup_logging()
    workdir, ckpt = split_ckpt(args.workdir, args.ckpt)
    export(workdir, ckpt, args.format, Path(args.out), args.dtype)
    return 0


if __name__ == "__main__":
    from jaxcls import cli

    cli.run(main)
