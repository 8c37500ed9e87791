"""Evaluate a trained run: python eval.py --ckpt best [--workdir RUN] [--data FILE]

or a peft LoRA adapter (e.g. the reference project's output/best_model) on its base model:
python eval.py --lora_model ./output/best_model --base models/qwen3-1.7b --data test.xlsx"""

import argparse
from pathlib import Path

from jaxcls import cli


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--ckpt", default="best", help="best, latest, a step, or a checkpoint path")
    p.add_argument("--workdir", default=None, help="run directory (default: runs/LATEST)")
    p.add_argument("--data", default=None, help="labelled file (default: the run's data.test)")
    p.add_argument("--out", default=None, help="output dir (default: RUN/eval, LORA_MODEL/eval)")
    p.add_argument("--lora_model", default=None, help="a peft LoRA adapter dir (needs --data)")
    p.add_argument("--base", default=None, help="its base model dir (default: from the adapter)")
    p.add_argument("--max_length", type=int, default=512, help="with --lora_model: token limit")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    return p.parse_args()


def peft_session(args: argparse.Namespace):
    """The default config's evaluation settings on the adapter's base, LoRA merged."""
    from jaxcls.config import load_config
    from jaxcls.errors import UserError
    from jaxcls.train import run_model

    if not args.data:
        raise UserError("--lora_model needs --data FILE (a labelled file to evaluate on)")
    overrides = [f"model.path={args.base or ''}", f"data.max_length={args.max_length}"]
    cfg = load_config(Path(__file__).with_name("configs") / "default.py", overrides)
    return run_model.from_peft(cfg, args.lora_model)


def main() -> int:
    args = parse_args()
    cli.setup_logging()
    from jaxcls import evaluate_run
    from jaxcls.data.splits import data_paths
    from jaxcls.errors import UserError
    from jaxcls.eval.outputs import print_summary
    from jaxcls.formats.run_dir import split_ckpt
    from jaxcls.train.restore import load_run

    if args.lora_model:
        run, workdir = peft_session(args), Path(args.lora_model)
        what = f"adapter {workdir}"
    else:
        workdir, ckpt = split_ckpt(args.workdir, args.ckpt)
        run, step = load_run(workdir, ckpt)
        what = f"checkpoint {step}"
    data = run.cfg.data
    path = args.data or data_paths(data.train, data.val, data.test)["test"]
    if not path:
        raise UserError("the run has no data.test; pass --data FILE")
    result, outputs, table = evaluate_run.evaluate_file(run, path)
    print_summary(result, run.label_names)
    out = Path(args.out) if args.out else workdir / "eval"
    evaluate_run.write_outputs(run, result, outputs, table, out)
    print(f"{what} on {path}: metrics, predictions and report.html in {out}")
    return 0


if __name__ == "__main__":
    cli.run_entry_point(main)
