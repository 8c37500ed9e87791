"""Which files a run trains, validates and tests on, and the train/validation tables."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from jaxcls.config import parse_split
from jaxcls.data import label_sets, tables
from jaxcls.data.demo import ensure_demo_data
from jaxcls.errors import UserError
from jaxcls.files import write_text_atomic

log = logging.getLogger("jaxcls")

PARTS = ("train", "val", "test")


def data_paths(train: str, val: str, test: str) -> dict[str, str]:
    """The train/val/test files; with no training file, the embedded demo's three splits."""
    paths = {"train": train, "val": val, "test": test}
    if not paths["train"]:
        demo = ensure_demo_data()
        paths = {k: v or str(demo[k]) for k, v in paths.items()}
    return paths


def split_table(table: tables.Table, n: int, seed: int) -> tuple[tables.Table, tables.Table]:
    """A seeded split into ``n`` rows and the rest, stratified by label when every class has
    two rows and each side has room for every class."""
    # Imported here: sklearn takes seconds to import, and an entry point reads and checks the
    # data files before anything slow.
    from sklearn.model_selection import train_test_split

    index = np.arange(len(table.texts))
    _, counts = np.unique(table.labels, return_counts=True)
    room = min(n, len(index) - n) >= len(counts)
    stratify = table.labels if counts.min() >= 2 and room else None
    first, rest = train_test_split(index, train_size=n, stratify=stratify, random_state=seed)
    return _rows(table, np.sort(first)), _rows(table, np.sort(rest))


def split_parts(table: tables.Table, fractions: list[float], seed: int) -> dict[str, tables.Table]:
    """``data.split``: train, val (and test) parts of one table in ``fractions`` (stratified,
    seeded); every part gets at least one row."""
    names = PARTS[: len(fractions)]
    n = len(table.texts)
    sizes = [max(1, round(f * n)) for f in fractions[1:]]
    if n - sum(sizes) < 1:
        raise UserError(
            f"{table.path}: {n} rows cannot be split {','.join(map(str, fractions))} with at "
            "least one row per part; use a larger file or data.split="
        )
    parts, rest = {}, table
    for name, size in zip(names[:-1], [n - sum(sizes), *sizes[:-1]], strict=True):
        parts[name], rest = split_table(rest, size, seed)
    parts[names[-1]] = rest
    return parts


def write_parts(
    parts: dict[str, tables.Table], folder: Path, source: str, spec: str, seed: int,
    fmt: label_sets.LabelFormat = label_sets.SINGLE,
) -> dict[str, str]:  # fmt: skip
    """``data.split``'s parts as ``folder/{train,val,test}.csv`` (text, label and the source's
    row; labels as ``fmt`` reads them), with ``split.json`` saying what they came from; returns
    part -> absolute path."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, part in parts.items():
        frame = pd.DataFrame(
            {
                part.text_column: part.texts,
                **label_sets.label_cells(part, fmt),
                f"source_{part.unit}": part.rows,
            }
        )
        paths[name] = str((folder / f"{name}.csv").absolute())
        write_text_atomic(paths[name], frame.to_csv(index=False))
    meta = {
        "source": str(Path(source).absolute()),
        "split": spec,
        "seed": seed,
        "rows": {name: len(part.texts) for name, part in parts.items()},
    }
    write_text_atomic(folder / "split.json", json.dumps(meta, indent=1, ensure_ascii=False) + "\n")
    return paths


def _rows(table: tables.Table, keep: np.ndarray) -> tables.Table:
    return dataclasses.replace(
        table,
        texts=[table.texts[i] for i in keep],
        labels=[table.labels[i] for i in keep],
        rows=table.rows[keep],
    )


@dataclasses.dataclass
class Inputs:
    """What a run trains and validates on: the tables, the label map, the files used (absolute;
    "" = none) and, with ``data.split``, the parts to write into the run dir."""

    train: tables.Table
    val: tables.Table
    label_names: list[str]
    files: dict[str, str]
    parts: dict[str, tables.Table]


def read_inputs(data: Any, seed: int) -> Inputs:
    """The training and validation tables of config group ``data`` (``data.split``, the given
    files, or the demo's)."""
    fractions = parse_split(data.split)
    fmt = label_sets.label_format(data)
    if not fractions:
        paths = data_paths(data.train, data.val, data.test)
        train, val, names = read_train_val(
            paths, data.text_column, data.label_column, seed, data.max_train_samples, fmt
        )
        files = {k: str(Path(v).absolute()) if v else "" for k, v in paths.items()}
        return Inputs(train, val, names, files, {})
    table = label_sets.read_labelled(data.train, data.text_column, data.label_column, fmt)
    names = label_sets.build_label_map(table, fmt)
    parts = split_parts(table, fractions, seed)
    log.info(
        "data.split %s of %s: %s rows", data.split, table.path,
        " / ".join(f"{len(p.texts)} {k}" for k, p in parts.items()),
    )  # fmt: skip
    train = parts["train"]
    if 0 < data.max_train_samples < len(train.texts):
        train, _ = split_table(train, data.max_train_samples, seed)
    files = {"train": "", "val": "", "test": ""}  # known once written into the run dir
    return Inputs(train, parts["val"], names, files, parts)


def read_train_val(
    paths: dict[str, str],
    text_column: str,
    label_column: str,
    seed: int,
    max_train_samples: int = 0,
    fmt: label_sets.LabelFormat = label_sets.SINGLE,
) -> tuple[tables.Table, tables.Table, list[str]]:
    """Training and validation tables and the label map (from the whole training file).

    Without a validation file, 10% of the training rows are held out for validation. The
    validation file's labels are checked here, before any slow work; labels of the test file
    that training never saw are a warning (its evaluation scores the other rows and lists
    them). ``max_train_samples`` > 0 keeps a seeded, stratified subset of the training rows.
    ``fmt``: how the files hold their labels (multi-label: label sets).
    """
    train = label_sets.read_labelled(paths["train"], text_column, label_column, fmt)
    label_names = label_sets.build_label_map(train, fmt)
    if paths["test"]:
        test = label_sets.read_labelled(paths["test"], text_column, label_column, fmt)
        unseen = label_sets.unseen_labels(test, label_names)
        if unseen:  # not an error: the final evaluation scores the other rows and lists these
            log.warning(
                "%s: %d test rows have labels never seen in training: %s; the evaluation "
                "scores the other rows and reports these", test.path,
                sum(map(len, unseen.values())), tables.describe_unseen(test, unseen),
            )  # fmt: skip
    if paths["val"]:
        val = label_sets.read_labelled(paths["val"], text_column, label_column, fmt)
        label_sets.encode(val, label_names)
    else:
        n_val = max(len(label_names), len(train.texts) // 10)
        train, val = split_table(train, len(train.texts) - n_val, seed)
        log.info("no data.val: holding out %d training rows for validation", len(val.texts))
    if 0 < max_train_samples < len(train.texts):
        train, _ = split_table(train, max_train_samples, seed)
    return train, val, label_names
