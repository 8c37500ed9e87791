"""What an evaluation writes: eval/metrics.json, predictions, pictures, report.html, a summary."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd

from jaxcls.data.tables import Table
from jaxcls.eval import calibration, multilabel_report, plots, report
from jaxcls.eval.scoring import scalars

log = logging.getLogger("jaxcls")

# The report's and metrics.json's list of the most confident wrong predictions.
MISTAKES = 20


def fitted_temperature(result: dict) -> float | None:
    """The temperature of ``result["calibration"]`` (None: none fitted)."""
    return (result.get("calibration") or {}).get("temperature")


def confident_mistakes(
    probs: np.ndarray, gold: np.ndarray, table: Table, names: list[str], k: int = MISTAKES
) -> list[dict]:
    """The ``k`` wrong predictions with the highest predicted probability, most confident first:
    the row in the file, text, gold, predicted, its probability and the gold label's."""
    predicted = probs.argmax(axis=-1)
    wrong = np.flatnonzero(predicted != gold)
    confidence = probs[wrong, predicted[wrong]]
    order = wrong[np.argsort(-confidence, kind="stable")][:k]
    return [
        {
            table.unit: int(table.rows[i]),
            "text": table.texts[i],
            "gold": names[gold[i]],
            "predicted": names[predicted[i]],
            "probability": float(probs[i, predicted[i]]),
            "p_gold": float(probs[i, gold[i]]),
        }
        for i in order
    ]


def write_outputs(
    result: dict,
    outputs: dict,
    table: Table,
    names: list[str],
    out: Path,
    metrics_log: Path | None,
    title: str,
    meta: dict | None = None,
    max_tsne_points: int = 3000,
    train_ce: bool = False,
) -> None:
    """eval/metrics.json, predictions.xlsx, the pictures and report.html.

    ``outputs``: the logits, features and gold labels of every row of ``table``;
    ``metrics_log``: the run's metrics.jsonl, drawn as training curves when it exists;
    ``meta``: what was evaluated (run, checkpoint, data file, date, version), at the top of
    metrics.json and the report; ``max_tsne_points``: 0 skips the t-SNE picture;
    ``train_ce``: the run's classification loss is plain cross-entropy (``plots.curve_panels``).
    Probabilities (predictions.xlsx, mistakes) are softmax(logits / T) with the run's fitted
    temperature T (``result["calibration"]``), else plain softmax; calibration.png compares them.
    Multi-label outputs (labels [n, C]) go to ``multilabel_report.write_outputs``.
    """
    if np.asarray(outputs["labels"]).ndim == 2:
        multilabel_report.write_outputs(
            result, outputs, table, names, out, metrics_log, title, meta, train_ce
        )
        return
    out.mkdir(parents=True, exist_ok=True)
    temperature = fitted_temperature(result) or 1.0
    probs = calibration.softmax(outputs["logits"], temperature)
    gold = np.asarray(outputs["labels"])
    mistakes = confident_mistakes(probs, gold, table, names)
    summary = {"meta": meta or {}, **result, "mistakes": mistakes}
    (out / "metrics.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    frame = pd.DataFrame(
        {
            table.unit: table.rows,
            "text": table.texts,
            "gold": [names[i] for i in gold],
            "predicted": [names[i] for i in probs.argmax(axis=-1)],
        }
    )
    for i, name in enumerate(names):
        frame[f"p({name})"] = probs[:, i]
    frame.to_excel(out / "predictions.xlsx", index=False)
    images = {"Confusion matrix": out / "confusion.png"}
    plots.plot_confusion(result["confusion_matrix"], names, images["Confusion matrix"])
    if max_tsne_points > 0:
        images["t-SNE of the features"] = out / "tsne.png"
        _tsne(outputs, names, images["t-SNE of the features"], max_tsne_points)
    else:
        (out / "tsne.png").unlink(missing_ok=True)  # not a stale picture of an earlier run
        log.info("t-SNE skipped (eval.max_tsne_points=0)")
    if "calibration" in result:
        images["Reliability diagram (before / after temperature scaling)"] = out / "calibration.png"
        before = calibration.softmax(outputs["logits"])
        calibration.plot_reliability(before, probs, gold, out / "calibration.png")
    images["Class-centroid similarity"] = out / "centroids.png"
    plots.plot_centroids(result["centroid_similarity"], names, images["Class-centroid similarity"])
    if metrics_log is not None and metrics_log.is_file():
        images["Training curves"] = out / "curves.png"
        plots.plot_curves(metrics_log, images["Training curves"], train_ce=train_ce)
    report.write_report(
        out / "report.html",
        {**scalars(result), **calibration_scalars(result)},
        result["per_class"],
        images,
        title=title,
        meta=meta,
        mistakes=mistakes,
        unseen=result.get("unseen_labels"),
    )


def calibration_scalars(result: dict) -> dict:
    """``result["calibration"]`` as ``calibration/<key>`` rows of the report's metrics table."""
    return {f"calibration/{k}": v for k, v in (result.get("calibration") or {}).items()}


def _tsne(outputs: dict, names: list[str], path: Path, max_points: int) -> None:
    n = len(outputs["labels"])
    shown = min(n, max_points)
    log.info(
        "t-SNE of %d feature vectors%s (eval.max_tsne_points=%d; 0 skips it) ...",
        shown, f" of {n}" if shown < n else "", max_points,
    )  # fmt: skip
    start = time.perf_counter()
    plots.plot_tsne(outputs["features"], outputs["labels"], names, path, max_points=max_points)
    log.info("t-SNE done in %.1f s: %s", time.perf_counter() - start, path)


def print_summary(result: dict, names: list[str]) -> None:
    """Accuracy, macro/weighted P/R/F1, the per-class report and the confusion matrix
    (``multilabel_report.summary_lines`` for a multi-label result), then the calibration and
    the rows not scored."""
    if "subset_accuracy" in result:
        lines = multilabel_report.summary_lines(result, names)
    else:
        lines = single_label_lines(result, names)
    cal = result.get("calibration")
    if cal:
        t = cal["temperature"]
        fitted = "none fitted" if t is None else "per label" if isinstance(t, list) else f"{t:.4f}"
        lines.append(
            f"calibration (temperature {fitted}): ECE ({cal['ece_bins']} bins) "
            f"{cal['ece_before']:.4f} -> {cal['ece_after']:.4f}, "
            f"NLL {cal['nll_before']:.4f} -> {cal['nll_after']:.4f}"
        )
    unseen = result.get("unseen_labels")
    if unseen:
        lines.append(
            f"not scored: {unseen['count']} rows with labels never seen in training: "
            + ", ".join(f"{label!r} ({len(rows)})" for label, rows in unseen["labels"].items())
        )
    print("\n".join(lines))


def single_label_lines(result: dict, names: list[str]) -> list[str]:
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
    return lines
