"""peft LoRA adapter dirs in: read one into our layout, merge it (inference) or fit it to our
LoRA config (``lora.init_from``, from a peft dir or a jaxcls run dir). Writing is ``export``.

A peft adapter may give each module its own rank (``rank_pattern``) and alpha
(``alpha_pattern``) and adapt only some modules. ``read`` keeps that: each module carries its
own ``(A, B, scale)``. Inference merges each module with its own scale (``merge``). Training
(``lora.init_from``) needs our single ``lora.rank`` and scale, so ``fit`` folds the scale into
B (``B * scale_module / lora_scale``: the product ``scale * A @ B`` is unchanged) and pads a
smaller rank with fresh A columns and zero B rows (still no change; the extra directions can
learn). Key names go through ``jaxcls.mapping``.
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
import jax
import numpy as np

from jaxcls import lora, mapping
from jaxcls.convert import _read_safetensors, _read_torch
from jaxcls.errors import UserError

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
        from jaxcls.data import load_labels

        return load_labels(path / LABELS_FILE)
    if (path / "config.json").is_file():
        id2label = json.loads((path / "config.json").read_text()).get("id2label")
        if id2label:
            return [str(id2label[str(i)]) for i in range(len(id2label))]
    return None


def read(path: str | Path) -> Adapter:
    """A peft LoRA adapter dir (safetensors or .bin) in our layout, as float32 NumPy."""
    path = Path(path)
    config = _read_config(path)
    files = [path / f for f in WEIGHT_FILES if (path / f).is_file()]
    if not files:
        raise UserError(f"{path}: no {' or '.join(WEIGHT_FILES)}; the adapter is incomplete")
    reader = _read_torch if files[0].suffix == ".bin" else _read_safetensors
    flat, unknown = {}, []
    for name, array in reader(files[0], lambda name, shape: True):
        found = mapping.peft_to_ours(name)
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
        name = mapping.hf_module(module)
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


def _check(adapter: Adapter, flat: dict[str, Any]) -> None:
    """Every factor and whole tensor fits the model's params (the score may differ in labels)."""
    for module, (a, b, _) in adapter.lora.items():
        w = flat.get(f"{module}/kernel")
        if w is None or (a.shape[0], b.shape[1]) != np.shape(w):
            have = "none" if w is None else f"[{np.shape(w)[1]}, {np.shape(w)[0]}]"
            raise UserError(
                f"{adapter.source}: {mapping.hf_module(module)} has lora_B @ lora_A "
                f"[{b.shape[1]}, {a.shape[0]}] but the base model's weight is {have}; "
                f"{adapter.hint()}"
            )
    hidden = np.shape(flat["model/norm/weight"])[0]
    for path, value in adapter.tensors.items():
        # The score head may have other labels than the base's (or the base none).
        want = (hidden, value.shape[1]) if path == SCORE else np.shape(flat.get(path, ()))
        if value.shape != want:
            name, transform = mapping.ours_to_peft(path)
            raise UserError(
                f"{adapter.source}: {name} has shape {list(transform.shape(value.shape))}, which "
                f"does not fit the base model; {adapter.hint()}"
            )


def merge(params: Any, adapter: Adapter) -> Any:
    """Plain params: each kernel plus its ``scale * A @ B`` (float32), whole tensors replaced."""
    flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(params), sep="/")
    _check(adapter, flat)
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


def label_names(adapter: Adapter, num_labels: int, base: dict[int, str] | None) -> list[str]:
    """The adapter's labels, else the base's when their number fits, else LABEL_i."""
    for names in (adapter.labels, base and [base[i] for i in sorted(base)]):
        if names and len(names) == num_labels:
            return list(names)
    log.warning(
        "%s: no label names (labels.json, or id2label in a config.json); using LABEL_0..%d",
        adapter.source, num_labels - 1,
    )  # fmt: skip
    return [f"LABEL_{i}" for i in range(num_labels)]


def fit(adapter: Adapter, params: Any, cfg: lora.LoRAConfig, fresh: Any) -> Any:
    """Our adapters (``cfg``'s one rank and scale) equal to ``adapter``; other targets keep
    ``fresh`` (B = 0). The scale is folded into B, a smaller rank padded (see module doc)."""
    flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(params), sep="/")
    _check(adapter, flat)
    targets = set(lora.target_paths(params, cfg.targets))
    out = {k: np.array(v) for k, v in flax.traverse_util.flatten_dict(fresh, sep="/").items()}
    max_rank = max(a.shape[1] for a, _, _ in adapter.lora.values())
    if max_rank > cfg.rank:
        raise UserError(
            f"lora.init_from {adapter.source}: rank {max_rank} > lora.rank {cfg.rank}; "
            f"set --config.lora.rank={max_rank} (or more)"
        )
    for module, (a, b, scale) in adapter.lora.items():
        if module not in targets:
            raise UserError(
                f"lora.init_from {adapter.source}: adapts {mapping.hf_module(module)}, which "
                f"lora.targets {cfg.targets!r} does not match; widen lora.targets"
            )
        rank = a.shape[1]  # fresh A columns and zero B rows (lora.init) beyond it
        out[f"{module}/lora_a"][:, :rank] = a
        out[f"{module}/lora_b"][:rank] = b * np.float32(scale / cfg.scale)
    return flax.traverse_util.unflatten_dict(out, sep="/")


