"""Labelled text tables: readers, validation, the label map and tokenization.

A file is read once into a :class:`Table`: cleaned texts, string labels, and where each row
came from (for error messages). :func:`jaxcls.data.batches.make_dataset` tokenizes a table and
encodes its labels with the map built here from the training file.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from jaxcls.errors import UserError

log = logging.getLogger("jaxcls")

SUPPORTED = (".xlsx", ".csv", ".tsv", ".jsonl", ".json", ".parquet")
TEXT_NAMES = ("text", "sentence", "content", "review", "文本", "内容")
LABEL_NAMES = ("label", "labels", "category", "class", "标签", "类别")


@dataclass(frozen=True)
class Table:
    """A cleaned table. ``rows[i]`` is where texts[i] sits in the file, counted in ``unit``."""

    path: Path
    texts: list[str]
    labels: list[str] | None
    rows: np.ndarray
    unit: str  # "row" (spreadsheet row, header = row 1), "line" (jsonl) or "record" (json/parquet)
    text_column: str
    label_column: str | None
    # Multi-label (``jaxcls.data.label_sets``): each label is a row's label set, sorted and
    # joined by label_sets.SET_SEP ('' = no label), and label_column names its column(s).
    multi_label: bool = False


def cell_str(value: Any) -> str:
    """A cell as stripped text, '' when missing; Excel's 123.0 becomes '123'."""
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, np.ndarray):  # a list cell from parquet
        value = value.tolist()
    if isinstance(value, list | dict):
        return json.dumps(value, ensure_ascii=False)
    if value is None or pd.isna(value):
        return ""
    if isinstance(value, bool | np.bool_):
        return str(bool(value))
    if isinstance(value, float | np.floating):
        return str(int(value)) if float(value).is_integer() else str(float(value))
    return str(value).strip()


# "2.0", "-1.00": an integer label that a float column wrote out (a blank cell makes pandas store
# 0/1/2 as 0.0/1.0/2.0, and a CSV or JSON written from that frame keeps the ".0").
_INTEGRAL_DECIMAL = re.compile(r"(-?\d+)\.0+")


def label_str(value: Any) -> str:
    """A label cell as text: like ``cell_str``, and "2.0" is the integer label "2"."""
    text = cell_str(value)
    match = _INTEGRAL_DECIMAL.fullmatch(text)
    return match.group(1) if match else text


def _one_line(err: Exception) -> str:
    return " ".join(f"{type(err).__name__}: {err}".split())


def _read_csv(path: Path, sep: str) -> pd.DataFrame:
    # Everything as text: "007" and "1.50" stay as typed; "NA" is a text, not a missing value.
    opts = dict(sep=sep, dtype=str, keep_default_na=False, na_filter=False, skip_blank_lines=False)
    try:
        return pd.read_csv(path, encoding="utf-8-sig", **opts)
    except UnicodeDecodeError:  # Chinese CSVs saved by Excel are often GBK
        return pd.read_csv(path, encoding="gb18030", **opts)


def _read_jsonl(path: Path) -> tuple[pd.DataFrame, np.ndarray]:
    records, lines = [], []
    with open(path, encoding="utf-8-sig") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{path}: line {number} is not valid JSON ({e.msg}); fix it") from e
            if not isinstance(record, dict):
                raise UserError(f"{path}: line {number} is not a JSON object; write one per line")
            records.append(record)
            lines.append(number)
    return pd.DataFrame.from_records(records), np.asarray(lines, dtype=np.int64)


def _read_json(path: Path) -> pd.DataFrame:
    with open(path, encoding="utf-8-sig") as f:
        obj = json.load(f)
    if isinstance(obj, list) and all(isinstance(r, dict) for r in obj):
        return pd.DataFrame.from_records(obj)
    if isinstance(obj, dict) and all(isinstance(v, list) for v in obj.values()):
        return pd.DataFrame(obj)
    raise UserError(
        f"{path}: expected a JSON list of objects or an object of equal-length column lists"
    )


