"""Load, override, check and save configs (the keys live in configs/default.py)."""

import difflib
import importlib.util
import json
import math
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import ml_collections

from jaxcls.errors import UserError

_CHOICES = {
    "model.preset": ("demo", "tiny"),
    "model.dtype": ("float32", "bfloat16", "float16"),
    "model.param_dtype": ("float32", "bfloat16", "float16"),
    "model.pooling": ("last", "mean"),
    "model.problem": ("single_label", "multi_label"),
    "model.quantize": ("none", "int8"),
    "model.tokenizer": ("data", "qwen"),
    "loss.classification": ("focal", "ce"),
    "contrastive.loss": ("none", "simple", "focal", "margin"),
    "contrastive.scope": ("global", "local"),
    "contrastive.schedule": ("constant", "linear", "cosine", "uncertainty"),
    "contrastive.temperature_schedule": ("constant", "cosine", "learnable"),
    "data.sampler": ("random", "balanced"),
    "data.long_text": ("auto", "truncate", "head_tail", "windows"),
    "train.best_mode": ("max", "min"),
}
_POSITIVE = (
    "model.hidden_size model.num_layers model.num_heads model.num_kv_heads model.head_dim "
    "model.intermediate_size lora.rank lora.alpha contrastive.temperature "
    "contrastive.base_temperature contrastive.temperature_end contrastive.temperature_min "
    "contrastive.temperature_max pretrain.lr data.max_length data.min_bucket_batches "
    "optim.accumulate train.batch_size "
    "train.eval_batch_size train.log_every train.keep_best train.max_bad_steps mesh.fsdp "
    "train.evals_per_epoch"
).split()
_NON_NEGATIVE = (
    "model.projection_dim loss.focal_gamma contrastive.weight contrastive.focal_gamma "
    "contrastive.margin contrastive.warmup_steps contrastive.ramp_steps data.max_train_samples "
    "optim.lr optim.weight_decay optim.warmup_steps optim.grad_clip train.epochs train.max_steps "
    "train.eval_every train.save_every train.patience distributed.num_processes "
    "eval.max_tsne_points data.window_stride pretrain.epochs pretrain.max_tokens"
).split()
_BELOW_ONE = (
    "lora.dropout",
    "loss.label_smoothing",
    "optim.warmup_ratio",
    "data.token_dropout",
    "optim.ema",
)
# What a multi-label validation logs (the rest of VALIDATION_METRICS are single-label's).
MULTI_LABEL_METRICS = ("loss", "macro_f1", "micro_f1", "subset_accuracy")
# What a validation logs (jaxcls.eval.scoring computes them); train.best_metric names one.
VALIDATION_METRICS = (
    "loss",
    "accuracy",
    "macro_f1",
    "weighted_f1",
    "micro_f1",
    "subset_accuracy",
    "intra_sim",
    "inter_sim",
    "sim_gap",
    "silhouette",
)


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
    """Runs `get_config()` from a config file and applies `key=value` overrides.

    The result is locked, as with `config_flags(lock_config=True)`: existing keys can change
    (type-checked), new keys cannot be added. Overrides may carry a `--config.` prefix.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file {path} not found; pass a file such as configs/margin.py")
    spec = importlib.util.spec_from_file_location(f"jaxcls_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise UserError(f"config file {path} has no get_config() function")
    cfg = module.get_config()
    cfg.lock()
    for override in overrides:
        key, sep, value = override.removeprefix("--").removeprefix("config.").partition("=")
        if not sep:
            raise UserError(f"config override {override!r} is not key=value")
        set_value(cfg, key.strip(), value)
    return cfg


def set_value(cfg: ml_collections.ConfigDict, key: str, text: str) -> None:
    """Sets dotted `key` from its command-line text, parsed to the key's declared type."""
    old = _lookup(cfg, key)
    if isinstance(old, ml_collections.ConfigDict):
        raise UserError(f"config key '{key}' is a group; set one of its keys, e.g. {key}.<name>")
    value = _parse(key, type(old), text)
    *parents, leaf = key.split(".")
    node = cfg
    for part in parents:
        node = node[part]
    node[leaf] = value


