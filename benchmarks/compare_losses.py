"""Measured comparison of the losses: test accuracy, macro-F1 and feature-space metrics.

    python benchmarks/compare_losses.py                     # demo data, 3 seeds, all variants
    python benchmarks/compare_losses.py --seeds 0,1,2 --max_train_samples 2000 --steps 300 \
        --override train.batch_size=16 --override data.max_length=64

Trains each variant with the real trainer (``jaxcls.train.trainer.train_and_evaluate``), with the
same seeds, data and every other key, then scores its best checkpoint on the test file with
``jaxcls.evaluation`` (the features are the pooled hidden state each loss trained, with no
projection head unless overridden). Variants: ``ce`` (configs/ce.py), ``focal``
(configs/focal.py), ``simple`` (focal + SupCon, configs/simple.py), ``focal-contrastive``
(configs/simple.py with contrastive.loss=focal) and ``margin`` (configs/margin.py). A TF-IDF
(character 1-2-grams) + logistic regression baseline is fitted on the same training rows.
Writes ``<out>.json`` (settings, every run, the summary) and ``<out>.md`` (the table: mean and
sample standard deviation over seeds). Runs alternate variants within each seed, so machine
load drifts affect them alike.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import platform
import shlex
import shutil
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

VARIANTS = {
    "ce": ("ce.py", []),
    "focal": ("focal.py", []),
    "simple": ("simple.py", []),
    "focal-contrastive": ("simple.py", ["contrastive.loss=focal"]),
    "margin": ("margin.py", []),
}
COLUMNS = (
    ("accuracy", "test accuracy"),
    ("macro_f1", "macro-F1"),
    ("intra_sim", "intra_sim"),
    ("inter_sim", "inter_sim"),
    ("sim_gap", "sim_gap"),
    ("silhouette", "silhouette"),
    ("step_ms", "step (ms)"),
    ("train_s", "train time (s)"),
)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", default=",".join(VARIANTS), help="comma-separated variants")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (at least 3)")
    p.add_argument("--max_train_samples", type=int, default=None, help="training subset size")
    p.add_argument("--steps", type=int, default=None, help="train.max_steps")
    p.add_argument("--epochs", type=int, default=None, help="train.epochs (and max_steps=0)")
    p.add_argument("--train", default="", help="training file (default: the demo data)")
    p.add_argument("--val", default="", help="validation file")
    p.add_argument("--test", default="", help="test file")
    p.add_argument("--override", action="append", default=[], help="config key=value (repeatable)")
    p.add_argument("--workdir", default="runs/compare_losses", help="scratch run dirs")
    p.add_argument(
        "--out", default=str(REPO / "benchmarks/results/compare_losses"), help="output stem"
    )
    return p.parse_args()


def overrides(args: argparse.Namespace, seed: int, workdir: Path) -> list[str]:
    """The config overrides every variant shares for ``seed``."""
    out = [f"seed={seed}", f"workdir={workdir}"]
    out += [f"data.{k}={v}" for k in ("train", "val", "test") if (v := getattr(args, k))]
    if args.max_train_samples is not None:
        out.append(f"data.max_train_samples={args.max_train_samples}")
    if args.steps is not None:
        out.append(f"train.max_steps={args.steps}")
    if args.epochs is not None:
        out += [f"train.epochs={args.epochs}", "train.max_steps=0"]
    return out + list(args.override)


def run_one(variant: str, seed: int, args: argparse.Namespace) -> dict:
    """Train one variant with one seed, then score its best checkpoint on the test file."""
    from jaxcls import evaluate_run
    from jaxcls.config import load_config
    from jaxcls.data import splits
    from jaxcls.train import restore
    from jaxcls.train.trainer import Trainer

    config_file, extra = VARIANTS[variant]
    workdir = Path(args.workdir) / f"{variant}-seed{seed}"
    shutil.rmtree(workdir, ignore_errors=True)  # the benchmark's own scratch dir
    cfg = load_config(REPO / "configs" / config_file, extra + overrides(args, seed, workdir))
    trainer = Trainer(cfg, workdir)
    step_s = time_steps(trainer)
    start = time.perf_counter()
    fit = trainer.fit()  # the first step's compile and the validations included
    train_s = time.perf_counter() - start
    test_file = splits.data_paths(cfg.data.train, cfg.data.val, cfg.data.test)["test"]
    if fit["best_step"] == int(trainer.state.step):  # best = final: score the state in memory
        step = fit["best_step"]
        result, _ = trainer.evaluate(trainer.run.dataset(trainer.run.read_table(test_file)))
    else:
        run, step = restore.load_run(workdir, "best")
        result, _, _ = evaluate_run.evaluate_file(run, test_file)
    record = {"variant": variant, "seed": seed, "train_s": train_s, "best_step": step}
    record["step_ms"] = 1e3 * statistics.median(step_s[1:] or step_s)  # after the compile
    record.update({k: result[k] for k, _ in COLUMNS if k in result})
    record["status"] = fit["status"]
    return record


def time_steps(trainer) -> list[float]:
    """Wall seconds of each train step of ``trainer`` (filled in as it trains)."""
    import jax

    times, step = [], trainer.train_step

    def timed(*args):
        start = time.perf_counter()
        out = jax.block_until_ready(step(*args))
        times.append(time.perf_counter() - start)
        return out

    trainer.train_step = timed
    return times


def tfidf_baseline(args: argparse.Namespace, seed: int) -> dict:
    """TF-IDF char 1-2-grams + logistic regression on the run's exact training rows."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score

    from jaxcls.config import load_config
    from jaxcls.data import splits, tables

    cfg = load_config(REPO / "configs/focal.py", overrides(args, seed, Path(args.workdir)))
    train = splits.read_inputs(cfg.data, cfg.seed).train  # the same subset the trainer uses
    paths = splits.data_paths(cfg.data.train, cfg.data.val, cfg.data.test)
    test = tables.read_table(paths["test"], cfg.data.text_column, cfg.data.label_column)
    start = time.perf_counter()
    vectorizer = TfidfVectorizer(analyzer="char", ngram_range=(1, 2), sublinear_tf=True)
    model = LogisticRegression(max_iter=2000, random_state=seed)
    model.fit(vectorizer.fit_transform(train.texts), train.labels)
    predicted = model.predict(vectorizer.transform(test.texts))
    return {
        "variant": "tfidf+logreg",
        "seed": seed,
        "accuracy": float(accuracy_score(test.labels, predicted)),
        "macro_f1": float(f1_score(test.labels, predicted, average="macro")),
        "train_s": time.perf_counter() - start,
        "train_rows": len(train.texts),
    }


