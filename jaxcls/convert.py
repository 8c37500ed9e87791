"""Hugging Face Qwen3 checkpoint -> jaxcls model dir, streaming one tensor at a time.

  python -m jaxcls.convert --hf /path/to/Qwen3-1.7B --out models/qwen3-1.7b --dtype bfloat16

Reads ``config.json`` and ``model.safetensors``, sharded ``model-*.safetensors`` with
``model.safetensors.index.json``, or ``pytorch_model.bin`` (needs torch). Keys map through
``jaxcls.mapping``; every shape is checked before its bytes are read.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import flax
import ml_dtypes
import numpy as np

from jaxcls.errors import UserError
from jaxcls.formats import hf_keys, model_dir
from jaxcls.model.qwen3 import Qwen3Config

DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16, "float16": np.float16}
# safetensors dtype codes of the floating-point tensors a Qwen3 checkpoint holds.
_ST_DTYPES = {"F32": np.float32, "BF16": ml_dtypes.bfloat16, "F16": np.float16, "F64": np.float64}
_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
_SINGLE = ("model.safetensors", "pytorch_model.bin")


def weight_files(hf_dir: Path) -> list[Path]:
    """The checkpoint's weight files: from an index (sharded) or the single file."""
    for index in _INDEXES:
        if (hf_dir / index).is_file():
            weight_map = json.loads((hf_dir / index).read_text()).get("weight_map", {})
            files = [hf_dir / f for f in sorted(set(weight_map.values()))]
            missing = [f.name for f in files if not f.is_file()]
            if missing:
                raise UserError(f"{hf_dir / index}: lists shards that are missing: {missing}")
            return files
    for single in _SINGLE:
        if (hf_dir / single).is_file():
            return [hf_dir / single]
    raise UserError(
        f"{hf_dir}: no weights found; expected model.safetensors, model.safetensors.index.json "
        "with its shards, or pytorch_model.bin"
    )


def _safetensors_header(path: Path) -> tuple[dict[str, Any], int]:
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        try:
            header = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise UserError(f"{path}: not a safetensors file (bad header)") from None
    header.pop("__metadata__", None)
    return header, 8 + n


def _read_safetensors(path: Path, select) -> Iterator[tuple[str, np.ndarray]]:
    """Tensors whose name ``select(name, shape)`` accepts, each read into one fresh array.

    The library's NumPy backend cannot return bfloat16 and its mmap keeps every touched page
    resident, so tensors are read with ``readinto`` straight into their final buffer.
    """
    header, start = _safetensors_header(path)
    with open(path, "rb") as f:
        for name, info in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]):
            shape = tuple(info["shape"])
            if not select(name, shape):
                continue
            dtype = _ST_DTYPES.get(info["dtype"])
            if dtype is None:
                raise UserError(f"{path}: tensor {name} has dtype {info['dtype']}; need a float")
            begin, end = info["data_offsets"]
            array = np.empty(shape, dtype)
            if array.nbytes != end - begin:
                raise UserError(f"{path}: tensor {name} has a corrupt size; re-download it")
            f.seek(start + begin)
            if f.readinto(array.reshape(-1).view(np.uint8)) != array.nbytes:
                raise UserError(f"{path}: truncated at tensor {name}; re-download it")
            yield name, array


def _read_torch(path: Path, select) -> Iterator[tuple[str, np.ndarray]]:
    try:
        import torch
    except ImportError:
        raise UserError(
            f"{path}: reading pytorch_model.bin needs torch; pip install torch, or convert the "
            "checkpoint to safetensors"
        ) from None
    state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    for name in list(state):
        tensor = state.pop(name)
        if not select(name, tuple(tensor.shape)):
            continue
        if tensor.dtype == torch.bfloat16:  # NumPy has no bfloat16: reinterpret the bits.
            yield name, tensor.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
        else:
            yield name, tensor.numpy()


def _num_labels(hf: dict[str, Any]) -> int | None:
    """Labels of a ``*ForSequenceClassification`` checkpoint; None for any other head."""
    if not any(a.endswith("ForSequenceClassification") for a in hf.get("architectures") or []):
        return None
    return len(hf["id2label"]) if hf.get("id2label") else int(hf.get("num_labels", 2))


