"""The jaxcls model dir: ``jaxcls_model.json`` + Orbax ``params/`` + tokenizer files.

``jaxcls_model.json`` holds ``{"format": "jaxcls-model", "version": 1, "qwen3": {...},
"id2label": {"0": ...} | null, "param_dtype": ..., "source": ...}``; ``id2label`` is null for
a base model without a ``score`` head. ``read_model`` also accepts a Hugging Face dir and
converts it in memory, so ``model.path`` may point at either.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path
from typing import Any

import flax
import jax
import numpy as np
import orbax.checkpoint as ocp

from jaxcls.errors import UserError
from jaxcls.files import atomic_dir
from jaxcls.formats import hf_keys
from jaxcls.formats.hf_dir import labels_in_order, load_hf
from jaxcls.model.qwen3 import Qwen3Config

FORMAT = "jaxcls-model"
VERSION = 1
META_FILE = "jaxcls_model.json"
PARAMS_DIR = "params"
CHUNK_BYTES = 64 << 20
# Tokenizer files of a Hugging Face model dir (fast and slow tokenizers, chat template).
TOKENIZER_GLOBS = (
    "tokenizer*",
    "vocab.*",
    "merges.txt",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.*",
)


@dataclasses.dataclass
class LoadedModel:
    """A model read from disk; ``params`` are host NumPy arrays in our tree layout."""

    config: Qwen3Config
    params: dict[str, Any]
    id2label: dict[int, str] | None
    tokenizer_dir: Path | None

    @property
    def labels(self) -> list[str] | None:
        """Label names in class-index order; None for a base model without a score head."""
        return None if self.id2label is None else labels_in_order(self.id2label, "id2label")


def tokenizer_files(src: Path) -> list[Path]:
    """The tokenizer files in a model dir, sorted."""
    return sorted({p for g in TOKENIZER_GLOBS for p in src.glob(g) if p.is_file()})


def dtype_name(params: dict[str, Any]) -> str:
    """The one dtype of all parameter leaves, e.g. ``bfloat16``."""
    names = {np.dtype(leaf.dtype).name for leaf in jax.tree_util.tree_leaves(params)}
    if len(names) != 1:
        raise ValueError(f"params mix dtypes {sorted(names)}; cast them to one dtype first")
    return names.pop()


def check_out_dir(out: Path) -> None:
    """Refuse to overwrite a non-empty output dir (checked before any slow work)."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out}: already exists and is not empty; remove it or pick another --out")


def write_model(
    out: str | os.PathLike,
    config: Qwen3Config,
    params: dict[str, Any],
    id2label: dict[int, str] | None,
    *,
    tokenizer_dir: str | os.PathLike | None,
    source: str,
) -> Path:
    """Write a model dir atomically: built in ``OUT.tmp-<pid>``, renamed when complete."""
    # Orbax needs absolute paths.
    out = Path(out).absolute()
    check_out_dir(out)
    with atomic_dir(out) as tmp:
        tmp.mkdir(parents=True)
        meta = {
            "format": FORMAT,
            "version": VERSION,
            "qwen3": config.to_dict(),
            "id2label": None if id2label is None else {str(k): v for k, v in id2label.items()},
            "param_dtype": dtype_name(params),
            "source": source,
        }
        _save_params(tmp / PARAMS_DIR, params)
        for f in tokenizer_files(Path(tokenizer_dir)) if tokenizer_dir else []:
            shutil.copy2(f, tmp / f.name)
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n")
    return out


def _checkpointer():
    """A synchronous Orbax PyTree checkpointer that does not copy host arrays.

    Orbax's defaults deep-copy every NumPy array before an async save and buffer the whole
    tree for OCDBT: converting Qwen3-1.7B peaked at 2.8x the model. Without the copy, with
    one file per array (no OCDBT) and 1 GB in flight, it peaks at about 1.2x.
    """
    handlers = ocp.type_handlers
    registry = handlers.create_type_handler_registry(
        (np.ndarray, handlers.NumpyHandler(deepcopy_host_arrays=False)),
        (jax.Array, handlers.ArrayHandler()),
    )
    handler = ocp.PyTreeCheckpointHandler(
        type_handler_registry=registry,
        save_concurrent_gb=1,
        restore_concurrent_gb=1,
        use_ocdbt=False,
    )
    return ocp.Checkpointer(handler)


