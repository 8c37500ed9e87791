"""The run directory: config.json, labels.json, metrics.jsonl, and runs/LATEST."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from jaxcls.errors import UserError

CONFIG = "config.json"
LABELS = "labels.json"
METRICS = "metrics.jsonl"
LATEST = "LATEST"


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def mark_latest(workdir: Path) -> None:
    """Record ``workdir`` in ``<parent>/LATEST`` so eval.py and predict.py find it."""
    write_atomic(workdir.parent / LATEST, str(workdir.absolute()) + "\n")


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
        write_atomic(self.path, "".join(x + "\n" for x in kept))
