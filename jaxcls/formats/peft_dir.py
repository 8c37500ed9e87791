"""peft LoRA adapter dirs: read one into our layout and merge it for inference, or write one.
Starting training from one is ``jaxcls.train.warmstart``.

A peft adapter may give each module its own rank (``rank_pattern``) and alpha
(``alpha_pattern``) and adapt only some modules. ``read`` keeps that: each module carries its
own ``(A, B, scale)``, and ``merge`` adds each module with its own scale. Key names go through
``jaxcls.mapping``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import re
from pathlib import Path
from typing import Any

import flax
import numpy as np

from jaxcls.errors import UserError
from jaxcls.formats import hf_keys, model_dir
from jaxcls.formats.hf_dir import labels_in_order
from jaxcls.formats.run_dir import load_labels
from jaxcls.formats.weight_files import read_weights, write_safetensors
from jaxcls.model import lora

log = logging.getLogger("jaxcls")

CONFIG_FILE = "adapter_config.json"
WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")
LABELS_FILE = "labels.json"
SCORE = "score/kernel"
# adapter_config.json settings that change what the adapter computes beyond plain LoRA.
_UNSUPPORTED = ("use_dora", "lora_bias", "layer_replication", "trainable_token_indices")


@dataclasses.dataclass
class Adapter:
    """LoRA factors in our layout, each module with its own scale, and whole tensors."""

    source: str
    lora: dict[str, tuple[np.ndarray, np.ndarray, float]]  # module -> (A [in, r], B [r, out], s)
    tensors: dict[str, np.ndarray]  # our param path -> value (peft's modules_to_save)
    labels: list[str] | None
    base: str | None  # base_model_name_or_path

    def hint(self) -> str:
        return f"it was made for another model (base_model_name_or_path: {self.base!r})"


def is_adapter_dir(path: str | Path) -> bool:
    return (Path(path) / CONFIG_FILE).is_file()


def _read_config(path: Path) -> dict[str, Any]:
    file = path / CONFIG_FILE
    if not file.is_file():
        raise UserError(f"{path}: no {CONFIG_FILE}; point at a peft LoRA adapter dir")
    try:
        config = json.loads(file.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{file}: not valid JSON ({e.msg} at line {e.lineno})") from None
    if config.get("peft_type") != "LORA":
        raise UserError(f"{file}: peft_type {config.get('peft_type')!r}; jaxcls reads LORA only")
    for key in _UNSUPPORTED:
        if config.get(key):
            raise UserError(f"{file}: {key}={config[key]!r} is not supported; plain LoRA only")
    if config.get("bias", "none") != "none":
        raise UserError(f"{file}: bias={config['bias']!r} is not supported; use bias='none'")
    return config


def _pattern_value(patterns: dict[str, Any], module: str, default: Any) -> Any:
    """peft's ``rank_pattern``/``alpha_pattern`` lookup: the first key matching a name suffix."""
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def _read_labels(path: Path) -> list[str] | None:
    """Label names saved with the adapter: our labels.json, or a config.json's id2label."""
    if (path / LABELS_FILE).is_file():
        return load_labels(path / LABELS_FILE)
    if (path / "config.json").is_file():
        id2label = json.loads((path / "config.json").read_text()).get("id2label")
        if id2label:
            return labels_in_order(id2label, str(path / "config.json"))
    return None


def read(path: str | Path) -> Adapter:
    """A peft LoRA adapter dir (safetensors or .bin) in our layout, as float32 NumPy."""
    path = Path(path)
    config = _read_config(path)
    files = [path / f for f in WEIGHT_FILES if (path / f).is_file()]
    if not files:
        raise UserError(f"{path}: no {' or '.join(WEIGHT_FILES)}; the adapter is incomplete")
    flat, unknown = {}, []
    for name, array in read_weights(files[0]):
        found = hf_keys.peft_to_ours(name)
        if found is None:
            unknown.append(name)
        else:
            flat[found[0]] = found[1].to_ours(np.asarray(array, np.float32))
    adapter = Adapter(str(path), {}, {}, _read_labels(path), config.get("base_model_name_or_path"))
    if unknown:
        raise UserError(
            f"{files[0]}: tensors that a Qwen3 model does not have, e.g. {unknown[:3]}; "
            f"{adapter.hint()}"
        )
    modules = sorted({k.rpartition("/")[0] for k in flat if k.endswith(("/lora_a", "/lora_b"))})
    for module in modules:
        a, b = flat.pop(f"{module}/lora_a", None), flat.pop(f"{module}/lora_b", None)
        name = hf_keys.hf_module(module)
        if a is None or b is None or a.shape[1] != b.shape[0]:
            raise UserError(f"{files[0]}: {name} needs lora_A [r, in] and lora_B [out, r]")
        rank = a.shape[1]
        alpha = _pattern_value(config.get("alpha_pattern") or {}, name, config["lora_alpha"])
        scale = alpha / (math.sqrt(rank) if config.get("use_rslora") else rank)
        adapter.lora[module] = (a, b, float(scale))
    adapter.tensors = flat
    if not adapter.lora:
        raise UserError(f"{files[0]}: no LoRA weights (lora_A/lora_B) in the adapter")
    return adapter


