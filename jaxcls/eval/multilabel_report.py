"""What a multi-label evaluation writes and prints (``jaxcls.eval.outputs`` hands over to it).

eval/metrics.json (micro/macro F1, subset accuracy, Hamming loss, per-label report, the
decision thresholds, the most confident wrong label decisions), predictions.xlsx (gold and
predicted label sets, each label's probability), the training curves and report.html.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from jaxcls.data.tables import Table
from jaxcls.eval import plots, report
from jaxcls.eval.calibration import sigmoid
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
    """eval/metrics.json, predictions.xlsx, curves.png and report.html of a multi-label run."""
    out.mkdir(parents=True, exist_ok=True)
    probs = sigmoid(outputs["logits"])
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
    for stale in ("confusion.png", "tsne.png", "centroids.png"):  # single-label pictures
        (out / stale).unlink(missing_ok=True)
    images = {}
    if metrics_log is not None and metrics_log.is_file():
        images["Training curves"] = out / "curves.png"
        plots.plot_curves(metrics_log, images["Training curves"], train_ce=train_ce)
    per_class = {
        name: {**row, "threshold": result["thresholds"][name]}
        for name, row in result["per_class"].items()
    }
    report.write_report(
        out / "report.html", {**scalars(result), "hamming_loss": result["hamming_loss"]},
        per_class, images, title=title, meta=meta, mistakes=mistakes,
        unseen=result.get("unseen_labels"),
    )  # fmt: skip


def print_summary(result: dict, names: list[str]) -> None:
    """Subset accuracy, micro/macro P/R/F1, Hamming loss and the per-label report."""
    lines = [
        f"subset accuracy {result['subset_accuracy']:.4f}   "
        f"hamming loss {result['hamming_loss']:.4f}",
        "           precision  recall      f1",
    ]
    for avg in ("micro", "macro"):
        p, r, f = (result[f"{avg}_{m}"] for m in ("precision", "recall", "f1"))
        lines.append(f"{avg:>9}  {p:9.4f} {r:7.4f} {f:7.4f}")
    width = max(len(n) for n in names)
    lines.append(f"{'label':>{width}}  precision  recall      f1  support  threshold")
    for name, row in result["per_class"].items():
        lines.append(
            f"{name:>{width}}  {row['precision']:9.4f} {row['recall']:7.4f} {row['f1']:7.4f} "
            f"{row['support']:8d}  {result['thresholds'][name]:9.4f}"
        )
    unseen = result.get("unseen_labels")
    if unseen:
        lines.append(
            f"not scored: {unseen['count']} rows with labels never seen in training: "
            + ", ".join(f"{label!r} ({len(rows)})" for label, rows in unseen["labels"].items())
        )
    print("\n".join(lines))
