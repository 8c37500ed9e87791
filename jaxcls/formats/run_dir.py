"""The run directory: config.json, labels.json, metrics.jsonl, calibration.json,
thresholds.json (multi-label), checkpoints/, and runs/LATEST."""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ml_collections

from jaxcls import config_files
from jaxcls.config import config_from_json, load_config
from jaxcls.errors import UserError
from jaxcls.files import write_text_atomic

CONFIG = "config.json"
LABELS = "labels.json"
METRICS = "metrics.jsonl"
CALIBRATION = "calibration.json"
LATEST = "LATEST"
THRESHOLDS = "thresholds.json"

log = logging.getLogger("jaxcls")


def mark_latest(workdir: Path) -> None:
    """Record ``workdir`` in ``<parent>/LATEST`` so eval.py and predict.py find it."""
    write_text_atomic(workdir.parent / LATEST, str(workdir.absolute()) + "\n")


def find_run(workdir: str | None, runs_root: str = "runs") -> Path:
    """``workdir`` if given, else the run named by ``runs/LATEST``."""
    if workdir:
        path = Path(workdir)
        if not path.is_dir():
            raise UserError(f"--workdir {path}: no such run directory")
        return path
    latest = Path(runs_root) / LATEST
    if not latest.is_file():
        raise UserError(f"no {latest}; train first or pass --workdir RUN_DIR")
    path = Path(latest.read_text(encoding="utf-8").strip())
    if not path.is_dir():
        raise UserError(f"{latest} names {path}, which does not exist; pass --workdir RUN_DIR")
    return path


def read_config(workdir: Path) -> ml_collections.ConfigDict:
    """The resolved config a run was trained with (its ``config.json``), locked."""
    path = workdir / CONFIG
    if not path.is_file():
        raise UserError(f"{workdir}: no {CONFIG}; is this a jaxcls run directory?")
    # Keys added to configs/default.py since the run was made read as their defaults.
    defaults = load_config(config_files.find("default"))
    return config_from_json(path.read_text(encoding="utf-8"), defaults)


def split_ckpt(workdir: str | None, ckpt: str) -> tuple[Path, str]:
    """(run dir, checkpoint name) from ``--workdir``/``runs/LATEST`` and ``--ckpt``.

    ``--ckpt`` may also be a path to a checkpoint step dir (``runs/x/checkpoints/120``).
    """
    path = Path(ckpt)
    if path.name.isdigit() and path.parent.name == "checkpoints" and path.is_dir():
        return path.parent.parent, path.name
    return find_run(workdir), ckpt


def save_labels(path: str | os.PathLike, names: Sequence[str]) -> None:
    """Write ``labels.json``: a JSON list of the label strings, index = class id (atomic)."""
    write_text_atomic(path, json.dumps(list(names), ensure_ascii=False, indent=1) + "\n")


def load_labels(path: str | os.PathLike) -> list[str]:
    """Read a ``labels.json`` written by :func:`save_labels`."""
    path = Path(path)
    try:
        names = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: cannot read the label list ({type(e).__name__}: {e})") from e
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise UserError(f"{path}: expected a JSON list of label strings")
    return names


def save_calibration(workdir: Path, record: dict[str, Any]) -> None:
    """Write ``calibration.json`` (atomic): ``temperature`` and ``checkpoint_step`` at least."""
    text = json.dumps(record, indent=1, ensure_ascii=False) + "\n"
    write_text_atomic(workdir / CALIBRATION, text)


def load_temperature(workdir: Path, step: int) -> float | list[float] | None:
    """The temperature fitted on checkpoint ``step`` of the run (a multi-label run: one per
    label, in labels.json order); None (uncalibrated) when the run has none, or one fitted on
    another checkpoint (logged)."""
    path = Path(workdir) / CALIBRATION
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        value, fitted_on = record["temperature"], int(record["checkpoint_step"])
        temperature = [float(t) for t in value] if isinstance(value, list) else float(value)
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise UserError(f"{path}: not a calibration file ({type(e).__name__}: {e})") from None
    if fitted_on != step:
        log.warning(
            "%s: the temperature was fitted on checkpoint %d, not %d; probabilities are "
            "uncalibrated", path, fitted_on, step,
        )  # fmt: skip
        return None
    values = temperature if isinstance(temperature, list) else [temperature]
    if not all(math.isfinite(t) and t > 0 for t in values):
        raise UserError(f"{path}: temperature {value} is not a positive number (or a list of them)")
    if isinstance(temperature, list):
        labels = load_labels(Path(workdir) / LABELS)
        if len(temperature) != len(labels):
            raise UserError(
                f"{path}: {len(temperature)} temperatures for {len(labels)} labels; delete the "
                "file (probabilities are then uncalibrated)"
            )
    return temperature


def check_labels(workdir: Path, label_names: list[str]) -> None:
    """A run dir keeps its label map: resuming with other labels is an error."""
    path = workdir / LABELS
    if path.is_file() and load_labels(path) != label_names:
        raise UserError(
            f"{path} has labels {load_labels(path)} but the training file gives "
            f"{label_names}; train into a new workdir (--config.workdir=...)"
        )


def save_thresholds(folder: Path, step: int | None, names: Sequence[str], values: Any) -> None:
    """Add a checkpoint's per-label decision thresholds to ``folder/thresholds.json``:
    ``{"steps": {"<step>": {label: threshold}}}`` (step None: key "model", an exported dir)."""
    path = Path(folder) / THRESHOLDS
    saved = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {"steps": {}}
    values = [float(v) for v in values]
    saved["steps"][str("model" if step is None else step)] = dict(zip(names, values, strict=True))
    write_text_atomic(path, json.dumps(saved, indent=1, ensure_ascii=False) + "\n")


def load_thresholds(folder: Path, names: Sequence[str], step: int | None = None) -> list | None:
    """The thresholds of checkpoint ``step`` (None: those of an exported dir) in label order,
    or None when ``folder/thresholds.json`` has none for it."""
    path = Path(folder) / THRESHOLDS
    if not path.is_file():
        return None
    try:
        by_label = json.loads(path.read_text(encoding="utf-8"))["steps"].get(
            str("model" if step is None else step)
        )
    except (json.JSONDecodeError, KeyError, AttributeError) as e:
        raise UserError(f"{path}: not a thresholds file ({e}); delete it to tune them again") from e
    if by_label is None:
        return None
    if sorted(by_label) != sorted(names):
        raise UserError(f"{path}: thresholds for {sorted(by_label)}, but the labels are {names}")
    return [float(by_label[name]) for name in names]


def _clean(value: Any) -> Any:
    """JSON-safe scalars: NaN/inf become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class MetricsLog:
    """Append-only ``metrics.jsonl``; one JSON object per event, flushed at once."""

    def __init__(self, path: Path, enabled: bool = True):
        self.path, self.enabled = path, enabled

    def write(self, step: int, split: str, values: dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"step": step, "split": split, **{k: _clean(v) for k, v in values.items()}}
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")

    def truncate_after(self, step: int) -> None:
        """Drop events after ``step`` (a resumed run logs them again, identically)."""
        if not self.enabled or not self.path.exists():
            return
        lines = self.path.read_text(encoding="utf-8").splitlines()
        kept = []
        for line in lines:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                break  # a line cut by a kill: everything after it is gone too
            if record.get("step", 0) > step:
                break
            kept.append(line)
        write_text_atomic(self.path, "".join(x + "\n" for x in kept))
