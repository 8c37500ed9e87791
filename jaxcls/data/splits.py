"""The training input: which files, the train/val tables, and micro-batched global batches."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.model_selection import train_test_split

from jaxcls.data import batches, tables
from jaxcls.errors import UserError
from jaxcls.formats import run_dir
from jaxcls.train import run_model

log = logging.getLogger("jaxcls")


def data_paths(cfg: Any) -> dict[str, str]:
    """``tables.train/val/test``; with no training file, the embedded demo's three splits."""
    paths = {"train": cfg.data.train, "val": cfg.data.val, "test": cfg.data.test}
    if not paths["train"]:
        from jaxcls.data.demo import ensure_demo_data

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


def read_train_val(cfg: Any, paths: dict[str, str]) -> tuple[tables.Table, tables.Table, list[str]]:
    """Training and validation tables and the label map (from the whole training file).

    Without a validation file, 10% of the training rows are held out for validation. The
    validation and test files' labels are checked here, before any slow work: a bad test
    file fails now, not after training.
    """
    train = run_model.read_table(cfg, paths["train"])
    label_names = tables.build_label_map(train)
    if paths["test"]:
        tables.encode_labels(run_model.read_table(cfg, paths["test"]), label_names)
    if paths["val"]:
        val = run_model.read_table(cfg, paths["val"])
        tables.encode_labels(val, label_names)
    else:
        n_val = max(len(set(train.labels)), len(train.texts) // 10)
        train, val = split_table(train, len(train.texts) - n_val, cfg.seed)
        log.info("no tables.val: holding out %d training rows for validation", len(val.texts))
    n = cfg.data.max_train_samples
    if 0 < n < len(train.texts):
        train, _ = split_table(train, n, cfg.seed)
    return train, val, label_names


def check_labels(workdir: Path, label_names: list[str]) -> None:
    """A run dir keeps its label map: resuming with other labels is an error."""
    path = workdir / run_dir.LABELS
    if path.is_file() and tables.load_labels(path) != label_names:
        raise UserError(
            f"{path} has labels {tables.load_labels(path)} but the training file gives "
            f"{label_names}; train into a new workdir (--config.workdir=...)"
        )


def micro_batches(batches: batches.TrainBatches, step: int, n: int, pad: int) -> dict:
    """Batch ``step`` as ``n`` micro-batches [n, B, ...] padded to one length bucket."""
    parts = [batches(step * n + i) for i in range(n)]
    width = max(p["input_ids"].shape[1] for p in parts)
    for p in parts:
        extra = width - p["input_ids"].shape[1]
        if extra:
            p["input_ids"] = np.pad(p["input_ids"], ((0, 0), (0, extra)), constant_values=pad)
            p["attention_mask"] = np.pad(p["attention_mask"], ((0, 0), (0, extra)))
    return {k: np.stack([p[k] for p in parts]) for k in parts[0]}
