"""Hugging Face Qwen3 dirs: read one into our parameter layout, write a seq-cls one.

``load_hf`` reads ``config.json`` and ``model.safetensors``, sharded ``model-*.safetensors``
with ``model.safetensors.index.json``, or ``pytorch_model.bin`` (needs torch), one tensor at a
time; every name and shape is checked against the key table (``hf_keys``) before its bytes are
read. ``write_hf`` writes a ``Qwen3ForSequenceClassification`` dir through the same table.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import flax
import numpy as np

from jaxcls.data.tokenizer import pad_id
from jaxcls.errors import UserError
from jaxcls.formats import hf_keys
from jaxcls.formats.weight_files import Entry, read_weights, write_safetensors
from jaxcls.model.dtypes import DTYPES
from jaxcls.model.qwen3 import Qwen3Config

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

        for name, array in read_weights(file, select):
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


def labels_in_order(id2label: dict[int, str] | dict[str, str], where: str) -> list[str]:
    """Label names in class-index order from an ``id2label`` (int or string keys 0..C-1)."""
    by_index = {int(k): str(v) for k, v in id2label.items()}
    if sorted(by_index) != list(range(len(by_index))):
        raise UserError(f"{where}: id2label keys {sorted(by_index)} are not 0..{len(by_index) - 1}")
    return [by_index[i] for i in range(len(by_index))]


def _hf_entries(config: Qwen3Config, flat: dict[str, Any], num_labels: int, dtype) -> list[Entry]:
    def make(path: str, transform: hf_keys.Transform) -> Callable[[], np.ndarray]:
        return lambda: transform.to_hf(np.asarray(flat[path]).astype(DTYPES[dtype]))

    return [
        (name, shape, np.dtype(DTYPES[dtype]), make(path, t))
        for name, path, shape, t in hf_keys.expected(config, num_labels)
    ]


MULTI_LABEL = "multi_label_classification"  # transformers' problem_type: sigmoid per label


def problem_type(folder: Path) -> str | None:
    """The ``problem_type`` of ``folder/config.json`` (None when absent)."""
    path = Path(folder) / "config.json"
    return json.loads(path.read_text()).get("problem_type") if path.is_file() else None


def write_config(
    out: Path, config: Qwen3Config, labels: list[str], tokenizer: Any, dtype: str,
    problem: str | None = None,
) -> None:  # fmt: skip
    """``config.json`` of a ``Qwen3ForSequenceClassification`` with these labels: id2label,
    label2id (so num_labels) and the tokenizer's pad_token_id (batches of several texts);
    ``problem``: its ``problem_type`` (``MULTI_LABEL``: transformers applies the sigmoid)."""
    hf = config.to_hf() | {
        "id2label": {str(i): name for i, name in enumerate(labels)},
        "label2id": {name: i for i, name in enumerate(labels)},
        "pad_token_id": pad_id(tokenizer),
        "eos_token_id": tokenizer.eos_token_id,
        "dtype": dtype,
        "torch_dtype": dtype,  # the key transformers < 5 and older vLLM read
    }
    if problem:
        hf["problem_type"] = problem
    (out / "config.json").write_text(json.dumps(hf, indent=2, ensure_ascii=False) + "\n")


def write_hf(
    out: Path, config: Qwen3Config, params: Any, labels: list[str], tokenizer: Any, dtype: str,
    problem: str | None = None,
) -> None:  # fmt: skip
    """A ``Qwen3ForSequenceClassification`` dir: config.json, model.safetensors, tokenizer."""
    out.mkdir(parents=True, exist_ok=True)
    write_config(out, config, labels, tokenizer, dtype, problem)
    flat = flax.traverse_util.flatten_dict(params, sep="/")
    write_safetensors(out / "model.safetensors", _hf_entries(config, flat, len(labels), dtype))
    tokenizer.save_pretrained(out)