def read_raw(path: Path) -> tuple[pd.DataFrame, np.ndarray, str]:
    """The raw frame, the file position of each row, and the unit those positions count."""
    if not path.exists():
        raise UserError(f"{path}: no such file; check the path")
    if path.is_dir():
        raise UserError(f"{path} is a directory; give a data file ({', '.join(SUPPORTED)})")
    ext = path.suffix.lower()
    if ext not in SUPPORTED:
        raise UserError(f"{path}: unsupported extension '{ext}'; use one of {', '.join(SUPPORTED)}")
    if path.stat().st_size == 0:
        raise UserError(f"{path} is empty; put a header row and data rows in it")
    try:
        if ext == ".jsonl":
            frame, rows = _read_jsonl(path)
            return frame, rows, "line"
        if ext == ".json":
            frame, unit, first = _read_json(path), "record", 1
        elif ext == ".parquet":
            frame, unit, first = pd.read_parquet(path), "record", 1
        elif ext == ".xlsx":
            frame, unit, first = pd.read_excel(path, dtype=object, engine="openpyxl"), "row", 2
        else:
            frame, unit, first = _read_csv(path, "\t" if ext == ".tsv" else ","), "row", 2
    except UserError:
        raise
    except Exception as e:  # any parser failure is a bad file, not a bug: say which and why
        raise UserError(
            f"{path}: cannot read it as {ext} ({_one_line(e)}); check that it is a valid {ext} file"
        ) from e
    return frame, np.arange(len(frame), dtype=np.int64) + first, unit


def find_column(
    frame: pd.DataFrame, wanted: str, names: Sequence[str], key: str, what: str
) -> tuple[Any, tuple[str, str] | None]:
    """(the column, None), or (None, (what is missing, how to fix it))."""
    columns = [str(c) for c in frame.columns]
    if wanted:
        for candidate in (wanted, wanted.strip().lower()):
            for col, name in zip(frame.columns, columns, strict=True):
                if name == candidate or name.strip().lower() == candidate:
                    return col, None
        return None, (f"no column '{wanted}' ({key})", f"fix {key} or the header row")
    lowered = [c.strip().lower() for c in columns]
    for name in names:
        if name in lowered:
            return frame.columns[lowered.index(name)], None
    return None, (
        f"no {what} column",
        f"name the {what} column one of {', '.join(names)} or set {key}",
    )


def read_table(
    path: str | os.PathLike, text_column: str = "", label_column: str | None = ""
) -> Table:
    """Read and clean a data file; ``label_column=None`` reads texts only (prediction input).

    Empty column names mean auto-detection among TEXT_NAMES / LABEL_NAMES (case-insensitive).
    Blank rows are skipped; rows with no text or no label are dropped with a counted warning.
    """
    path = Path(path)
    frame, rows, unit = read_raw(path)
    if len(frame.columns) == 0:
        raise UserError(f"{path} has no header row; put column names (e.g. text, label) in row 1")
    if len(frame) == 0:
        raise UserError(f"{path} has a header but no data rows; add some rows")
    text_col, text_problem = find_column(frame, text_column, TEXT_NAMES, "data.text_column", "text")
    label_col, label_problem = None, None
    if label_column is not None:
        label_col, label_problem = find_column(
            frame, label_column, LABEL_NAMES, "data.label_column", "label"
        )
    problems = [p for p in (text_problem, label_problem) if p]
    if problems:  # both columns in one message: the header is fixed once, not run by run
        columns = ", ".join(str(c) for c in frame.columns)
        missing, fixes = zip(*problems, strict=True)
        raise UserError(f"{path}: {' and '.join(missing)} among: {columns}; {'; '.join(fixes)}")
    if label_col is not None and label_col == text_col:
        raise UserError(f"{path}: column '{text_col}' is both the text and the label column")
    texts = [cell_str(v) for v in frame[text_col]]
    labels = None if label_col is None else [label_str(v) for v in frame[label_col]]
    blank = frame.map(cell_str).eq("").all(axis=1).to_numpy()
    no_text = np.array([t == "" for t in texts]) & ~blank
    no_label = np.zeros_like(blank) if labels is None else np.array([x == "" for x in labels])
    no_label &= ~blank & ~no_text
    for mask, what, col in ((no_text, "empty text", text_col), (no_label, "no label", label_col)):
        if mask.any():
            first = ", ".join(str(r) for r in rows[mask][:5])
            log.warning(
                "%s: dropped %d rows with %s in column '%s' (%s %s%s)",
                path, mask.sum(), what, col, unit, first, ", ..." if mask.sum() > 5 else "",
            )  # fmt: skip
    keep = np.flatnonzero(~(blank | no_text | no_label))
    if keep.size == 0:
        raise UserError(
            f"{path}: no rows left after dropping {no_text.sum()} with empty text and "
            f"{no_label.sum()} with no label; fill column '{text_col}'"
            + ("" if label_col is None else f" and '{label_col}'")
        )
    return Table(
        path=path,
        texts=[texts[i] for i in keep],
        labels=None if labels is None else [labels[i] for i in keep],
        rows=rows[keep],
        unit=unit,
        text_column=str(text_col),
        label_column=None if label_col is None else str(label_col),
    )