def load_hf(
    hf_dir: str | os.PathLike, dtype: str | None = None
) -> tuple[Qwen3Config, dict[str, Any], dict[int, str] | None]:
    """(config, params as NumPy in our layout, id2label or None) from an HF Qwen3 dir.

    ``dtype`` None keeps the checkpoint's dtype, which must then be one for all tensors.
    """
    hf_dir = Path(hf_dir)
    config = Qwen3Config.from_hf(hf_dir)
    hf = json.loads((hf_dir / "config.json").read_text())
    num_labels = _num_labels(hf)
    table = {
        name: (path, shape, t) for name, path, shape, t in hf_keys.expected(config, num_labels)
    }
    target = DTYPES[dtype] if dtype else None
    flat: dict[str, np.ndarray] = {}
    unexpected: list[str] = []
    for file in weight_files(hf_dir):
        # Check names and shapes from the header, before reading any bytes.
        def select(name: str, shape: tuple[int, ...], file: Path = file) -> bool:
            if name not in table:
                if not hf_keys.is_skipped(name):
                    unexpected.append(name)
                return False
            want = table[name][1]
            if shape != want:
                raise UserError(
                    f"{file}: tensor {name} has shape {list(shape)}, expected {list(want)} "
                    f"from {hf_dir / 'config.json'}"
                )
            return True

        reader = _read_torch if file.suffix == ".bin" else _read_safetensors
        for name, array in reader(file, select):
            path, _, transform = table[name]
            if target is not None:
                array = array.astype(target, copy=False)
            flat[path] = transform.to_ours(array)
            del array  # a transposed tensor's source buffer goes before the next read
    if unexpected:
        raise UserError(
            f"{hf_dir}: tensors that a Qwen3 model does not have: {unexpected[:5]}"
            f"{' ...' if len(unexpected) > 5 else ''}; is this a plain Qwen3 checkpoint?"
        )
    missing = [name for name, (path, _, _) in table.items() if path not in flat]
    if missing:
        raise UserError(
            f"{hf_dir}: missing tensors {missing[:5]}{' ...' if len(missing) > 5 else ''} "
            f"({len(missing)} of {len(table)}); the checkpoint is incomplete"
        )
    _check_one_dtype(hf_dir, flat)
    id2label = None
    if num_labels is not None:
        raw = hf.get("id2label") or {i: f"LABEL_{i}" for i in range(num_labels)}
        id2label = {int(k): str(v) for k, v in raw.items()}
    return config, flax.traverse_util.unflatten_dict(flat, sep="/"), id2label


def _check_one_dtype(hf_dir: Path, flat: dict[str, np.ndarray]) -> None:
    names = sorted({a.dtype.name for a in flat.values()})
    if len(names) > 1 or names[0] not in DTYPES:
        raise UserError(
            f"{hf_dir}: tensors are stored as {names}; pass --dtype {'|'.join(DTYPES)} to pick one"
        )


def convert(hf_dir: str | os.PathLike, out: str | os.PathLike, dtype: str | None = None) -> Path:
    """Convert an HF Qwen3 dir into a jaxcls model dir at ``out`` (written atomically)."""
    model_dir.check_out_dir(Path(out))  # before the slow read, not only when writing
    config, params, id2label = load_hf(hf_dir, dtype)
    return model_dir.write_model(
        out, config, params, id2label, tokenizer_dir=hf_dir, source=str(Path(hf_dir).absolute())
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m jaxcls.convert", description="Convert a Hugging Face Qwen3 checkpoint."
    )
    parser.add_argument("--hf", required=True, help="Hugging Face Qwen3 model dir")
    parser.add_argument("--out", required=True, help="jaxcls model dir to create")
    parser.add_argument("--dtype", choices=sorted(DTYPES), help="param dtype; default: as stored")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of user errors")
    args = parser.parse_args(argv)
    logging.getLogger("absl").setLevel(logging.ERROR)  # Orbax's notes on its save layout
    try:
        out = convert(args.hf, args.out, args.dtype)
    except UserError as e:
        if args.debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    meta = json.loads((out / model_dir.META_FILE).read_text())
    labels = list((meta["id2label"] or {}).values())
    tokenizer = [f.name for f in model_dir.tokenizer_files(out)]
    print(f"wrote {out}: param_dtype {meta['param_dtype']}, labels {labels or 'none (base model)'}")
    print(f"tokenizer files: {tokenizer or 'none found in ' + str(args.hf)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