def flat_keys(cfg: ml_collections.ConfigDict, prefix: str = "") -> Iterator[str]:
    """Yields every leaf key as a dotted path (ConfigDict iterates keys sorted)."""
    for name, value in cfg.items():
        if isinstance(value, ml_collections.ConfigDict):
            yield from flat_keys(value, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}"


def _lookup(cfg: ml_collections.ConfigDict, key: str) -> Any:
    node: Any = cfg
    for part in key.split("."):
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
            raise UserError(_unknown_key_message(cfg, key))
        node = node[part]
    return node


def _unknown_key_message(cfg: ml_collections.ConfigDict, key: str) -> str:
    close = difflib.get_close_matches(key, list(flat_keys(cfg)), n=1, cutoff=0.6)
    hint = f"did you mean '{close[0]}'?" if close else "the keys are listed in configs/default.py"
    return f"unknown config key '{key}'; {hint}"


def _parse(key: str, kind: type, text: str) -> Any:
    text = text.strip()
    try:
        if kind is bool:
            lowered = text.lower()
            if lowered not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(text)
            return lowered in ("true", "1", "yes")
        if kind in (int, float, str):
            return kind(text)
    except ValueError:
        pass
    raise UserError(f"config key '{key}' expects {kind.__name__}, got {text!r}")


def validate_config(cfg: ml_collections.ConfigDict) -> None:
    """Checks choices, ranges and cross-key rules; raises UserError naming the key."""
    for key, choices in _CHOICES.items():
        value = _lookup(cfg, key)
        if value not in choices:
            raise UserError(f"config key '{key}' is {value!r}; choose one of: {', '.join(choices)}")
    for key in _POSITIVE:
        _check(cfg, key, lambda v: v > 0, "must be > 0")
    for key in _NON_NEGATIVE:
        _check(cfg, key, lambda v: v >= 0, "must be >= 0")
    for key in _BELOW_ONE:
        _check(cfg, key, lambda v: 0 <= v < 1, "must be in [0, 1)")
    _check(
        cfg, "model.vocab_size", lambda v: v == 0 or v >= 512,
        "must be 0 (from the data) or >= 512 (256 bytes + merges)",
    )  # fmt: skip
    # A pretrained model's depth is known only once loaded; the session checks it then.
    layers = cfg.model.num_layers
    if not cfg.model.path and not -(layers + 1) <= cfg.model.feature_layer <= layers:
        raise UserError(
            f"config key 'model.feature_layer' is {cfg.model.feature_layer} but the model has "
            f"{layers} layers; use -1 (final) or an index of HF hidden_states, 0..{layers}"
        )
    if cfg.model.quantize != "none" and cfg.model.train_base and not cfg.model.path:
        raise UserError(
            f"config key 'model.quantize' is {cfg.model.quantize!r}, which quantizes a frozen "
            "base, but model.train_base trains the random-init base; set model.train_base=false"
        )
    if cfg.model.num_heads % cfg.model.num_kv_heads:
        raise UserError("config key 'model.num_kv_heads' must divide model.num_heads")
    if not re.fullmatch(r"all|\d+(,\d+)*", cfg.devices.replace(" ", "")):
        raise UserError(f"config key 'devices' is {cfg.devices!r}; use 'all' or ids like '0,1,2,3'")
    try:
        re.compile(cfg.lora.targets)
    except re.error as e:
        raise UserError(f"config key 'lora.targets' is not a valid regex: {e}") from None
    parse_focal_alpha(cfg.loss.focal_alpha, None)
    if cfg.data.window_stride > cfg.data.max_length:
        raise UserError(
            f"config key 'data.window_stride' is {cfg.data.window_stride}; use 0 (max_length // 2)"
            f" or a step in [1, data.max_length={cfg.data.max_length}]"
        )
    if cfg.data.template and "{text}" not in cfg.data.template:
        raise UserError("config key 'data.template' must contain the placeholder {text}")
    _check_contrastive(cfg.contrastive)
    _check_train(cfg)
    _check_problem(cfg)
    parse_loggers(cfg.train.loggers)
    parse_split(cfg.data.split)
    if cfg.data.split and not cfg.data.train:
        raise UserError("config key 'data.split' splits data.train; set data.train to your file")
    if cfg.data.split and (cfg.data.val or cfg.data.test):
        raise UserError(
            "config key 'data.split' makes the validation and test sets from data.train; leave "
            "data.val and data.test empty, or data.split empty to use them"
        )