def fit_score(
    adapter: Adapter, label_names: list[str], base_labels: list[str] | None = None
) -> np.ndarray | None:
    """The adapter's score kernel with columns in ``label_names`` order (its labels, else the
    base's); None if it has none or its labels differ (the run then trains a fresh head)."""
    score = adapter.tensors.get(SCORE)
    if score is None:
        return None
    names = adapter.labels or (base_labels if len(base_labels or ()) == score.shape[1] else None)
    if names is None and score.shape[1] == len(label_names):
        log.warning(
            "%s: no label names; its score head is taken in labels.json order", adapter.source
        )
        return score
    if names is None or sorted(names) != sorted(label_names):
        log.info("%s has labels %s, the data %s: a new head is trained", adapter.source, names,
                 label_names)  # fmt: skip
        return None
    return score[:, [names.index(n) for n in label_names]]


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
    """A ``modeldir.LoadedModel`` of the base with the adapter merged, with labels."""
    from jaxcls import modeldir

    adapter = read(path)
    loaded = modeldir.read_model(base_dir(adapter, base), dtype)
    params = merge(loaded.params, adapter)
    labels = label_names(adapter, params["score"]["kernel"].shape[1], loaded.id2label)
    tokenizer_dir = Path(path) if modeldir.tokenizer_files(Path(path)) else loaded.tokenizer_dir
    return modeldir.LoadedModel(loaded.config, params, dict(enumerate(labels)), tokenizer_dir)


def from_run(workdir: str | Path, model_path: str) -> Adapter:
    """The adapters and score head of a jaxcls run's best checkpoint, as an ``Adapter``."""
    from jaxcls.evaluation import load_run  # evaluation imports session, which imports us

    run, step = load_run(Path(workdir), "best")
    source = f"{workdir} (step {step})"
    if run.train_base:
        raise UserError(
            f"lora.init_from {workdir}: that run also trained its random-init base "
            "(model.train_base), so its adapters fit only that base; export it with "
            "python -m jaxcls.export --format merged and use the result as model.path"
        )
    if run.cfg.model.path != model_path:
        log.warning("lora.init_from %s: trained on model.path %r, this run uses %r",
                    workdir, run.cfg.model.path, model_path)  # fmt: skip
    scale = lora.LoRAConfig.from_config(run.cfg.lora).scale
    flat = flax.traverse_util.flatten_dict(jax.device_get(run.trainable["adapters"]), sep="/")
    modules = sorted({k.rpartition("/")[0] for k in flat})
    factors = {m: (flat[f"{m}/lora_a"], flat[f"{m}/lora_b"], scale) for m in modules}
    score = np.asarray(run.trainable["params"]["score"]["kernel"], np.float32)
    return Adapter(source, factors, {SCORE: score}, run.label_names, run.cfg.model.path)


def init_from(
    source: str, params: Any, cfg: lora.LoRAConfig, fresh: Any, label_names: list[str],
    model_path: str, base_labels: list[str] | None,
) -> tuple[Any, np.ndarray | None]:  # fmt: skip
    """``lora.init_from``: (our adapters, score kernel or None) from a peft dir or a run dir;
    ``base_labels`` name the score's columns when the adapter does not."""
    if (Path(source) / "checkpoints").is_dir():
        adapter = from_run(source, model_path)
    elif Path(source).is_dir():
        adapter = read(source)
    else:
        raise UserError(f"lora.init_from {source}: no such peft adapter dir or jaxcls run dir")
    other = sorted(set(adapter.tensors) - {SCORE})
    if other:
        raise UserError(
            f"lora.init_from {source}: also holds whole tensors {other[:3]} (modules_to_save); "
            "jaxcls trains only LoRA adapters and the heads"
        )
    adapters = fit(adapter, params, cfg, fresh)
    log.info("lora.init_from %s: %d adapted modules", adapter.source, len(adapter.lora))
    return adapters, fit_score(adapter, label_names, base_labels)
