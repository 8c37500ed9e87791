"""What a multi-label evaluation writes and prints (``jaxcls.eval.outputs`` hands over to it).

eval/metrics.json (micro/macro F1, subset accuracy, Hamming loss, per-label report, the
decision thresholds, the calibration, the most confident wrong label decisions),
predictions.xlsx (gold and predicted label sets, each label's probability), the training
curves, the reliability diagram of every (row, label) decision and report.html.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from jaxcls.data.tables import Table
from jaxcls.eval import calibration, plots, report
from jaxcls.eval.multilabel import apply_thresholds
from jaxcls.eval.scoring import scalars

JOIN = "|"  # joins a row's labels in predictions.xlsx
MISTAKES = 20


def label_sets(indicators: np.ndarray, names: list[str]) -> list[str]:
    """Each row's labels joined by ``JOIN`` ('' for none)."""
    return [JOIN.join(names[c] for c in np.flatnonzero(row)) for row in indicators]


def confident_mistakes(
    probs: np.ndarray, gold: np.ndarray, predicted: np.ndarray, table: Table, names: list[str]
) -> list[dict]:
    """The ``MISTAKES`` wrong (row, label) decisions farthest from the right side of 0.5."""
    wrong = np.argwhere(predicted != gold)
    confidence = np.abs(probs[wrong[:, 0], wrong[:, 1]] - 0.5)
    order = wrong[np.argsort(-confidence, kind="stable")][:MISTAKES]
    return [
        {
            table.unit: int(table.rows[i]),
            "text": table.texts[i],
            "label": names[c],
            "gold": int(gold[i, c]),
            "probability": float(probs[i, c]),
        }
        for i, c in order
    ]


def write_outputs(
    result: dict, outputs: dict, table: Table, names: list[str], out: Path,
    metrics_log: Path | None, title: str, meta: dict | None = None, train_ce: bool = False,
) -> None:  # fmt: skip
    """eval/metrics.json, predictions.xlsx, curves.png, calibration.png and report.html of a
    multi-label run; probabilities are sigmoid(logits / T_label) with the run's fitted
    per-label temperatures (``result["calibration"]``), else plain sigmoids."""
    out.mkdir(parents=True, exist_ok=True)
    cal = result.get("calibration") or {}
    temperatures = np.ones(len(names)) if cal.get("temperature") is None else cal["temperature"]
    probs = calibration.sigmoid(outputs["logits"], np.asarray(temperatures))
    gold = (np.asarray(outputs["labels"]) == 1).astype(np.int64)
    thresholds = np.array([result["thresholds"][name] for name in names])
    predicted = apply_thresholds(probs, thresholds)
    mistakes = confident_mistakes(probs, gold, predicted, table, names)
    summary = {"meta": meta or {}, **result, "mistakes": mistakes}
    (out / "metrics.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    frame = pd.DataFrame(
        {
            table.unit: table.rows,
            "text": table.texts,
            "gold": label_sets(gold, names),
            "predicted": label_sets(predicted, names),
        }
    )
    for i, name in enumerate(names):
        frame[f"p({name})"] = probs[:, i]
    frame.to_excel(out / "predictions.xlsx", index=False)
    stale = ("confusion.png", "tsne.png", "centroids.png")  # single-label pictures
    for name in (*stale, *(() if cal else ("calibration.png",))):
        (out / name).unlink(missing_ok=True)
    images = {}
    if metrics_log is not None and metrics_log.is_file():
        images["Training curves"] = out / "curves.png"
        plots.plot_curves(metrics_log, images["Training curves"], train_ce=train_ce)
    if cal:
        # Every (row, label) entry is one binary decision, binned by max(p, 1 - p).
        name = "Reliability diagram of the label decisions (before / after temperature scaling)"
        images[name] = out / "calibration.png"
        entries = gold.reshape(-1)
        before = calibration.binary_probs(outputs["logits"])
        after = np.stack([1.0 - probs, probs], axis=-1).reshape(-1, 2)
        calibration.plot_reliability(before, after, entries, images[name])
    per_class = {
        name: {**row, "threshold": result["thresholds"][name], "temperature": float(t)}
        for (name, row), t in zip(result["per_class"].items(), temperatures, strict=True)
    }
    calibration_rows = {
        f"calibration/{k}": v for k, v in cal.items() if k not in ("temperature", "ece_bins")
    }
    report.write_report(
        out / "report.html",
        {**scalars(result), "hamming_loss": result["hamming_loss"], **calibration_rows},
        per_class, images, title=title, meta=meta, mistakes=mistakes,
        unseen=result.get("unseen_labels"),
    )  # fmt: skip


def summary_lines(result: dict, names: list[str]) -> list[str]:
    """Subset accuracy, micro/macro P/R/F1, Hamming loss and the per-label report (with each
    label's threshold and temperature), as ``outputs.print_summary`` prints them."""
    lines = [
        f"subset accuracy {result['subset_accuracy']:.4f}   "
        f"hamming loss {result['hamming_loss']:.4f}",
        "           precision  recall      f1",
    ]
    for avg in ("micro", "macro"):
        p, r, f = (result[f"{avg}_{m}"] for m in ("precision", "recall", "f1"))
        lines.append(f"{avg:>9}  {p:9.4f} {r:7.4f} {f:7.4f}")
    width = max(len(n) for n in names)
    cal = result.get("calibration") or {}
    temperatures = cal.get("temperature") or [None] * len(result["per_class"])
    lines.append(f"{'label':>{width}}  precision  recall      f1  support  threshold  temperature")
    for (name, row), t in zip(result["per_class"].items(), temperatures, strict=True):
        lines.append(
            f"{name:>{width}}  {row['precision']:9.4f} {row['recall']:7.4f} {row['f1']:7.4f} "
            f"{row['support']:8d}  {result['thresholds'][name]:9.4f}  "
            + ("none fitted" if t is None else f"{t:11.4f}")
        )
    return lines