def _check(cfg: ml_collections.ConfigDict, key: str, ok: Any, rule: str) -> None:
    value = _lookup(cfg, key)
    if not ok(value) or (isinstance(value, float) and not math.isfinite(value)):
        raise UserError(f"config key '{key}' is {value!r}; it {rule}")


def _check_contrastive(con: ml_collections.ConfigDict) -> None:
    if con.schedule in ("linear", "cosine") and con.ramp_steps == 0:
        raise UserError(
            f"config key 'contrastive.schedule' is {con.schedule!r}, which ramps the weight over "
            "contrastive.ramp_steps; set contrastive.ramp_steps > 0"
        )
    if con.temperature_min >= con.temperature_max:
        raise UserError("config key 'contrastive.temperature_min' must be < temperature_max")
    if con.temperature_schedule == "learnable" and not (
        con.temperature_min <= con.temperature <= con.temperature_max
    ):
        raise UserError(
            f"config key 'contrastive.temperature' is {con.temperature}; a learnable temperature "
            f"starts inside [temperature_min, temperature_max] = "
            f"[{con.temperature_min}, {con.temperature_max}]"
        )


def _check_train(cfg: ml_collections.ConfigDict) -> None:
    known = [f"val/{name}" for name in VALIDATION_METRICS]
    if cfg.train.best_metric not in known:
        raise UserError(
            f"config key 'train.best_metric' is {cfg.train.best_metric!r}; use one of: "
            f"{', '.join(known)}"
        )
    dist = cfg.distributed
    if dist.num_processes > 0 and not -1 <= dist.process_id < dist.num_processes:
        raise UserError(
            f"config key 'distributed.process_id' is {dist.process_id}; use -1 (auto) or "
            f"0..{dist.num_processes - 1}"
        )


def is_multi_label(cfg: ml_collections.ConfigDict) -> bool:
    """``model.problem`` is multi_label (a run dir written before the key is single-label)."""
    return cfg.model.get("problem", "single_label") == "multi_label"


def label_columns(data: ml_collections.ConfigDict) -> list[str]:
    """The names of ``data.label_columns`` ([] when unset or written before the key)."""
    return [name.strip() for name in data.get("label_columns", "").split(",") if name.strip()]


def _check_problem(cfg: ml_collections.ConfigDict) -> None:
    """Key combinations that a single- or multi-label run cannot use."""
    data, columns = cfg.data, label_columns(cfg.data)
    if not is_multi_label(cfg):
        for key in ("label_sep", "label_columns"):
            if data[key]:
                raise UserError(
                    f"config key 'data.{key}' reads several labels per row; set "
                    "model.problem=multi_label, or leave it empty"
                )
        return
    if not data.label_sep and not columns:
        raise UserError(
            "model.problem=multi_label reads label sets: set data.label_sep (e.g. '|' for "
            "'billing|refund' cells) or data.label_columns (names of 0/1 columns)"
        )
    if columns and data.label_column:
        raise UserError(
            "config keys 'data.label_columns' and 'data.label_column' both name labels; keep one"
        )
    if len(set(columns)) != len(columns):
        raise UserError(f"config key 'data.label_columns' repeats a name: {data.label_columns!r}")
    rules = {
        "data.sampler": (
            data.sampler == "balanced",
            "draws classes of one label per row; use random",
        ),
        "contrastive.loss": (
            cfg.contrastive.loss in ("focal", "margin"),
            "has no multi-label form; use simple (Jaccard-weighted SupCon) or none",
        ),
        "loss.label_smoothing": (cfg.loss.label_smoothing > 0, "is single-label only; use 0"),
        "train.best_metric": (
            cfg.train.best_metric.removeprefix("val/") not in MULTI_LABEL_METRICS,
            "is not logged by a multi-label validation; use one of: "
            + ", ".join(f"val/{m}" for m in MULTI_LABEL_METRICS),
        ),
    }
    for key, (bad, why) in rules.items():
        if bad:
            raise UserError(f"config key '{key}' is {_lookup(cfg, key)!r}, which {why}")
    alpha = cfg.loss.focal_alpha.strip()
    if alpha == "balanced" or any(a > 1 for a in parse_focal_alpha(alpha, None) or []):
        raise UserError(
            f"config key 'loss.focal_alpha' is {alpha!r}; multi-label alpha weighs each label's "
            "positives by alpha and negatives by 1 - alpha: give numbers in (0, 1], one per label "
            "(labels.json order)"
        )


