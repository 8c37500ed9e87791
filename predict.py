"""Classify texts with a trained run or a model dir (LoRA merged into the weights).

python predict.py --text "物流很快，质量不错"              # runs/LATEST, best checkpoint
python predict.py --ckpt best --workdir runs/margin --input new.xlsx --output predicted.xlsx
python predict.py --model models/my-seqcls --text "..." --json
python predict.py --lora_model ./output/best_model --base models/qwen3-1.7b --input new.xlsx
"""

import argparse
import json
import sys

from jaxcls import cli


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--ckpt", default="best", help="best, latest, a step, or a checkpoint path")
    p.add_argument("--workdir", default=None, help="run directory (default: runs/LATEST)")
    p.add_argument("--model", default=None, help="a converted or Hugging Face seq-cls model dir")
    p.add_argument("--lora_model", default=None, help="a peft LoRA adapter dir (SEQ_CLS)")
    p.add_argument("--base", default=None, help="its base model dir (default: from the adapter)")
    p.add_argument("--text", action="append", default=[], help="a text to classify (repeatable)")
    p.add_argument("--input", default=None, help="file of texts (.xlsx .csv .tsv .jsonl ...)")
    p.add_argument("--output", default=None, help="write predictions here (same formats)")
    p.add_argument("--text_column", default="", help="text column of --input (default: auto)")
    p.add_argument("--json", action="store_true", help="print one JSON object per text")
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    return p.parse_args()


def main() -> int:
    args = parse_args()
    cli.setup_logging()
    from jaxcls import Classifier
    from jaxcls.data import predictions
    from jaxcls.errors import UserError
    from jaxcls.formats.run_dir import split_ckpt

    if not args.text and not args.input:
        raise UserError("nothing to classify; pass --text TEXT or --input FILE")
    if args.lora_model:
        clf = Classifier.load(args.lora_model, base=args.base, batch_size=args.batch_size)
    elif args.model:
        clf = Classifier.load(args.model, batch_size=args.batch_size)
    else:
        workdir, ckpt = split_ckpt(args.workdir, args.ckpt)
        clf = Classifier.load(workdir, ckpt, batch_size=args.batch_size)
    texts, table = list(args.text), None
    if args.input:
        table = predictions.read_texts(args.input, args.text_column)
        texts += table.texts
    probs = clf.predict_proba(texts)
    if args.output:
        predictions.write(args.output, texts, probs, clf.labels)
        print(f"{len(texts)} predictions written to {args.output}", file=sys.stderr)
    if args.json or not args.output:
        for text, row in zip(texts, probs, strict=True):
            best = int(row.argmax())
            if args.json:
                scores = {name: round(float(p), 6) for name, p in zip(clf.labels, row, strict=True)}
                record = {"text": text, "label": clf.labels[best], "probabilities": scores}
                print(json.dumps(record, ensure_ascii=False))
            else:
                print(f"{clf.labels[best]}\t{row[best]:.4f}\t{text}")
    return 0


if __name__ == "__main__":
    cli.run_entry_point(main)
