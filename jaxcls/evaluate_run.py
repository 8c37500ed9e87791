"""Evaluate a trained run on a labelled file and write its eval/ directory."""

from __future__ import annotations

import datetime
import importlib.metadata
import logging
from pathlib import Path
from typing import Any

import jax

from jaxcls.data import tables
from jaxcls.data.splits import data_paths
from jaxcls.eval import outputs, scoring
from jaxcls.formats import run_dir
from jaxcls.train import restore, run_model, sharding

log = logging.getLogger("jaxcls")

# eval.max_tsne_points of a run dir written before the key existed (configs/default.py).
DEFAULT_MAX_TSNE_POINTS = 3000


def evaluate_file(
    run: run_model.RunModel, path: str, table: tables.Table | None = None
) -> tuple[dict, dict, tables.Table]:
    """Score the run on a labelled file: (metrics, raw outputs, the scored table); ``table``:
    the file already read (``run.read_table(path)``).

    Rows whose label training never saw are not scored: they are logged and listed in the
    metrics under ``unseen_labels`` ({"count", "unit", "labels": label -> rows}).
    """
    table = table or run.read_table(path)
    unseen = tables.check_some_known(table, run.label_names)
    if unseen:
        count = sum(map(len, unseen.values()))
        log.warning(
            "%s: %d of %d rows have labels never seen in training, not scored: %s",
            table.path, count, len(table.texts), tables.describe_unseen(table, unseen),
        )  # fmt: skip
        table = tables.known_rows(table, run.label_names)
    dataset = run.dataset(table)
    mesh = sharding.make_mesh(run.cfg.devices, run.cfg.mesh.fsdp)
    sharding.check_batch_size(run.cfg.train.eval_batch_size, mesh, "train.eval_batch_size")
    # Replicated outputs: every process of a multi-host job gets the whole batch's results.
    eval_step = run.eval_step(mesh)
    frozen = run.place_base(mesh)
    trainable = sharding.put_params(run.trainable, mesh)
    result, raw = scoring.evaluate(
        lambda batch: eval_step(trainable, frozen, sharding.put_batch(batch, mesh)),
        dataset, run.cfg.train.eval_batch_size, run.pad_id, run.cfg.data.max_length,
        run.label_names,
    )  # fmt: skip
    if unseen:
        count = sum(map(len, unseen.values()))
        result["unseen_labels"] = {"count": count, "unit": table.unit, "labels": unseen}
    return result, {**raw, "labels": dataset.labels}, table


def version() -> str:
    """The installed jaxcls version ("unknown" when run from a source tree not installed)."""
    try:
        return importlib.metadata.version("jaxcls")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def report_meta(run: run_model.RunModel, table: tables.Table, step: int | None = None) -> dict:
    """What an evaluation is of: the run, checkpoint step, data file, date and jaxcls version."""
    return {
        "run": str(Path(run.workdir).absolute()),
        "checkpoint_step": step,
        "data_file": str(Path(table.path).absolute()),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "jaxcls_version": version(),
    }


def trains_plain_ce(cfg: Any) -> bool:
    """The classification loss is plain cross-entropy, the quantity of the validation loss."""
    loss = cfg.loss
    plain = loss.classification == "ce" or loss.focal_gamma == 0
    return plain and not loss.focal_alpha.strip() and loss.label_smoothing == 0


def max_tsne_points(cfg: Any) -> int:
    """``eval.max_tsne_points`` of a config (the default for run dirs that predate the key)."""
    return int(cfg.eval.max_tsne_points) if "eval" in cfg else DEFAULT_MAX_TSNE_POINTS


def write_outputs(
    run: run_model.RunModel,
    result: dict,
    raw: dict,
    table: tables.Table,
    out: Path,
    step: int | None = None,
    meta: dict | None = None,
    tsne_points: int | None = None,
) -> None:
    """``eval/`` of a run: metrics, predictions, pictures (curves from its metrics.jsonl).

    ``step``: the evaluated checkpoint; ``meta``: more (or other) entries for the report's
    "evaluated" table and metrics.json's ``meta`` (e.g. ``{"adapter": DIR}``);
    ``tsne_points``: overrides the run's ``eval.max_tsne_points`` (0 skips the t-SNE).
    """
    outputs.write_outputs(
        result, raw, table, run.label_names, out, run.workdir / run_dir.METRICS,
        title=f"jaxcls evaluation: {Path(run.workdir).name}",
        meta={**report_meta(run, table, step), **(meta or {})},
        max_tsne_points=max_tsne_points(run.cfg) if tsne_points is None else tsne_points,
        train_ce=trains_plain_ce(run.cfg),
    )  # fmt: skip


def evaluate_after_training(
    cfg: Any, workdir: str | Path, run: run_model.RunModel | None = None
) -> None:
    """Evaluate the best checkpoint on the run's test file: ``data.test`` as resolved in its
    config.json (the demo's test split by default, data.split's test part in RUN/data/).

    ``run``: the model training used (its base already placed, its eval step compiled),
    given the best checkpoint's weights here; else the run is loaded from ``workdir``.
    """
    saved = run_dir.read_config(Path(workdir)).data
    test = data_paths(saved.train, saved.val, saved.test)["test"]
    if not Path(test).is_file():
        log.info("no test file (%s); skipping the final evaluation", test)
        return
    if run is None:
        run, step = restore.load_run(Path(workdir), "best")
    else:
        step = restore.restore_trainable(run, Path(workdir), "best")
    result, raw, table = evaluate_file(run, test)
    outputs.print_summary(result, run.label_names)
    if jax.process_index() == 0:
        write_outputs(run, result, raw, table, Path(workdir) / "eval", step=step)
        log.info("test set (%s), checkpoint %d: report in %s", test, step, Path(workdir) / "eval")
