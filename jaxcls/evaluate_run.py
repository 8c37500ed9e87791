"""Evaluate a trained run on a labelled file and write its eval/ directory."""

from __future__ import annotations

import datetime
import importlib.metadata
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np

from jaxcls.config import is_multi_label
from jaxcls.data import batches, label_sets, splits, tables
from jaxcls.data.splits import data_paths
from jaxcls.eval import blend as blend_lib
from jaxcls.eval import calibration, metrics, multilabel, outputs, scoring
from jaxcls.formats import run_dir
from jaxcls.train import restore, run_model, sharding

log = logging.getLogger("jaxcls")

# eval.max_tsne_points of a run dir written before the key existed (configs/default.py).
DEFAULT_MAX_TSNE_POINTS = 3000


Predict = Callable[[dict], dict]
# score(dataset, thresholds=None, temperature=None, adjust=None)
#   -> (``scoring.score`` result, raw outputs)
Scorer = Callable[..., tuple[dict, dict]]
# A fitted temperature: one float (single-label), one per label (multi-label), None: none.
Temperature = float | list[float] | None


def predictor(run: run_model.RunModel) -> Predict:
    """The run's jitted eval step on its mesh: host batch -> {logits, features, nll}.

    The base is placed on the devices once (``RunModel.place_base``), and the eval step
    compiles once per mesh and shape (``RunModel.eval_step``, shared with training's
    validation), for any number of batches and datasets.
    """
    mesh = sharding.make_mesh(run.cfg.devices, run.cfg.mesh.fsdp)
    sharding.check_batch_size(run.cfg.train.eval_batch_size, mesh, "train.eval_batch_size")
    # Replicated outputs: every process of a multi-host job gets the whole batch's results.
    eval_step = run.eval_step(mesh)
    frozen = run.place_base(mesh)
    trainable = sharding.put_params(run.trainable, mesh)
    return lambda batch: eval_step(trainable, frozen, sharding.put_batch(batch, mesh))


def scorer(run: run_model.RunModel) -> Scorer:
    """``scoring.evaluate`` of the run's ``predictor`` on a labelled dataset (with a multi-label
    run's per-label ``thresholds``, default 0.5, on sigmoid(logits / ``temperature``)): one
    placed base and one compiled eval step for any number of datasets."""
    predict, cfg = predictor(run), run.cfg

    def score(
        dataset: batches.Dataset, thresholds: np.ndarray | None = None, temperature: Any = None,
        adjust: scoring.Adjust | None = None,
    ) -> tuple:  # fmt: skip
        return scoring.evaluate(
            predict, dataset, cfg.train.eval_batch_size, run.pad_id, cfg.data.max_length,
            run.label_names, thresholds, temperature, adjust,
        )  # fmt: skip

    return score


def evaluate_file(
    run: run_model.RunModel,
    path: str,
    table: tables.Table | None = None,
    temperature: Temperature = None,
    score: Scorer | None = None,
    thresholds: np.ndarray | None = None,
    blend: blend_lib.Blend | None = None,
) -> tuple[dict, dict, tables.Table]:
    """Score the run on a labelled file: (metrics, raw outputs, the scored table); ``table``:
    the file already read (``run.read_table(path)``); ``temperature``: the run's fitted one
    (one per label for a multi-label run; None: not calibrated), for the ``calibration`` entry
    of the result; ``score``: a ``scorer(run)``; ``thresholds``: a multi-label run's per-label
    decision thresholds (on the calibrated probabilities when there is a temperature);
    ``blend``: the run's n-gram blend of this checkpoint, mixed into the logits before the
    temperature.

    Rows whose label training never saw are not scored: they are logged and listed in the
    metrics under ``unseen_labels`` ({"count", "unit", "labels": label -> rows}).
    """
    table = table or run.read_table(path)
    unseen = label_sets.check_some_known(table, run.label_names)
    if unseen:
        kept = label_sets.known_rows(table, run.label_names)
        count = len(table.texts) - len(kept.texts)
        log.warning(
            "%s: %d of %d rows have labels never seen in training, not scored: %s",
            table.path, count, len(table.texts), tables.describe_unseen(table, unseen),
        )  # fmt: skip
        table = kept
    dataset = run.dataset(table)
    texts = table.texts
    adjust = None if blend is None else (lambda logits: blend.logits(logits, texts))
    result, raw = (score or scorer(run))(dataset, thresholds, temperature, adjust)
    labels = dataset.row_labels
    # ECE (15 bins) and NLL of the test logits before and after the temperature.
    report = calibration_report(raw["logits"], labels, temperature)
    result["calibration"] = {**report, "temperature": temperature}
    if blend is not None:
        network = raw.pop("unadjusted_logits").argmax(axis=-1)
        alone = metrics.classification_metrics(labels, network, run.label_names)
        result["ngram_blend"] = {
            "weight": blend.weight,
            "network_accuracy": alone["accuracy"],
            "network_macro_f1": alone["macro_f1"],
        }
    if unseen:
        result["unseen_labels"] = {"count": count, "unit": table.unit, "labels": unseen}
    return result, {**raw, "labels": labels}, table


