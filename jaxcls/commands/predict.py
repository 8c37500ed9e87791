"""jaxcls predict: classify texts with a trained run, a model dir or a peft LoRA adapter.

  jaxcls predict --text "物流很快，质量不错"              # runs/LATEST, best checkpoint
  jaxcls predict --workdir runs/margin --input new.xlsx --output predicted.xlsx --top_k 2
  jaxcls predict --model models/my-seqcls --text "..." --json
  jaxcls predict --lora_model ./output/best_model --base models/qwen3-1.7b --input new.xlsx

--output gets every column of --input, in order, then pred_label, pred_prob (and top2_label,
top2_prob, ... with --top_k); a row with a blank text gets empty predictions. A multi-label
model writes pred_labels (the labels at or above their thresholds, joined by the run's
data.label_sep, "|" by default) and prob(<label>) for every label.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from jaxcls import cli
from jaxcls.data import predictions
from jaxcls.errors import UserError
from jaxcls.formats import run_dir


def parse_args(argv: Sequence[str], prog: str) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--ckpt", default="best", help="best, latest, a step, or a checkpoint path")
    p.add_argument("--workdir", default=None, help="run directory (default: runs/LATEST)")
    p.add_argument("--model", default=None, help="a converted or Hugging Face seq-cls model dir")
    p.add_argument("--lora_model", default=None, help="a peft LoRA adapter dir (SEQ_CLS)")
    p.add_argument("--base", default=None, help="its base model dir (default: from the adapter)")
    given = p.add_mutually_exclusive_group()
    given.add_argument("--text", action="append", default=[], help="a text (repeatable)")
    given.add_argument("--input", default=None, help="file of texts (.xlsx .csv .tsv .jsonl ...)")
    p.add_argument("--output", default=None, help="write predictions here (same formats)")
    p.add_argument("--text_column", default="", help="text column of --input (default: auto)")
    p.add_argument("--top_k", type=int, default=1, help="also the 2nd..k-th labels (default 1)")
    p.add_argument("--json", action="store_true", help="print one JSON object per text")
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    return p.parse_args(argv)


def check_source(args: argparse.Namespace) -> tuple[Path, str] | None:
    """The model to load exists: (run dir, ckpt) for a run, None for --model / --lora_model."""
    for flag in ("model", "lora_model"):
        path = getattr(args, flag)
        if path and not Path(path).is_dir():
            raise UserError(f"--{flag} {path}: no such directory")
        if path:
            return None
    return run_dir.split_ckpt(args.workdir, args.ckpt)


def main(argv: Sequence[str] | None = None, prog: str = "jaxcls predict") -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv, prog)
    cli.setup_logging()
    # Everything that needs no model, before JAX loads: flags, the input, the output, the run.
    if not args.text and not args.input:
        raise UserError("nothing to classify; pass --text TEXT or --input FILE")
    if args.top_k < 1 or args.batch_size < 1:
        raise UserError("--top_k and --batch_size must be >= 1")
    if args.input:
        inputs = predictions.read_input(args.input, args.text_column)
    else:
        inputs = predictions.from_texts(args.text)
    if args.output:
        predictions.check_output(args.output)
    run = check_source(args)
    if run is not None:
        labels = run_dir.load_labels(run[0] / run_dir.LABELS)
        if args.top_k > len(labels):
            raise UserError(f"--top_k {args.top_k}: the run has {len(labels)} labels")

    from jaxcls import Classifier

    if args.lora_model:
        clf = Classifier.load(args.lora_model, base=args.base, batch_size=args.batch_size)
    elif args.model:
        clf = Classifier.load(args.model, batch_size=args.batch_size)
    else:
        clf = Classifier.load(run[0], run[1], batch_size=args.batch_size)
    if args.top_k > len(clf.labels):
        raise UserError(f"--top_k {args.top_k}: the model has {len(clf.labels)} labels")
    if clf.multi_label and args.top_k > 1:
        raise UserError("--top_k: a multi-label model predicts label sets; drop --top_k")
    probs = clf.predict_proba(inputs.to_classify)
    if clf.multi_label:
        chosen = clf.decide(probs)
        table = predictions.label_set_frame(inputs, probs, chosen, clf.labels, clf.label_sep)
    else:
        table = predictions.frame(inputs, probs, clf.labels, args.top_k)
    if args.output:
        predictions.write(args.output, table)
        print(f"{len(table)} rows with predictions written to {args.output}", file=sys.stderr)
    if (args.json or not args.output) and clf.multi_label:
        print_sets(inputs.texts, iter(zip(chosen, probs, strict=True)), clf, args.json)
    elif args.json or not args.output:
        print_rows(inputs.texts, iter(probs), clf.labels, args.json)
    return 0


def print_sets(texts: list[str], rows, clf, as_json: bool) -> None:
    """Multi-label lines: ``labels joined by label_sep<TAB>text``, or a JSON object."""
    for text in texts:
        chosen, probs = next(rows) if text else (None, None)
        if as_json:
            scores = None
            if probs is not None:
                scores = {n: round(float(p), 6) for n, p in zip(clf.labels, probs, strict=True)}
            record = {"text": text, "labels": chosen, "probabilities": scores}
            print(json.dumps(record, ensure_ascii=False))
        else:
            print(f"{'' if chosen is None else clf.label_sep.join(chosen)}\t{text}")


def print_rows(texts: list[str], probs, labels: list[str], as_json: bool) -> None:
    """One line per row: ``label<TAB>probability<TAB>text``, or a JSON object; a blank text
    has no prediction."""
    for text in texts:
        row = next(probs) if text else None
        best = None if row is None else int(row.argmax())
        if as_json:
            record = {"text": text, "label": None, "probabilities": None}
            if row is not None:
                scores = {n: round(float(p), 6) for n, p in zip(labels, row, strict=True)}
                record.update(label=labels[best], probabilities=scores)
            print(json.dumps(record, ensure_ascii=False))
        elif row is None:
            print(f"\t\t{text}")
        else:
            print(f"{labels[best]}\t{row[best]:.4f}\t{text}")
