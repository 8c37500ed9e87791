"""Which files a run trains, validates and tests on, and the train/validation tables."""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
from sklearn.model_selection import train_test_split

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
    validation file's labels are checked here, before any slow work; labels of the test file
    that training never saw are a warning (its evaluation scores the other rows and lists
    them). ``max_train_samples`` > 0 keeps a seeded, stratified subset of the training rows.
    """
    train = tables.read_table(paths["train"], text_column, label_column)
    label_names = tables.build_label_map(train)
    if paths["test"]:
        test = tables.read_table(paths["test"], text_column, label_column)
        unseen = tables.unseen_labels(test, label_names)
        if unseen:  # not an error: the final evaluation scores the other rows and lists these
            log.warning(
                "%s: %d test rows have labels never seen in training: %s; the evaluation "
                "scores the other rows and reports these", test.path,
                sum(map(len, unseen.values())), tables.describe_unseen(test, unseen),
            )  # fmt: skip
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