def _label_key(names: Sequence[str]):
    if all(re.fullmatch(r"-?\d+", n) for n in names):
        return int
    return str


def build_label_map(table: Table) -> list[str]:
    """The sorted distinct labels of a training table (numerically when all are integers)."""
    if table.labels is None:
        raise UserError(f"{table.path}: a training file needs a label column")
    names = sorted(set(table.labels), key=_label_key(table.labels))
    if len(names) < 2:
        raise UserError(
            f"{table.path}: column '{table.label_column}' has only one class ({names[0]!r}); "
            "a classifier needs at least 2 classes in the training file"
        )
    return names


def unseen_labels(table: Table, label_names: Sequence[str]) -> dict[str, list[int]]:
    """The labels of ``table`` missing from ``label_names`` -> their rows (in ``table.unit``)."""
    if table.labels is None:
        raise UserError(f"{table.path}: this file needs a label column")
    index = set(label_names)
    unseen: dict[str, list[int]] = {}
    for label, row in zip(table.labels, table.rows, strict=True):
        if label not in index:
            unseen.setdefault(label, []).append(int(row))
    return unseen


def describe_unseen(table: Table, unseen: dict[str, list[int]]) -> str:
    """One line: "'new' (row 3, 5); 'odd' (row 6)" for the first five labels."""
    return "; ".join(
        f"{label!r} ({table.unit} {', '.join(map(str, rows[:3]))}{', ...' * (len(rows) > 3)})"
        for label, rows in list(unseen.items())[:5]
    ) + ("; ..." if len(unseen) > 5 else "")


def check_some_known(table: Table, label_names: Sequence[str]) -> dict[str, list[int]]:
    """``unseen_labels`` of a file to evaluate; none of its labels known is a UserError."""
    unseen = unseen_labels(table, label_names)
    if unseen and sum(map(len, unseen.values())) == len(table.texts):
        raise UserError(
            f"{table.path}: no row has a label the run was trained on {list(label_names)}: "
            f"{describe_unseen(table, unseen)}; check data.label_column and the labels"
        )
    return unseen


def known_rows(table: Table, label_names: Sequence[str]) -> Table:
    """The rows of ``table`` whose labels are in ``label_names``."""
    known = set(label_names)
    keep = [i for i, label in enumerate(table.labels) if label in known]
    return dataclasses.replace(
        table,
        texts=[table.texts[i] for i in keep],
        labels=[table.labels[i] for i in keep],
        rows=table.rows[keep],
    )


def check_known(
    table: Table, label_names: Sequence[str], unseen: dict[str, list[int]], where: str = ""
) -> None:
    """A UserError listing ``unseen`` (label -> rows, found ``where`` in the file), if any."""
    if unseen:
        raise UserError(
            f"{table.path}: {len(unseen)} label(s){where} are not in the training labels "
            f"{list(label_names)}: {describe_unseen(table, unseen)}; fix them or add them to "
            "training"
        )


def encode_labels(table: Table, label_names: Sequence[str]) -> np.ndarray:
    """Label indices [N] int32; labels missing from ``label_names`` are a UserError listing them."""
    check_known(
        table, label_names, unseen_labels(table, label_names), f" in column '{table.label_column}'"
    )
    index = {name: i for i, name in enumerate(label_names)}
    return np.array([index[label] for label in table.labels], dtype=np.int32)


def read_frame(
    path: str | os.PathLike, text_column: str = "", key: str = "data.text_column"
) -> tuple[pd.DataFrame, str, list[str]]:
    """A file as it is, every row and column in order, for predictions to be joined back to it:
    the frame, its text column (``text_column``, else found among TEXT_NAMES; ``key`` is the
    setting an error names) and each row's cleaned text ('' for a blank one)."""
    path = Path(path)
    frame, _, _ = read_raw(path)
    if len(frame.columns) == 0:
        raise UserError(f"{path} has no header row; put column names (e.g. text) in row 1")
    column, problem = find_column(frame, text_column, TEXT_NAMES, key, "text")
    if problem is not None:
        columns = ", ".join(str(c) for c in frame.columns)
        raise UserError(f"{path}: {problem[0]} among: {columns}; {problem[1]}")
    return frame, column, [cell_str(v) for v in frame[column]]