LOGGERS = ("jsonl", "tensorboard", "wandb")


def parse_loggers(spec: str) -> list[str]:
    """The loggers of ``train.loggers``; metrics.jsonl is always written (resume reads it)."""
    names = [name.strip() for name in spec.split(",") if name.strip()]
    unknown = [name for name in names if name not in LOGGERS]
    if unknown:
        raise UserError(
            f"config key 'train.loggers' names {', '.join(map(repr, unknown))}; use a "
            f"comma-separated list of: {', '.join(LOGGERS)}"
        )
    return ["jsonl"] + [name for name in dict.fromkeys(names) if name != "jsonl"]


def parse_split(spec: str) -> list[float]:
    """The fractions of ``data.split`` ("0.8,0.1,0.1" = train, val, test; "0.9,0.1" = train,
    val); [] when empty."""
    if not spec.strip():
        return []
    try:
        parts = [float(part) for part in spec.split(",")]
    except ValueError:
        parts = []
    if len(parts) not in (2, 3) or not all(0 < p < 1 for p in parts) or abs(sum(parts) - 1) > 1e-6:
        raise UserError(
            f"config key 'data.split' is {spec!r}; give 2 or 3 fractions in (0, 1) that sum to "
            '1: train,val ("0.9,0.1") or train,val,test ("0.8,0.1,0.1")'
        )
    return parts


def parse_focal_alpha(spec: str, class_counts: Sequence[int] | None) -> list[float] | None:
    """Per-class focal alpha from `loss.focal_alpha`: None, inverse frequency, or the listed floats.

    "balanced" gives alpha_c = n / (C * n_c). With `class_counts=None` only the syntax is checked.
    """
    spec = spec.strip()
    if not spec:
        return None
    if spec == "balanced":
        if class_counts is None:
            return None
        total = sum(class_counts)
        return [total / (len(class_counts) * max(n, 1)) for n in class_counts]
    try:
        alpha = [float(part) for part in spec.split(",")]
    except ValueError:
        alpha = []
    if not alpha or any(not (a > 0 and math.isfinite(a)) for a in alpha):
        raise UserError(
            f"config key 'loss.focal_alpha' is {spec!r}; use '', 'balanced' or positive floats, "
            "one per class, like '0.25,0.75'"
        )
    if class_counts is not None and len(alpha) != len(class_counts):
        raise UserError(
            f"config key 'loss.focal_alpha' lists {len(alpha)} weights but there are "
            f"{len(class_counts)} classes (labels.json order)"
        )
    return alpha


def resolve_workdir(cfg: ml_collections.ConfigDict) -> Path:
    """The run directory: `workdir`, or runs/<name> when it is empty."""
    return Path(cfg.workdir) if cfg.workdir else Path("runs") / cfg.name


def config_to_json(cfg: ml_collections.ConfigDict) -> str:
    """The resolved config as indented JSON, for config.json in the run directory."""
    return json.dumps(cfg.to_dict(), indent=2, ensure_ascii=False) + "\n"


# Keys whose default is not what a run made before the key existed did: such a run reads these.
BEFORE_THE_KEY = {"optim": {"ema": 0.0}}  # no weight average was kept


def config_from_json(
    text: str, defaults: ml_collections.ConfigDict | None = None
) -> ml_collections.ConfigDict:
    """The inverse of config_to_json; the result is locked.

    ``defaults``: a config whose keys missing from ``text`` are filled in (a run's
    config.json written before those keys existed reads as if it had their defaults, or the
    ``BEFORE_THE_KEY`` value where the default changed what a run does).
    """
    saved = json.loads(text)
    if defaults is not None:
        saved = _with_missing(saved, _with_missing(BEFORE_THE_KEY, defaults.to_dict()))
    cfg = ml_collections.ConfigDict(saved)
    cfg.lock()
    return cfg


def _with_missing(saved: dict, defaults: dict) -> dict:
    merged = dict(saved)
    for key, value in defaults.items():
        if key not in merged:
            merged[key] = value
        elif isinstance(value, dict) and isinstance(merged[key], dict):
            merged[key] = _with_missing(merged[key], value)
    return merged
