"""Evaluate a trained run on a labelled file and write its eval/ directory."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import jax

from jaxcls.data.splits import data_paths
from jaxcls.data.tables import Table
from jaxcls.eval import outputs, scoring
from jaxcls.formats import run_dir
from jaxcls.train import restore, run_model, sharding, steps

log = logging.getLogger("jaxcls")


def evaluate_file(
    run: run_model.RunModel, path: str, table: Table | None = None
) -> tuple[dict, dict, Table]:
    """Score the run on a labelled file: (metrics, raw outputs, table); ``table``: the file
    already read (``run.read_table(path)``)."""
    table = table or run.read_table(path)
    dataset = run.dataset(table)
    mesh = sharding.make_mesh(run.cfg.devices, run.cfg.mesh.fsdp)
    sharding.check_batch_size(run.cfg.train.eval_batch_size, mesh, "train.eval_batch_size")
    # Replicated outputs: every process of a multi-host job gets the whole batch's results.
    eval_step = jax.jit(
        steps.make_eval_step(run.model, run.cfg), out_shardings=sharding.replicated(mesh)
    )
    frozen = sharding.put_params(run.frozen, mesh)
    trainable = sharding.put_params(run.trainable, mesh)
    result, raw = scoring.evaluate(
        lambda batch: eval_step(trainable, frozen, sharding.put_batch(batch, mesh)),
        dataset, run.cfg.train.eval_batch_size, run.pad_id, run.cfg.data.max_length,
        run.label_names,
    )  # fmt: skip
    return result, {**raw, "labels": dataset.labels}, table


def write_outputs(
    run: run_model.RunModel, result: dict, raw: dict, table: Table, out: Path
) -> None:
    """``eval/`` of a run: metrics, predictions, pictures (curves from its metrics.jsonl)."""
    outputs.write_outputs(
        result, raw, table, run.label_names, out, run.workdir / run_dir.METRICS,
        title=f"jaxcls evaluation: {run.workdir.name}",
    )  # fmt: skip


def evaluate_after_training(cfg: Any, workdir: str | Path) -> None:
    """Evaluate the best checkpoint on ``data.test`` (the demo's test split by default)."""
    test = data_paths(cfg.data.train, cfg.data.val, cfg.data.test)["test"]
    if not Path(test).is_file():
        log.info("no test file (%s); skipping the final evaluation", test)
        return
    run, step = restore.load_run(Path(workdir), "best")
    result, raw, table = evaluate_file(run, test)
    outputs.print_summary(result, run.label_names)
    if jax.process_index() == 0:
        write_outputs(run, result, raw, table, Path(workdir) / "eval")
        log.info("test set (%s), checkpoint %d: report in %s", test, step, Path(workdir) / "eval")