def calibration_report(logits: np.ndarray, labels: np.ndarray, temperature: Temperature) -> dict:
    """ECE and NLL before and after ``temperature`` (None: 1): softmax for class indices
    ``labels`` [n], per-label sigmoids for indicators [n, C]."""
    if labels.ndim == 2:
        t = np.ones(labels.shape[1]) if temperature is None else np.asarray(temperature)
        return calibration.multilabel_calibration_report(logits, labels, t)
    t = 1.0 if temperature is None else temperature
    return calibration.calibration_report(logits, labels, t)


class Validation(NamedTuple):
    """The run's validation rows as training read them, and the training rows beside them."""

    table: tables.Table
    dataset: batches.Dataset
    raw: dict  # the model's outputs on ``dataset`` (logits mixed once a blend is chosen)
    train: tables.Table


def validation_outputs(run: run_model.RunModel, score: Scorer) -> Validation:
    """The model's outputs on the run's validation rows."""
    inputs = splits.read_inputs(run.cfg.data, run.cfg.seed)
    dataset = run.dataset(inputs.val)
    return Validation(inputs.val, dataset, score(dataset)[1], inputs.train)


def fit_blend(
    run: run_model.RunModel, step: int, validation: Validation | None
) -> tuple[blend_lib.Blend | None, Validation | None]:
    """Fit the n-gram model on the run's training texts and choose its weight in the blend on
    validation (``jaxcls.eval.blend``), saved for checkpoint ``step``: (the blend, and
    ``validation`` with the blend's logits and NLL). The blend is None with
    ``eval.ngram_blend`` off, for a multi-label run, when the training texts give no n-gram
    model (no files then), or when the weight is 0 (the files record that choice); the
    validation is then as given."""
    workdir = Path(run.workdir)
    if jax.process_index() == 0:
        blend_lib.remove(workdir)  # a blend of an earlier fit no longer applies
    if not run.cfg.eval.get("ngram_blend", False) or is_multi_label(run.cfg):
        return None, validation
    assert validation is not None, "eval.ngram_blend needs the validation outputs"
    start = time.perf_counter()
    train, val = validation.train, validation.table
    fitted = blend_lib.fit(
        train.texts, tables.encode_labels(train, run.label_names), val.texts,
        validation.dataset.row_labels, validation.raw["logits"], run.cfg.seed,
    )  # fmt: skip
    if fitted is None:
        log.info("n-gram blend skipped: no n-gram occurs in two training texts; the network alone")
        return None, validation
    blend, accuracy, logits = fitted
    record = {
        "checkpoint_step": step,
        "fitted_on": str(Path(train.path).absolute()),
        "chosen_on": str(Path(val.path).absolute()),
        "ngram_alpha": blend.ngram.alpha,
        **{f"val_accuracy_{k}": v for k, v in accuracy.items()},
    }
    if jax.process_index() == 0:
        blend_lib.save(workdir, blend, record)
    log.info(
        "n-gram blend: TF-IDF + logistic regression fitted on %d training texts in %.1f s; "
        "weight %.2f chosen on %d validation rows (accuracy: network %.4f, n-gram %.4f, blend "
        "%.4f; eval.ngram_blend=False turns it off): %s",
        len(train.texts), time.perf_counter() - start, blend.weight, len(val.texts),
        accuracy["network"], accuracy["ngram"], accuracy["blend"], workdir / blend_lib.BLEND,
    )  # fmt: skip
    if blend.weight == 0:
        return None, validation
    nll = scoring.row_nll(logits, validation.dataset.row_labels).astype(np.float32)
    return blend, validation._replace(raw={**validation.raw, "logits": logits, "nll": nll})


