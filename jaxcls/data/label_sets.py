"""Multi-label tables: label sets from a separated label cell or from 0/1 label columns.

A multi-label :class:`~jaxcls.data.tables.Table` (``multi_label=True``) keeps each row's label
set in ``labels`` as its sorted labels joined by ``SET_SEP`` ('' = the row carries none), so
every row-wise operation on tables (splits, subsets) works unchanged; :func:`encode` turns the
sets into the [N, C] indicator matrix that training and scoring use. The functions here take
single-label tables too and hand them to ``jaxcls.data.tables``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from jaxcls.config import label_columns
from jaxcls.data import tables
from jaxcls.errors import UserError

log = logging.getLogger("jaxcls")
Table = tables.Table

SET_SEP = "\x1f"  # joins a row's labels inside Table.labels (a character no label cell holds)
_TRUE, _FALSE = ("1", "true", "yes"), ("0", "false", "no")


@dataclasses.dataclass(frozen=True)
class LabelFormat:
    """How a file holds its labels: one per cell, ``sep``-separated sets, or 0/1 ``columns``."""

    sep: str = ""  # data.label_sep
    columns: tuple[str, ...] = ()  # data.label_columns

    @property
    def multi(self) -> bool:
        return bool(self.sep or self.columns)


SINGLE = LabelFormat()  # one label per cell


def label_format(data: Any) -> LabelFormat:
    """The label format of config group ``data`` (single-label for run dirs before the keys)."""
    return LabelFormat(sep=data.get("label_sep", ""), columns=tuple(label_columns(data)))


def label_set(label: str) -> list[str]:
    """The labels of one multi-label ``Table.labels`` entry."""
    return label.split(SET_SEP) if label else []


def read_labelled(
    path: str | os.PathLike, text_column: str, label_column: str, fmt: LabelFormat
) -> Table:
    """``tables.read_table`` for single-label files; label sets for multi-label ones."""
    if not fmt.multi:
        return tables.read_table(path, text_column, label_column)
    if fmt.columns:
        return _read_columns(Path(path), text_column, fmt.columns)
    table = tables.read_table(path, text_column, label_column)
    cells = zip(table.labels, table.rows, strict=True)
    sets = [_split_cell(table, cell, row, fmt.sep) for cell, row in cells]
    return dataclasses.replace(table, labels=sets, multi_label=True)


def _split_cell(table: Table, cell: str, row: int, sep: str) -> str:
    parts = [part.strip() for part in cell.split(sep)]
    if "" in parts:
        raise UserError(
            f"{table.path}: {table.unit} {row}, column '{table.label_column}': {cell!r} has an "
            f"empty label between separators {sep!r} (data.label_sep); remove the extra one"
        )
    return SET_SEP.join(sorted(set(parts)))


def _read_columns(path: Path, text_column: str, columns: tuple[str, ...]) -> Table:
    """A file whose labels are 0/1 columns: the text column and one column per label."""
    frame, rows, unit = tables.read_raw(path)
    if len(frame) == 0:
        raise UserError(f"{path} has a header but no data rows; add some rows")
    text_col, problem = tables.find_column(
        frame, text_column, tables.TEXT_NAMES, "data.text_column", "text"
    )
    found = {c: tables.find_column(frame, c, (), "data.label_columns", "label")[0] for c in columns}
    missing = [c for c, col in found.items() if col is None]
    if problem or missing:
        what = [problem[0]] if problem else []
        if missing:
            what.append(f"no label column {', '.join(map(repr, missing))} (data.label_columns)")
        header = ", ".join(str(c) for c in frame.columns)
        raise UserError(f"{path}: {' and '.join(what)} among: {header}; fix the config or header")
    if text_col in found.values():
        raise UserError(f"{path}: column '{text_col}' is both the text and a label column")
    texts = [tables.cell_str(v) for v in frame[text_col]]
    blank = frame.map(tables.cell_str).eq("").all(axis=1).to_numpy()
    no_text = np.array([t == "" for t in texts]) & ~blank
    if no_text.any():
        log.warning(
            "%s: dropped %d rows with empty text in column '%s' (%s %s)",
            path, no_text.sum(), text_col, unit, ", ".join(map(str, rows[no_text][:5])),
        )  # fmt: skip
    keep = np.flatnonzero(~(blank | no_text))
    if keep.size == 0:
        raise UserError(f"{path}: no rows with text in column '{text_col}'; fill it")
    cells = {c: [tables.label_str(v).lower() for v in frame[col]] for c, col in found.items()}
    sets = []
    for i in keep:
        for name, values in cells.items():
            if values[i] not in _TRUE + _FALSE:
                raise UserError(
                    f"{path}: {unit} {rows[i]}, label column '{name}' is {values[i]!r}; label "
                    "columns (data.label_columns) hold 1 (the row has the label) or 0"
                )
        sets.append(SET_SEP.join(sorted(c for c in columns if cells[c][i] in _TRUE)))
    return Table(
        path=path,
        texts=[texts[i] for i in keep],
        labels=sets,
        rows=rows[keep],
        unit=unit,
        text_column=str(text_col),
        label_column=",".join(columns),
        multi_label=True,
    )


def build_label_map(table: Table, fmt: LabelFormat) -> list[str]:
    """The label map: ``tables.build_label_map``; the label columns in order; or the sorted
    distinct labels of the sets (numerically when all are integers)."""
    if not table.multi_label:
        return tables.build_label_map(table)
    if fmt.columns:
        return list(fmt.columns)
    names = {name for label in table.labels for name in label_set(label)}
    numeric = all(name.lstrip("-").isdigit() for name in names)
    names = sorted(names, key=int if numeric else str)
    if len(names) < 2:
        raise UserError(
            f"{table.path}: column '{table.label_column}' has {len(names)} distinct label(s) "
            f"{names}; a classifier needs at least 2 in the training file"
        )
    return names


def unseen_labels(table: Table, label_names: Sequence[str]) -> dict[str, list[int]]:
    """The labels of ``table`` missing from ``label_names`` -> their rows (``table.unit``)."""
    if not table.multi_label:
        return tables.unseen_labels(table, label_names)
    index, unseen = set(label_names), {}
    for label, row in zip(table.labels, table.rows, strict=True):
        for name in label_set(label):
            if name not in index:
                unseen.setdefault(name, []).append(int(row))
    return unseen


def known_rows(table: Table, label_names: Sequence[str]) -> Table:
    """The rows of ``table`` whose labels are all in ``label_names``."""
    if not table.multi_label:
        return tables.known_rows(table, label_names)
    known = set(label_names)
    keep = [i for i, label in enumerate(table.labels) if set(label_set(label)) <= known]
    return dataclasses.replace(
        table,
        texts=[table.texts[i] for i in keep],
        labels=[table.labels[i] for i in keep],
        rows=table.rows[keep],
    )


def check_some_known(table: Table, label_names: Sequence[str]) -> dict[str, list[int]]:
    """``unseen_labels`` of a file to evaluate; no row with only known labels is a UserError."""
    if not table.multi_label:
        return tables.check_some_known(table, label_names)
    unseen = unseen_labels(table, label_names)
    if unseen and not known_rows(table, label_names).texts:
        raise UserError(
            f"{table.path}: every row has a label the run was not trained on "
            f"{list(label_names)}: {tables.describe_unseen(table, unseen)}; check the labels"
        )
    return unseen


def encode(table: Table, label_names: Sequence[str]) -> np.ndarray:
    """Class indices [N] int32 (single-label) or the label indicator matrix [N, C] int32."""
    if not table.multi_label:
        return tables.encode_labels(table, label_names)
    tables.check_known(table, label_names, unseen_labels(table, label_names))
    index = {name: i for i, name in enumerate(label_names)}
    out = np.zeros((len(table.labels), len(label_names)), np.int32)
    for r, label in enumerate(table.labels):
        out[r, [index[name] for name in label_set(label)]] = 1
    return out


def label_cells(table: Table, fmt: LabelFormat) -> dict[str, list]:
    """The table's labels as the file holds them: {label column: cells} (sets joined by
    ``fmt.sep``) or {label column: 0/1} per label column, for writing a table back out."""
    if not table.multi_label:
        return {table.label_column: list(table.labels)}
    sets = [label_set(label) for label in table.labels]
    if fmt.columns:
        return {c: [int(c in s) for s in sets] for c in fmt.columns}
    return {table.label_column: [fmt.sep.join(s) for s in sets]}
