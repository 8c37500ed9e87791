"""The run dir at the start of training: whether it fits the command, and the files that
describe the run (config.json, labels.json, runs/LATEST, data.split's parts).

Nothing is written until the run is known to fit its dir, so a failing command never
overwrites a good run's config, labels or metrics.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from jaxcls import config as config_lib
from jaxcls.data import label_sets, splits
from jaxcls.errors import UserError
from jaxcls.files import write_text_atomic
from jaxcls.formats import run_dir
from jaxcls.train import checkpoints
from jaxcls.train.checkpoints import check_same_model, committed_steps


def check_run_dir(cfg: Any, workdir: Path, label_names: list[str]) -> None:
    """A run dir is resumed only with its labels, model and LoRA settings (or is new)."""
    run_dir.check_labels(workdir, label_names)
    if (workdir / run_dir.CONFIG).is_file():
        check_same_model(run_dir.read_config(workdir).to_dict(), cfg, workdir)
    if not cfg.train.resume and committed_steps(workdir / checkpoints.CHECKPOINTS):
        raise UserError(
            f"{workdir / checkpoints.CHECKPOINTS} has checkpoints and train.resume is false; "
            "train into a new workdir (--config.workdir=...) or delete them first"
        )


def write_run_files(cfg: Any, workdir: Path, inputs: splits.Inputs) -> None:
    """config.json, labels.json, runs/LATEST and data.split's parts (written once the run is
    known to fit).

    config.json is the resolved config: the data files actually used (absolute; the demo's, or
    data.split's parts in RUN/data/, so eval.py finds the test part) and the actual workdir.
    """
    files = dict(inputs.files)
    if inputs.parts:
        data = cfg.data
        files.update(
            splits.write_parts(
                inputs.parts,
                workdir / "data",
                data.train,
                data.split,
                cfg.seed,
                label_sets.label_format(data),
            )  # fmt: skip
        )
    resolved = config_lib.config_from_json(config_lib.config_to_json(cfg))
    resolved.workdir = str(workdir.absolute())
    for part in ("train", "val", "test"):
        resolved.data[part] = files.get(part, "")
    if inputs.parts:  # the parts are the files now: the resolved config trains on them as given
        resolved.data.split = ""
    write_text_atomic(workdir / run_dir.CONFIG, config_lib.config_to_json(resolved))
    run_dir.save_labels(workdir / run_dir.LABELS, inputs.label_names)
    run_dir.mark_latest(workdir)