def fit_calibration(
    run: run_model.RunModel, step: int, score: Scorer, validation: Validation | None = None
) -> Temperature:
    """Fit the temperature of checkpoint ``step`` on the run's validation set and save it in
    calibration.json: one T for a single-label run, one per label for a multi-label run;
    None (and no file) with ``eval.calibrate`` off. ``validation``: ``validation_outputs``
    when the caller has them.
    """
    path = Path(run.workdir) / run_dir.CALIBRATION
    if not run.cfg.eval.calibrate:  # a run dir's config has every key (run_dir.read_config)
        if jax.process_index() == 0:
            path.unlink(missing_ok=True)  # a temperature of an earlier fit no longer applies
        return None
    val_table, dataset, raw, _ = validation or validation_outputs(run, score)
    labels = dataset.row_labels
    if labels.ndim == 2:
        temperature = calibration.fit_temperatures_multilabel(raw["logits"], labels).tolist()
    else:
        temperature = calibration.fit_temperature(raw["logits"], labels)
    fit = calibration_report(raw["logits"], labels, temperature)
    record = {
        "temperature": temperature,
        "checkpoint_step": step,
        "fitted_on": str(Path(val_table.path).absolute()),
        "rows": len(labels),
        **{f"val_{k}": fit[k] for k in ("nll_before", "nll_after", "ece_before", "ece_after")},
    }
    if jax.process_index() == 0:
        run_dir.save_calibration(Path(run.workdir), record)
    shown = np.round(np.atleast_1d(temperature), 4).tolist()
    log.info(
        "calibration: temperature %s fitted on %d validation rows (NLL %.4f -> %.4f): %s",
        shown if len(shown) > 1 else shown[0], len(labels), fit["nll_before"], fit["nll_after"],
        path,
    )  # fmt: skip
    return temperature


def thresholds_for(
    run: run_model.RunModel, step: int, score: Scorer, temperature: Temperature = None,
    retune: bool = False, validation: Validation | None = None,
) -> np.ndarray | None:  # fmt: skip
    """A multi-label run's per-label thresholds at checkpoint ``step`` (None: single-label):
    those in its thresholds.json, else (or with ``retune``) tuned for F1 on its validation set
    on sigmoid(logits / ``temperature``) and saved there. A per-label temperature is monotone,
    so on validation the tuned decisions are those of the uncalibrated sigmoids.
    ``validation``: ``validation_outputs`` when the caller has them."""
    if not is_multi_label(run.cfg):
        return None
    saved = None if retune else run_dir.load_thresholds(run.workdir, run.label_names, step)
    if saved is not None:
        return np.asarray(saved)
    _, val, raw, _ = validation or validation_outputs(run, score)
    probs = calibration.sigmoid(raw["logits"], 1.0 if temperature is None else temperature)
    tuned = multilabel.tune_thresholds(probs, val.row_labels)
    if jax.process_index() == 0:
        run_dir.save_thresholds(run.workdir, step, run.label_names, tuned)
    log.info(
        "thresholds of checkpoint %d tuned on %d validation rows: %s", step, val.n_rows,
        ", ".join(f"{n}={t:.3f}" for n, t in zip(run.label_names, tuned, strict=True)),
    )  # fmt: skip
    return tuned


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
    """Fit the best checkpoint's n-gram blend (``eval.ngram_blend``) and then its temperature
    (``eval.calibrate``) on validation, or tune a multi-label run's thresholds there
    (``thresholds_for``), then evaluate it on the run's test
    file: ``data.test`` as resolved in its config.json (the demo's test split by default,
    data.split's test part in RUN/data/).

    ``run``: the model training used (its base already placed, its eval step compiled),
    given the best checkpoint's weights here; else the run is loaded from ``workdir``.
    """
    saved = run_dir.read_config(Path(workdir))
    test = data_paths(saved.data.train, saved.data.val, saved.data.test)["test"]
    has_test = Path(test).is_file()
    if not has_test:
        log.info("no test file (%s); skipping the final evaluation", test)
    blends = bool(saved.eval.get("ngram_blend", False)) and not is_multi_label(saved)
    if not (has_test or saved.eval.calibrate or blends or is_multi_label(saved)):
        return
    if run is None:
        run, step = restore.load_run(Path(workdir), "best")
    else:
        step = restore.restore_trainable(run, Path(workdir), "best")
    score = scorer(run)
    # One pass over validation serves the blend, the temperature and the thresholds.
    uses_validation = saved.eval.calibrate or blends or is_multi_label(saved)
    validation = validation_outputs(run, score) if uses_validation else None
    blend, validation = fit_blend(run, step, validation)
    temperature = fit_calibration(run, step, score, validation)
    # Tuned afresh: on the probabilities of the temperature just fitted.
    thresholds = thresholds_for(run, step, score, temperature, retune=True, validation=validation)
    if not has_test:
        return
    result, raw, table = evaluate_file(run, test, None, temperature, score, thresholds, blend)
    outputs.print_summary(result, run.label_names)
    if jax.process_index() == 0:
        write_outputs(run, result, raw, table, Path(workdir) / "eval", step=step)
        log.info("test set (%s), checkpoint %d: report in %s", test, step, Path(workdir) / "eval")
