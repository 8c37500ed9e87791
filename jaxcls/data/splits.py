"""Which files a run trains, validates and tests on, and the train/validation tables."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import numpy as np

from jaxcls.data import tables
from jaxcls.data.demo import ensure_demo_data

log = logging.getLogger("jaxcls")


def data_paths(train: str, val: str, test: str) -> dict[str, str]:
    """The train/val/test files; with no training file, the embedded demo's three splits."""
    paths = {"train": train, "val": val, "test": test}
    if not paths["train"]:
        demo = ensure_demo_data()
        paths = {k: v or str(demo[k]) for k, v in paths.items()}
    return paths


def split_table(table: tables.Table, n: int, seed: int) -> tuple[tables.Table, tables.Table]:
    """A seeded, stratified split into ``n`` rows and the rest."""
    # Imported here: sklearn takes seconds to import, and an entry point reads and checks the
    # data files before anything slow.
    from sklearn.model_selection import train_test_split

    index = np.arange(len(table.texts))
    _, counts = np.unique(table.labels, return_counts=True)
    stratify = table.labels if counts.min() >= 2 else None
    first, rest = train_test_split(index, train_size=n, stratify=stratify, random_state=seed)
    return _rows(table, np.sort(first)), _rows(table, np.sort(rest))


def _rows(table: tables.Table, keep: np.ndarray) -> tables.Table:
    return dataclasses.replace(
        table,
        texts=[table.texts[i] for i in keep],
        labels=[table.labels[i] for i in keep],
        rows=table.rows[keep],
    )


def read_train_val(
    paths: dict[str, str],
    text_column: str,
    label_column: str,
    seed: int,
    max_train_samples: int = 0,
) -> tuple[tables.Table, tables.Table, list[str]]:
    """Training and validation tables and the label map (from the whole training file).

    Without a validation file, 10% of the training rows are held out for validation. The
    validation and test files' labels are checked here, before any slow work: a bad test
    file fails now, not after training. ``max_train_samples`` > 0 keeps a seeded, stratified
    subset of the training rows.
    """
    train = tables.read_table(paths["train"], text_column, label_column)
    label_names = tables.build_label_map(train)
    if paths["test"]:
        tables.encode_labels(
            tables.read_table(paths["test"], text_column, label_column), label_names
        )
    if paths["val"]:
        val = tables.read_table(paths["val"], text_column, label_column)
        tables.encode_labels(val, label_names)
    else:
        n_val = max(len(set(train.labels)), len(train.texts) // 10)
        train, val = split_table(train, len(train.texts) - n_val, seed)
        log.info("no data.val: holding out %d training rows for validation", len(val.texts))
    if 0 < max_train_samples < len(train.texts):
        train, _ = split_table(train, max_train_samples, seed)
    return train, val, label_names


def read_inputs(cfg: Any) -> tuple[tables.Table, tables.Table, list[str]]:
    """The training and validation tables and the label map of ``cfg``'s data files."""
    data = cfg.data
    paths = data_paths(data.train, data.val, data.test)
    return read_train_val(
        paths, data.text_column, data.label_column, cfg.seed, data.max_train_samples
    )