def check(adapter: Adapter, flat: dict[str, Any]) -> None:
    """Every factor and whole tensor fits the model's params (the score may differ in labels)."""
    for module, (a, b, _) in adapter.lora.items():
        w = flat.get(f"{module}/kernel")
        if w is None or (a.shape[0], b.shape[1]) != np.shape(w):
            have = "none" if w is None else f"[{np.shape(w)[1]}, {np.shape(w)[0]}]"
            raise UserError(
                f"{adapter.source}: {hf_keys.hf_module(module)} has lora_B @ lora_A "
                f"[{b.shape[1]}, {a.shape[0]}] but the base model's weight is {have}; "
                f"{adapter.hint()}"
            )
    hidden = np.shape(flat["model/norm/weight"])[0]
    for path, value in adapter.tensors.items():
        # The score head may have other labels than the base's (or the base none).
        want = (hidden, value.shape[1]) if path == SCORE else np.shape(flat.get(path, ()))
        if value.shape != want:
            name, transform = hf_keys.ours_to_peft(path)
            raise UserError(
                f"{adapter.source}: {name} has shape {list(transform.shape(value.shape))}, which "
                f"does not fit the base model; {adapter.hint()}"
            )


def merge(params: Any, adapter: Adapter) -> Any:
    """Plain params: each kernel plus its ``scale * A @ B`` (float32), whole tensors replaced."""
    flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(params), sep="/")
    check(adapter, flat)
    dtype = np.dtype(flat["model/norm/weight"].dtype)
    for module, (a, b, scale) in adapter.lora.items():
        w = flat[f"{module}/kernel"]
        flat[f"{module}/kernel"] = (np.asarray(w, np.float32) + scale * (a @ b)).astype(w.dtype)
    for path, value in adapter.tensors.items():
        flat[path] = value.astype(dtype)
    if SCORE not in flat:
        raise UserError(
            f"{adapter.source}: no score head (base_model.model.score.weight, peft's "
            "modules_to_save), and the base model has none; save the adapter with "
            "modules_to_save=['score'] (task_type SEQ_CLS)"
        )
    return flax.traverse_util.unflatten_dict(flat, sep="/")


def label_names(adapter: Adapter, num_labels: int, base: list[str] | None) -> list[str]:
    """The adapter's labels, else the base's when their number fits, else LABEL_i."""
    for names in (adapter.labels, base):
        if names and len(names) == num_labels:
            return list(names)
    log.warning(
        "%s: no label names (labels.json, or id2label in a config.json); using LABEL_0..%d",
        adapter.source, num_labels - 1,
    )  # fmt: skip
    return [f"LABEL_{i}" for i in range(num_labels)]


def base_dir(adapter: Adapter, base: str | Path | None) -> Path:
    """``base``, else the adapter's ``base_model_name_or_path`` when that is a local dir."""
    if base:
        return Path(base)
    if adapter.base and Path(adapter.base).is_dir():
        return Path(adapter.base)
    raise UserError(
        f"{adapter.source}: its base_model_name_or_path {adapter.base!r} is not a local dir; "
        "pass the base model dir (--base MODEL_DIR)"
    )


def load_merged(path: str | Path, base: str | Path | None = None, dtype: str | None = None):
    """A ``model_dir.LoadedModel`` of the base with the adapter merged, with labels."""

    adapter = read(path)
    loaded = model_dir.read_model(base_dir(adapter, base), dtype)
    params = merge(loaded.params, adapter)
    labels = label_names(adapter, params["score"]["kernel"].shape[1], loaded.labels)
    tokenizer_dir = Path(path) if model_dir.tokenizer_files(Path(path)) else loaded.tokenizer_dir
    return model_dir.LoadedModel(loaded.config, params, dict(enumerate(labels)), tokenizer_dir)


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


def write(
    out: Path,
    adapters: Any,
    score: np.ndarray,
    lora_cfg: lora.LoRAConfig,
    base_params: Any,
    labels: list[str],
    tokenizer: Any,
    base_name: str | None,
) -> None:
    """adapter_config.json, adapter_model.safetensors (LoRA factors, score), labels, tokenizer.

    ``base_params`` is any tree with the base's kernels (for ``target_modules``).
    """
    out.mkdir(parents=True, exist_ok=True)
    flat_adapters = flax.traverse_util.flatten_dict(adapters, sep="/")
    entries = []
    for path, value in {**flat_adapters, SCORE: score}.items():
        name, transform = hf_keys.ours_to_peft(path)
        array = np.asarray(value)
        entries.append(
            (name, array.shape[::-1], array.dtype, lambda a=array, t=transform: t.to_hf(a))
        )
    write_safetensors(out / WEIGHT_FILES[0], sorted(entries, key=lambda e: e[0]))
    modules = sorted({k.rpartition("/")[0] for k in flat_adapters})
    config = {
        "peft_type": "LORA",
        "task_type": "SEQ_CLS",
        "base_model_name_or_path": base_name,
        "r": lora_cfg.rank,
        "lora_alpha": lora_cfg.alpha,
        "lora_dropout": lora_cfg.dropout,
        "use_rslora": lora_cfg.rslora,
        "target_modules": _target_modules(modules, base_params),
        "modules_to_save": ["score"],
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
        "init_lora_weights": True,
        "rank_pattern": {},
        "alpha_pattern": {},
    }
    (out / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    (out / LABELS_FILE).write_text(json.dumps(labels, ensure_ascii=False) + "\n")
    tokenizer.save_pretrained(out)
