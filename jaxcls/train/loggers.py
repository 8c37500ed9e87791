"""Where training and validation scalars go (``train.loggers``): metrics.jsonl, TensorBoard, wandb.

metrics.jsonl is always written and is the source of truth: a resumed run truncates it to the
checkpoint's step, and the TensorBoard event files are then rebuilt from it, so TensorBoard never
shows an event twice nor one that the resumed run does not have. wandb gets each event as it is
logged; a resumed run is a new wandb run that starts at the checkpoint's step.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import Any

from jaxcls.config import parse_loggers
from jaxcls.errors import UserError
from jaxcls.formats import run_dir

TENSORBOARD_DIR = "tensorboard"


def _number(value: Any) -> float | None:
    """A finite float, or None for what is not a scalar to plot (text, None, NaN, inf)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def import_tensorboardx() -> Any:
    """The tensorboardX module, imported without PyTorch.

    tensorboardX imports torch when it is installed (7 s on this project's machine) only to log
    torch tensors, which jaxcls never does; hiding it for the import keeps a run free of it.
    """
    hide = "torch" not in sys.modules
    if hide:
        sys.modules["torch"] = None  # `import torch` raises ImportError: tensorboardX skips it
    try:
        import tensorboardX
    finally:
        if hide:
            del sys.modules["torch"]
    return tensorboardX


class TensorBoardLog:
    """Scalars as TensorBoard event files in ``folder`` (tags ``train/loss``, ``val/accuracy``)."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.writer = None

    def write(self, step: int, split: str, values: dict[str, Any]) -> None:
        if self.writer is None:
            self.folder.mkdir(parents=True, exist_ok=True)
            self.writer = import_tensorboardx().SummaryWriter(str(self.folder), flush_secs=10)
        for key, value in values.items():
            number = _number(value)
            if number is not None:
                self.writer.add_scalar(f"{split}/{key}", number, global_step=step)

    def rebuild(self, events: list[dict]) -> None:
        """Replace the event files with ``events`` (metrics.jsonl after a resume's truncation)."""
        self.close()
        for old in self.folder.glob("events.out.tfevents.*"):
            old.unlink()
        for event in events:
            values = {k: v for k, v in event.items() if k not in ("step", "split")}
            self.write(int(event["step"]), str(event.get("split", "train")), values)
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class WandbLog:
    """Scalars to Weights & Biases (``wandb.init`` in the run dir; offline unless WANDB_MODE)."""

    def __init__(self, wandb: Any, workdir: Path, config: dict):
        self.wandb, self.workdir, self.config = wandb, workdir, config
        self.run = None

    def write(self, step: int, split: str, values: dict[str, Any]) -> None:
        if self.run is None:
            self.run = self.wandb.init(
                dir=str(self.workdir),
                name=self.workdir.name,
                project=os.environ.get("WANDB_PROJECT", "jaxcls"),
                config=self.config,
                mode=os.environ.get("WANDB_MODE", "offline"),
            )
        numbers = {f"{split}/{k}": _number(v) for k, v in values.items()}
        self.run.log({k: v for k, v in numbers.items() if v is not None}, step=step)

    def close(self) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None


def import_wandb() -> Any:
    """The wandb module, or a UserError saying how to get it."""
    try:
        import wandb
    except ImportError:
        raise UserError(
            "config key 'train.loggers' includes 'wandb' but the wandb package is not installed; "
            "pip install wandb, or leave wandb out of train.loggers"
        ) from None
    return wandb


class Loggers:
    """metrics.jsonl plus the other loggers of ``train.loggers``; one ``write`` feeds them all.

    ``enabled=False`` (processes other than 0 of a multi-host job) writes nothing.
    """

    def __init__(self, workdir: Path, spec: str, config: dict, enabled: bool = True):
        names = parse_loggers(spec)
        self.enabled = enabled
        self.jsonl = run_dir.MetricsLog(workdir / run_dir.METRICS, enabled=enabled)
        self.tensorboard = None
        self.wandb = None
        if enabled and "tensorboard" in names:
            self.tensorboard = TensorBoardLog(workdir / TENSORBOARD_DIR)
        if enabled and "wandb" in names:
            self.wandb = WandbLog(import_wandb(), workdir, config)

    def write(self, step: int, split: str, values: dict[str, Any]) -> None:
        self.jsonl.write(step, split, values)
        for log in (self.tensorboard, self.wandb):
            if log is not None:
                log.write(step, split, values)

    def truncate_after(self, step: int) -> None:
        """Drop events after ``step`` (a resumed run logs them again) from every log that keeps
        them: metrics.jsonl, then the TensorBoard files rebuilt from it."""
        self.jsonl.truncate_after(step)
        if self.tensorboard is not None:
            path = self.jsonl.path
            lines = path.read_text(encoding="utf-8").splitlines() if path.is_file() else []
            self.tensorboard.rebuild([json.loads(line) for line in lines if line.strip()])

    def close(self) -> None:
        for log in (self.tensorboard, self.wandb):
            if log is not None:
                log.close()
