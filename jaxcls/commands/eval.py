"""jaxcls eval: a trained run (or a peft LoRA adapter) on a labelled file -> metrics and report.

  jaxcls eval --ckpt best [--workdir RUN] [--data FILE] [--out DIR]
  jaxcls eval --lora_model ./output/best_model --base models/qwen3-1.7b --data test.xlsx

Outputs go to RUN/eval/ for the run's own test file (data.test), RUN/eval-<file stem>/ for any
other file (LORA_MODEL/eval-<file stem>/ for an adapter), or --out DIR.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from jaxcls import cli, config_files
from jaxcls.config import load_config
from jaxcls.data import label_sets
from jaxcls.data.splits import data_paths
from jaxcls.errors import UserError
from jaxcls.formats import run_dir


def parse_args(argv: Sequence[str], prog: str) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--ckpt", default="best", help="best, latest, a step, or a checkpoint path")
    p.add_argument("--workdir", default=None, help="run directory (default: runs/LATEST)")
    p.add_argument("--data", default=None, help="labelled file (default: the run's data.test)")
    p.add_argument("--out", default=None, help="output dir (default: see above)")
    p.add_argument("--lora_model", default=None, help="a peft LoRA adapter dir (needs --data)")
    p.add_argument("--base", default=None, help="its base model dir (default: from the adapter)")
    p.add_argument("--max_length", type=int, default=512, help="with --lora_model: token limit")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    return p.parse_args(argv)


def out_dir(base: Path, data: str, own_test: str | None) -> Path:
    """``base/eval`` for the run's own test file, ``base/eval-<stem>`` for another file, so that
    evaluating another file never overwrites the training run's report."""
    if own_test and Path(data).resolve() == Path(own_test).resolve():
        return base / "eval"
    return base / f"eval-{Path(data).stem}"


def peft_config(args: argparse.Namespace):
    """The default config's evaluation settings on the adapter's base."""
    if not args.data:
        raise UserError("--lora_model needs --data FILE (a labelled file to evaluate on)")
    if not Path(args.lora_model).is_dir():
        raise UserError(f"--lora_model {args.lora_model}: no such directory")
    overrides = [f"model.path={args.base or ''}", f"data.max_length={args.max_length}"]
    return load_config(config_files.shipped_dir() / "default.py", overrides)


def main(argv: Sequence[str] | None = None, prog: str = "jaxcls eval") -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv, prog)
    cli.setup_logging()
    # Everything that needs no model, before JAX loads: the run dir, the file, its labels.
    if args.lora_model:
        cfg, workdir, labels, own_test = peft_config(args), Path(args.lora_model), None, None
    else:
        workdir, ckpt = run_dir.split_ckpt(args.workdir, args.ckpt)
        cfg = run_dir.read_config(workdir)
        labels = run_dir.load_labels(workdir / run_dir.LABELS)
        # The run's test file; with --data, only its data.test (not the demo's, which would
        # be built here if missing).
        data = cfg.data
        own_test = data.test if args.data else data_paths(data.train, data.val, data.test)["test"]
    path = args.data or own_test
    if not path:
        raise UserError("the run has no data.test; pass --data FILE")
    fmt = label_sets.label_format(cfg.data)
    table = label_sets.read_labelled(path, cfg.data.text_column, cfg.data.label_column, fmt)
    if labels is not None:
        label_sets.check_some_known(table, labels)
    out = Path(args.out) if args.out else out_dir(workdir, path, own_test)

    from jaxcls import evaluate_run
    from jaxcls.eval import blend as blend_lib
    from jaxcls.eval.outputs import print_summary
    from jaxcls.train import run_model
    from jaxcls.train.restore import load_run

    if args.lora_model:
        run, what, step = run_model.from_peft(cfg, args.lora_model), f"adapter {workdir}", None
        temperature, blend = None, None
    else:
        run, step = load_run(workdir, ckpt)
        what = f"checkpoint {step}"
        # The run's temperature when fitted on this checkpoint (None: uncalibrated).
        temperature = run_dir.load_temperature(workdir, step)
        # The run's n-gram blend when chosen for this checkpoint (None: the network alone).
        blend = blend_lib.load(workdir, step)
    score = evaluate_run.scorer(run)
    thresholds = (
        None if step is None else evaluate_run.thresholds_for(run, step, score, temperature)
    )
    result, outputs, table = evaluate_run.evaluate_file(
        run, path, table, temperature, score, thresholds, blend
    )
    print_summary(result, run.label_names)
    evaluate_run.write_outputs(run, result, outputs, table, out, step=step)
    print(f"{what} on {path}: metrics, predictions and report.html in {out}")
    return 0
