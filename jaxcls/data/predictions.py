"""Prediction tables (predict): the input's rows and columns as they are, plus the predictions.

Output columns: every input column in order, then ``pred_label`` and ``pred_prob`` (the most
probable label and its probability) and, with ``top_k`` > 1, ``top2_label``, ``top2_prob``, ...
A row with a blank text gets empty predictions, so the output lines up with the input.
A multi-label model's table (:func:`label_set_frame`) has ``pred_labels`` (the predicted set,
joined by the run's ``data.label_sep``) and one ``prob(<label>)`` column per label.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from jaxcls.data import tables
from jaxcls.errors import UserError
from jaxcls.files import write_atomic

log = logging.getLogger("jaxcls")

WRITERS = {
    ".xlsx": lambda frame, p: frame.to_excel(p, index=False),
    ".csv": lambda frame, p: frame.to_csv(p, index=False),
    ".tsv": lambda frame, p: frame.to_csv(p, index=False, sep="\t"),
    ".jsonl": lambda frame, p: frame.to_json(p, orient="records", lines=True, force_ascii=False),
    ".json": lambda frame, p: Path(p).write_text(
        json.dumps(frame.to_dict(orient="records"), ensure_ascii=False, indent=1, default=str),
        encoding="utf-8",
    ),
    ".parquet": lambda frame, p: frame.to_parquet(p, index=False),
}


@dataclass(frozen=True)
class Inputs:
    """What to classify: the rows (a file's, or one column ``text``) and each row's text."""

    frame: pd.DataFrame
    texts: list[str]  # '' for a blank text: no prediction

    @property
    def to_classify(self) -> list[str]:
        return [t for t in self.texts if t]


def from_texts(texts: Sequence[str]) -> Inputs:
    """``--text`` values; an empty one is an error (nothing to classify)."""
    for text in texts:
        if not text.strip():
            raise UserError("--text is empty; give a text to classify")
    return Inputs(pd.DataFrame({"text": list(texts)}), [t.strip() for t in texts])


def read_input(path: str, text_column: str = "") -> Inputs:
    """A file's rows, all of them (a label column, if any, is kept as it is)."""
    frame, column, texts = tables.read_frame(path, text_column, key="--text_column")
    blank = sum(1 for t in texts if not t)
    if blank == len(texts):
        raise UserError(f"{path}: column '{column}' has no text to classify")
    if blank:
        log.warning(
            "%s: %d rows with no text in column '%s' get no prediction", path, blank, column
        )
    return Inputs(frame, texts)


def check_output(path: str) -> None:
    """A writable kind of file in an existing folder (checked before the model loads)."""
    target = Path(path)
    if target.suffix.lower() not in WRITERS:
        raise UserError(f"--output {path}: unsupported extension; use one of {', '.join(WRITERS)}")
    if not target.parent.is_dir():
        raise UserError(f"--output {path}: folder {target.parent} does not exist")
    if target.is_dir():
        raise UserError(f"--output {path} is a directory; give a file name")


def columns(top_k: int) -> list[str]:
    """The prediction columns: pred_label, pred_prob, top2_label, top2_prob, ..."""
    names = ["pred_label", "pred_prob"]
    for k in range(2, top_k + 1):
        names += [f"top{k}_label", f"top{k}_prob"]
    return names


def frame(inputs: Inputs, probs: np.ndarray, labels: Sequence[str], top_k: int = 1) -> pd.DataFrame:
    """The input rows with the prediction columns; ``probs`` [n texts to classify, classes]."""
    out = inputs.frame.copy()
    replaced = [c for c in columns(top_k) if c in out.columns]
    if replaced:
        log.warning("the input's columns %s are replaced by the new predictions", replaced)
        out = out.drop(columns=replaced)
    order = np.argsort(-probs, axis=1, kind="stable")[:, :top_k]
    rows = iter(range(len(probs)))
    cells: dict[str, list] = {name: [] for name in columns(top_k)}
    for text in inputs.texts:
        i = next(rows) if text else None
        for k in range(top_k):
            label_col, prob_col = columns(top_k)[2 * k : 2 * k + 2]
            cells[label_col].append(None if i is None else labels[order[i, k]])
            cells[prob_col].append(None if i is None else float(probs[i, order[i, k]]))
    for name, values in cells.items():
        out[name] = pd.Series(values, index=out.index, dtype=object if "label" in name else float)
    return out


def label_set_frame(
    inputs: Inputs, probs: np.ndarray, chosen: Sequence[Sequence[str]], labels: Sequence[str],
    sep: str,
) -> pd.DataFrame:  # fmt: skip
    """The input rows with ``pred_labels`` (each row's ``chosen`` labels joined by ``sep``)
    and ``prob(<label>)`` per label; ``probs`` [n texts to classify, labels]."""
    names = ["pred_labels", *(f"prob({label})" for label in labels)]
    out = inputs.frame.copy()
    replaced = [c for c in names if c in out.columns]
    if replaced:
        log.warning("the input's columns %s are replaced by the new predictions", replaced)
        out = out.drop(columns=replaced)
    where = np.flatnonzero([bool(t) for t in inputs.texts])
    cells = np.full(len(inputs.texts), None, dtype=object)
    cells[where] = [sep.join(row) for row in chosen]
    out["pred_labels"] = pd.Series(cells, index=out.index, dtype=object)
    for c, label in enumerate(labels):
        column = np.full(len(inputs.texts), np.nan)
        column[where] = probs[:, c]
        out[f"prob({label})"] = pd.Series(column, index=out.index, dtype=float)
    return out


def write(path: str, table: pd.DataFrame) -> None:
    """Write a prediction table as .xlsx, .csv, .tsv, .jsonl, .json or .parquet (by extension),
    atomically."""
    check_output(path)
    writer = WRITERS[Path(path).suffix.lower()]
    write_atomic(Path(path), lambda tmp: writer(table, tmp))