def _save_params(path: Path, params: dict[str, Any]) -> None:
    # Chunks of at most 64 MiB keep the encoder's buffers small (and suit sharded reads).
    save_args = jax.tree_util.tree_map(lambda _: ocp.SaveArgs(chunk_byte_size=CHUNK_BYTES), params)
    with _checkpointer() as ckpt:
        ckpt.save(path, args=ocp.args.PyTreeSave(params, save_args=save_args))


def read_model(path: str | os.PathLike, dtype: str | None = None) -> LoadedModel:
    """Read our model dir, or convert a Hugging Face dir in memory; cast to ``dtype`` if set."""
    path = Path(path)
    if (path / META_FILE).is_file():
        return _read_ours(path, dtype)
    if (path / "config.json").is_file():
        config, params, id2label = load_hf(path, dtype)
        return LoadedModel(config, params, id2label, path if tokenizer_files(path) else None)
    if not path.exists():
        raise UserError(f"{path}: no such model dir; convert one with python -m jaxcls.convert")
    raise UserError(
        f"{path}: neither a jaxcls model dir ({META_FILE}) nor a Hugging Face model dir "
        "(config.json); point model.path at one of them"
    )


def _read_meta(path: Path) -> dict[str, Any]:
    file = path / META_FILE
    try:
        meta = json.loads(file.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{file}: not valid JSON ({e.msg} at line {e.lineno})") from None
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise UserError(
            f"{file}: format {meta.get('format')!r} version {meta.get('version')!r} is not "
            f"{FORMAT!r} version {VERSION}; reconvert the model with this jaxcls"
        )
    return meta


def _read_ours(path: Path, dtype: str | None) -> LoadedModel:
    meta = _read_meta(path)
    config = Qwen3Config.from_dict(meta["qwen3"])
    id2label = meta["id2label"]
    id2label = None if id2label is None else {int(k): v for k, v in id2label.items()}
    expected = hf_keys.expected_param_shapes(config, None if id2label is None else len(id2label))
    params_dir = (path / PARAMS_DIR).absolute()
    if not params_dir.is_dir():
        raise UserError(f"{params_dir}: missing; the model dir is incomplete, reconvert it")
    with _checkpointer() as ckpt:
        stored = flax.traverse_util.flatten_dict(
            ckpt.metadata(params_dir).item_metadata.tree, sep="/"
        )
        _check_shapes(params_dir, expected, {k: tuple(v.shape) for k, v in stored.items()})
        # Orbax does not check shapes on restore (hence above); it casts to the given dtype.
        restore = {
            k: ocp.RestoreArgs(restore_type=np.ndarray, dtype=np.dtype(dtype or stored[k].dtype))
            for k in expected
        }
        params = ckpt.restore(
            params_dir,
            args=ocp.args.PyTreeRestore(
                restore_args=flax.traverse_util.unflatten_dict(restore, sep="/")
            ),
        )
    return LoadedModel(config, params, id2label, path if tokenizer_files(path) else None)


def _check_shapes(
    where: Path, expected: dict[str, tuple[int, ...]], found: dict[str, tuple[int, ...]]
) -> None:
    missing = sorted(set(expected) - set(found))
    extra = sorted(set(found) - set(expected))
    if missing or extra:
        raise UserError(
            f"{where}: params do not match {META_FILE} (missing {missing[:5]}, "
            f"unexpected {extra[:5]}); reconvert the model"
        )
    for key, shape in expected.items():
        if found[key] != shape:
            raise UserError(
                f"{where}: param {key} has shape {list(found[key])}, expected {list(shape)} "
                f"from {META_FILE}; reconvert the model"
            )
