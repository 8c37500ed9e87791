"""``lora.init_from``: start training from a peft adapter dir or a jaxcls run dir.

Training needs our single ``lora.rank`` and scale, while a peft adapter may give each module
its own. ``fit`` folds each module's scale into B (``B * scale_module / lora_scale``: the
product ``scale * A @ B`` is unchanged) and pads a smaller rank with fresh A columns and zero
B rows (still no change; the extra directions can learn).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import flax
import numpy as np

from jaxcls.errors import UserError
from jaxcls.formats import hf_keys, run_dir
from jaxcls.formats.peft_dir import SCORE, Adapter, check, read
from jaxcls.model import lora
from jaxcls.train import checkpoints, weight_average

log = logging.getLogger("jaxcls")


def fit(adapter: Adapter, params: Any, cfg: lora.LoRAConfig, fresh: Any) -> Any:
    """Our adapters (``cfg``'s one rank and scale) equal to ``adapter``; other targets keep
    ``fresh`` (B = 0). The scale is folded into B, a smaller rank padded (see module doc)."""
    flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(params), sep="/")
    check(adapter, flat)
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
                f"lora.init_from {adapter.source}: adapts {hf_keys.hf_module(module)}, which "
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


def from_run(workdir: str | Path, model_path: str) -> Adapter:
    """The adapters and score head of a jaxcls run's best checkpoint, as an ``Adapter``.

    Read straight from the checkpoint (no model is built): the run's ``config.json`` gives the
    LoRA scale and its base, ``labels.json`` the score head's columns.
    """
    workdir = Path(workdir)
    cfg = run_dir.read_config(workdir)
    if cfg.model.train_base and not cfg.model.path:
        raise UserError(
            f"lora.init_from {workdir}: that run also trained its random-init base "
            "(model.train_base), so its adapters fit only that base; export it with "
            "python -m jaxcls.export --format merged and use the result as model.path"
        )
    if cfg.model.path != model_path:
        log.warning("lora.init_from %s: trained on model.path %r, this run uses %r",
                    workdir, cfg.model.path, model_path)  # fmt: skip
    ckpts = checkpoints.open_checkpoints(workdir, cfg)
    step = ckpts.resolve("best")
    saved = ckpts.restore_as_saved(step)
    trainable = weight_average.averaged(saved["trainable"], saved["opt_state"], cfg.optim.ema)
    ckpts.close()
    scale = lora.LoRAConfig.from_config(cfg.lora).scale
    flat = flax.traverse_util.flatten_dict(trainable["adapters"], sep="/")
    modules = sorted({k.rpartition("/")[0] for k in flat})
    factors = {m: (flat[f"{m}/lora_a"], flat[f"{m}/lora_b"], scale) for m in modules}
    score = np.asarray(trainable["params"]["score"]["kernel"], np.float32)
    labels = run_dir.load_labels(workdir / run_dir.LABELS)
    return Adapter(f"{workdir} (step {step})", factors, {SCORE: score}, labels, cfg.model.path)


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