def summarize(records: list[dict]) -> dict[str, dict[str, list[float]]]:
    """variant -> metric -> [mean, sample std] over seeds (std 0 for a single seed)."""
    out: dict[str, dict[str, list[float]]] = {}
    for variant in dict.fromkeys(r["variant"] for r in records):
        rows = [r for r in records if r["variant"] == variant]
        out[variant] = {}
        for key, _ in COLUMNS:
            values = [r[key] for r in rows if r.get(key) is not None]
            if values:
                std = statistics.stdev(values) if len(values) > 1 else 0.0
                out[variant][key] = [statistics.fmean(values), std]
    return out


def markdown(summary: dict, settings: dict) -> str:
    head = "| variant | " + " | ".join(title for _, title in COLUMNS) + " |"
    lines = [head, "|---|" + "---:|" * len(COLUMNS)]
    for variant, metrics in summary.items():
        cells = []
        for key, _ in COLUMNS:
            if key not in metrics:
                cells.append("n/a")
                continue
            mean, std = metrics[key]
            digits = 0 if key in ("train_s", "step_ms") else 4
            cells.append(f"{mean:.{digits}f} ± {std:.{digits}f}")
        lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    n = len(settings["seeds"])
    return (
        f"Mean ± sample std over {n} seeds ({', '.join(map(str, settings['seeds']))}); "
        f"{settings['setting']}\n\n"
        + "\n".join(lines)
        + "\n\nCommand: `"
        + settings["command"]
        + "`\n"
    )


def describe(args: argparse.Namespace) -> str:
    """One sentence on the setting: model, data, subset, steps."""
    from jaxcls.config import load_config
    from jaxcls.data import splits
    from jaxcls.train.trainer import total_steps

    cfg = load_config(REPO / "configs/focal.py", overrides(args, 0, Path(args.workdir)))
    m, t = cfg.model, cfg.train
    model = (
        f"model {m.path}" if m.path else
        f"random-init Qwen3 (hidden {m.hidden_size}, {m.num_layers} layers, "
        f"{'base trained' if m.train_base else 'base frozen'}, LoRA rank {cfg.lora.rank})"
    )  # fmt: skip
    inputs = splits.read_inputs(cfg.data, cfg.seed)
    train, val = inputs.train, inputs.val
    paths = splits.data_paths(cfg.data.train, cfg.data.val, cfg.data.test)
    per_epoch = -(-len(train.texts) // t.batch_size)
    steps = total_steps(cfg, per_epoch)
    return (
        f"{model}; train {paths['train']} ({len(train.texts)} rows used), val {len(val.texts)} "
        f"rows, test {paths['test']}; {steps} steps of batch {t.batch_size}, max_length "
        f"{cfg.data.max_length}, lr {cfg.optim.lr}; best checkpoint by {t.best_metric}; "
        f"CPU: {os.cpu_count()} cores, {platform.processor() or platform.machine()}."
    )


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import jax

    from jaxcls.data import tokenizer

    # Every run loads the same tokenizer, 5 s a time on a busy machine: load it once.
    tokenizer.load_tokenizer = functools.cache(tokenizer.load_tokenizer)
    # Seeds after the first, and the eval step of every variant, reuse compiled programs.
    jax.config.update("jax_compilation_cache_dir", str(Path(args.workdir) / "jax-cache"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    variants = args.configs.split(",")
    seeds = [int(s) for s in args.seeds.split(",")]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        sys.exit(f"unknown variants {unknown}; choose from {', '.join(VARIANTS)}")
    settings = {
        "command": "python benchmarks/compare_losses.py " + shlex.join(sys.argv[1:]),
        "seeds": seeds,
        "variants": variants,
        "setting": describe(args),
    }
    print(settings["setting"], flush=True)
    records = []
    for seed in seeds:
        records.append(tfidf_baseline(args, seed))
        for variant in variants:
            records.append(run_one(variant, seed, args))
            print(json.dumps(records[-1]), flush=True)
    summary = summarize(records)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {"settings": settings, "summary": summary, "runs": records}
    out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    out.with_suffix(".md").write_text(markdown(summary, settings), encoding="utf-8")
    print(markdown(summary, settings))


if __name__ == "__main__":
    main()
