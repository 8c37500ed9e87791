"""What an evaluation writes: eval/metrics.json, predictions, pictures, report.html, a summary."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from jaxcls.data.tables import Table
from jaxcls.eval import plots, report
from jaxcls.eval.scoring import scalars


def write_outputs(
    result: dict,
    outputs: dict,
    table: Table,
    names: list[str],
    out: Path,
    metrics_log: Path | None,
    title: str,
) -> None:
    """eval/metrics.json, predictions.xlsx, the pictures and report.html.

    ``outputs``: the logits, features and gold labels of every row of ``table``;
    ``metrics_log``: the run's metrics.jsonl, drawn as training curves when it exists.
    """
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
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
    if metrics_log is not None and metrics_log.is_file():
        images["Training curves"] = out / "curves.png"
        plots.plot_curves(metrics_log, images["Training curves"])
    report.write_report(
        out / "report.html",
        scalars(result),
        result["per_class"],
        images,
        title=title,
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
