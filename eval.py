"""Evaluate a trained run: python eval.py --ckpt best [--workdir RUN] [--data FILE]"""

import argparse
from pathlib import Path

from jaxcls import cli


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--ckpt", default="best", help="best, latest, a step, or a checkpoint path")
    p.add_argument("--workdir", default=None, help="run directory (default: runs/LATEST)")
    p.add_argument("--data", default=None, help="labelled file (default: the run's data.test)")
    p.add_argument("--out", default=None, help="output dir (default: RUN/eval)")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    return p.parse_args()


def main() -> int:
    args = parse_args()
    cli.setup_logging()
    from jaxcls import evaluation
    from jaxcls.errors import UserError
    from jaxcls.inputs import data_paths

    workdir, ckpt = evaluation.split_ckpt(args.workdir, args.ckpt)
    run, step = evaluation.load_run(workdir, ckpt)
    path = args.data or data_paths(run.cfg)["test"]
    if not path:
        raise UserError("the run has no data.test; pass --data FILE")
    result, outputs, table = evaluation.evaluate_file(run, path)
    evaluation.print_summary(result, run.label_names)
    out = Path(args.out) if args.out else workdir / "eval"
    evaluation.write_outputs(run, result, outputs, table, out)
    print(f"checkpoint {step} on {path}: metrics, predictions and report.html in {out}")
    return 0


if __name__ == "__main__":
    cli.run(main)
