"""Load a trained run at a checkpoint, evaluate it on a file, write eval/ (metrics, plots)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from jaxcls import config as config_lib
from jaxcls.data import tables
from jaxcls.errors import UserError
from jaxcls.eval import plots, report, scoring
from jaxcls.formats import run_dir
from jaxcls.model import lora
from jaxcls.train import run_model, sharding, steps
from jaxcls.train.checkpoints import Checkpoints, abstract
from jaxcls.train.settings import OptimSettings

log = logging.getLogger("jaxcls")


def split_ckpt(workdir: str | None, ckpt: str) -> tuple[Path, str]:
    """(run dir, checkpoint name) from ``--workdir``/``runs/LATEST`` and ``--ckpt``.

    ``--ckpt`` may also be a path to a checkpoint step dir (``runs/x/checkpoints/120``).
    """
    path = Path(ckpt)
    if path.name.isdigit() and path.parent.name == "checkpoints" and path.is_dir():
        return path.parent.parent, path.name
    return run_dir.find_run(workdir), ckpt


def load_run(workdir: Path, ckpt: str = "best") -> tuple[run_model.Session, int]:
    """The run's session with the trainable state of checkpoint ``ckpt``, and its step."""
    config_file = workdir / run_dir.CONFIG
    if not config_file.is_file():
        raise UserError(f"{workdir}: no {run_dir.CONFIG}; is this a jaxcls run directory?")
    cfg = config_lib.config_from_json(config_file.read_text(encoding="utf-8"))
    label_names = tables.load_labels(workdir / run_dir.LABELS)
    ckpts = Checkpoints(
        workdir / "checkpoints", cfg.train.best_metric, cfg.train.best_mode, cfg.train.keep_best
    )
    step = ckpts.resolve(ckpt)  # before the slow model build: a wrong --ckpt fails at once
    run = run_model.build(cfg, workdir, label_names, write_base=False, warm_start=False)
    optimizer = steps.make_optimizer(OptimSettings.from_config(cfg.optim), 1)
    target = steps.TrainState(
        step=jnp.zeros((), jnp.int32),
        trainable=run.trainable,
        opt_state=jax.eval_shape(optimizer.init, run.trainable),
        rng=jax.random.PRNGKey(0),
        bad_steps=jnp.zeros((), jnp.int32),
    )
    state, _ = ckpts.restore(step, abstract(target))
    ckpts.close()
    run.trainable = state.trainable
    log.info("loaded %s at step %d", workdir, step)
    return run, step


def evaluate_file(run: run_model.Session, path: str) -> tuple[dict, dict, tables.Table]:
    """Score the run on a labelled file: (metrics, raw outputs, table)."""
    table = run_model.read_table(run.cfg, path)
    dataset = run.dataset(table)
    mesh = sharding.make_mesh(run.cfg.devices, run.cfg.mesh.fsdp)
    sharding.check_batch_size(run.cfg.train.eval_batch_size, mesh, "train.eval_batch_size")
    # Replicated outputs: every process of a multi-host job gets the whole batch's results.
    lora_cfg = lora.LoRAConfig.from_config(run.cfg.lora)
    eval_step = jax.jit(
        steps.make_eval_step(run.model, lora_cfg, mesh), out_shardings=sharding.replicated(mesh)
    )
    frozen = sharding.put_params(run.frozen, mesh)
    trainable = sharding.put_params(run.trainable, mesh)
    outputs = scoring.run_dataset(
        eval_step, trainable, frozen, dataset, run.cfg.train.eval_batch_size, run.pad_id,
        run.cfg.data.max_length, mesh,
    )  # fmt: skip
    result = scoring.score(outputs, dataset.labels, run.label_names)
    return result, {**outputs, "labels": dataset.labels}, table


def write_outputs(
    run: run_model.Session, result: dict, outputs: dict, table: tables.Table, out: Path
):
    """eval/metrics.json, predictions.xlsx, the pictures and report.html."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    names = run.label_names
    probs = jax.nn.softmax(jnp.asarray(outputs["logits"]), axis=-1)
    frame = pd.DataFrame(
        {
            "text": table.texts,
            "gold": [names[i] for i in outputs["labels"]],
            "predicted": [names[i] for i in np.argmax(outputs["logits"], axis=-1)],
        }
    )
    for i, name in enumerate(names):
        frame[f"p({name})"] = np.asarray(probs[:, i])
    frame.to_excel(out / "predictions.xlsx", index=False)
    images = {
        "Confusion matrix": out / "confusion.png",
        "t-SNE of the features": out / "tsne.png",
        "Class-centroid similarity": out / "centroids.png",
    }
    plots.plot_confusion(result["confusion_matrix"], names, images["Confusion matrix"])
    plots.plot_tsne(outputs["features"], outputs["labels"], names, images["t-SNE of the features"])
    plots.plot_centroids(result["centroid_similarity"], names, images["Class-centroid similarity"])
    curves = run.workdir / run_dir.METRICS
    if curves.is_file():
        images["Training curves"] = out / "curves.png"
        plots.plot_curves(curves, images["Training curves"])
    report.write_report(
        out / "report.html",
        scoring.scalars(result),
        result["per_class"],
        images,
        title=f"jaxcls evaluation: {run.workdir.name}",
    )


def print_summary(result: dict, names: list[str]) -> None:
    """Accuracy, macro/weighted P/R/F1, the per-class report and the confusion matrix."""
    lines = [
        f"accuracy {result['accuracy']:.4f}",
        "           precision  recall      f1",
    ]
    for avg in ("macro", "weighted"):
        p, r, f = (result[f"{avg}_{m}"] for m in ("precision", "recall", "f1"))
        lines.append(f"{avg:>9}  {p:9.4f} {r:7.4f} {f:7.4f}")
    width = max(len(n) for n in names)
    lines.append(f"{'class':>{width}}  precision  recall      f1  support")
    for name, row in result["per_class"].items():
        lines.append(
            f"{name:>{width}}  {row['precision']:9.4f} {row['recall']:7.4f} {row['f1']:7.4f} "
            f"{row['support']:8d}"
        )
    lines.append("confusion matrix (rows = gold, columns = predicted):")
    for name, row in zip(names, result["confusion_matrix"], strict=True):
        lines.append(f"{name:>{width}}  " + " ".join(f"{v:6d}" for v in row))
    print("\n".join(lines))


def evaluate_after_training(cfg: Any, workdir: str | Path) -> None:
    """Evaluate the best checkpoint on ``tables.test`` (the demo's test split by default)."""
    from jaxcls.data.splits import data_paths

    test = data_paths(cfg)["test"]
    if not Path(test).is_file():
        log.info("no test file (%s); skipping the final evaluation", test)
        return
    run, step = load_run(Path(workdir), "best")
    result, outputs, table = evaluate_file(run, test)
    print_summary(result, run.label_names)
    if jax.process_index() == 0:
        write_outputs(run, result, outputs, table, Path(workdir) / "eval")
        log.info("test set (%s), checkpoint %d: report in %s", test, step, Path(workdir) / "eval")
