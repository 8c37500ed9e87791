"""Reading texts to classify and writing predictions (predict.py)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from jaxcls.data import tables
from jaxcls.errors import UserError
from jaxcls.files import write_atomic


def read_texts(path: str, text_column: str = "") -> tables.Table:
    """The texts of a file (a label column, if any, is ignored)."""
    return tables.read_table(path, text_column, label_column=None)


def frame(texts: Sequence[str], probs: np.ndarray, labels: Sequence[str]) -> pd.DataFrame:
    """text, predicted label, its probability, and one column per class."""
    best = probs.argmax(axis=1)
    out = pd.DataFrame(
        {
            "text": list(texts),
            "predicted": [labels[i] for i in best],
            "probability": probs[np.arange(len(best)), best],
        }
    )
    for i, name in enumerate(labels):
        out[f"p({name})"] = probs[:, i]
    return out


def write(path: str, texts: Sequence[str], probs: np.ndarray, labels: Sequence[str]) -> None:
    """Write predictions as .xlsx, .csv, .tsv, .jsonl, .json or .parquet (by extension)."""
    out = frame(texts, probs, labels)
    target = Path(path)
    suffix = target.suffix.lower()
    writers = {
        ".xlsx": lambda p: out.to_excel(p, index=False),
        ".csv": lambda p: out.to_csv(p, index=False),
        ".tsv": lambda p: out.to_csv(p, index=False, sep="\t"),
        ".jsonl": lambda p: out.to_json(p, orient="records", lines=True, force_ascii=False),
        ".json": lambda p: Path(p).write_text(
            json.dumps(out.to_dict(orient="records"), ensure_ascii=False, indent=1)
        ),
        ".parquet": lambda p: out.to_parquet(p, index=False),
    }
    if suffix not in writers:
        raise UserError(f"--output {path}: unsupported extension; use one of {', '.join(writers)}")
    if target.parent and not target.parent.is_dir():
        raise UserError(f"--output {path}: folder {target.parent} does not exist")
    write_atomic(target, writers[suffix])
