"""Tokenized datasets and fixed-shape batches for training and evaluation.

A batch is a dict of numpy arrays (B = batch size, T = a length bucket):

- ``input_ids``      [B, T] int32, right-padded with the tokenizer's pad id
- ``attention_mask`` [B, T] int32, 1 on real tokens, 0 on padding
- ``labels``         [B]    int32, class index (0 when the dataset has no labels); a
                     multi-label dataset's [B, C] int32 label indicators
- ``valid``          [B]    float32, 1.0 for real samples, 0.0 for padding rows

T is the smallest bucket (powers of two from 16, plus max_length) that holds the batch's
longest sequence, so jit compiles once per bucket. Padding rows copy the batch's first sample,
so every row computes finite values; ``valid`` masks them out of losses and metrics.

Which samples form training batch ``step`` is a pure function of (seed, step), so a resumed
run sees the same batches as an uninterrupted one.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from jaxcls.data.label_sets import encode
from jaxcls.data.tables import Table
from jaxcls.data.tokenizer import tokenize_rows
from jaxcls.errors import UserError

log = logging.getLogger("jaxcls")

Batch = dict[str, np.ndarray]
SAMPLERS = ("random", "balanced")


@dataclass(frozen=True)
class Dataset:
    """Token ids (int32, unpadded, at most max_length each) and labels (int32 or None): class
    indices [N], or label indicators [N, C] for a multi-label table.

    With ``data.long_text = windows`` a sequence is a window of a row: ``row_index`` [W] gives
    its row (windows of a row are consecutive) and ``labels`` are the rows' labels per window.
    """

    ids: list[np.ndarray]
    labels: np.ndarray | None
    row_index: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def lengths(self) -> np.ndarray:
        return np.fromiter((len(x) for x in self.ids), dtype=np.int64, count=len(self.ids))

    @property
    def n_rows(self) -> int:
        """Rows (texts) of the table; fewer than ``len(self)`` when texts were split."""
        return len(self) if self.row_index is None else int(self.row_index.max(initial=-1)) + 1

    @property
    def row_labels(self) -> np.ndarray | None:
        """One label per row (the first window's)."""
        if self.labels is None or self.row_index is None:
            return self.labels
        return self.labels[np.searchsorted(self.row_index, np.arange(self.n_rows))]


def make_dataset(
    table: Table, tokenizer, label_names: Sequence[str] | None, max_length: int, template: str = "",
    long_text: str = "truncate", stride: int = 0,
) -> Dataset:  # fmt: skip
    """Tokenize a table once (``tokenize_rows``); labels are encoded when ``label_names`` is
    given (``label_sets.encode``), and every window of a row carries the row's labels."""
    ids, row_index = tokenize_rows(
        table.texts, tokenizer, max_length, template, str(table.path), long_text, stride
    )
    labels = None if label_names is None else encode(table, label_names)
    if labels is not None and row_index is not None:
        labels = labels[row_index]
    return Dataset(ids=ids, labels=labels, row_index=row_index)


def buckets(max_length: int, smallest: int = 16) -> tuple[int, ...]:
    """Length buckets: powers of two from ``smallest`` below max_length, then max_length."""
    sizes = []
    size = smallest
    while size < max_length:
        sizes.append(size)
        size *= 2
    return (*sizes, max_length)


def bucket_of(longest: int, max_length: int) -> int:
    """The smallest bucket that holds ``longest`` tokens."""
    return next(b for b in buckets(max_length) if b >= longest)


def collate(
    dataset: Dataset, indices: np.ndarray, pad: int, max_length: int, width: int | None = None
) -> Batch:
    """One batch from sample indices; -1 marks a padding row. ``width``: pad to this bucket
    instead of the smallest one that holds the batch (see :func:`merge_rare_buckets`)."""
    indices = np.asarray(indices)
    valid = indices >= 0
    if not valid.any():
        raise ValueError("a batch needs at least one real sample")
    rows = np.where(valid, indices, indices[valid][0])
    seqs = [dataset.ids[i] for i in rows]
    longest = max(len(s) for s in seqs)
    width = width or bucket_of(longest, max_length)
    if width < longest:
        raise ValueError(f"width {width} < the batch's longest sequence ({longest} tokens)")
    input_ids = np.full((len(rows), width), pad, dtype=np.int32)
    attention_mask = np.zeros((len(rows), width), dtype=np.int32)
    for r, seq in enumerate(seqs):
        input_ids[r, : len(seq)] = seq
        attention_mask[r, : len(seq)] = 1
    labels = np.zeros(len(rows), np.int32) if dataset.labels is None else dataset.labels[rows]
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "labels": labels.astype(np.int32),
        "valid": valid.astype(np.float32),
    }


def steps_per_epoch(n: int, batch_size: int) -> int:
    """Batches per epoch for either sampler: ceil(n / batch_size)."""
    return -(-n // batch_size)


def balanced_shape(num_classes: int, batch_size: int) -> tuple[int, int]:
    """(P, K) for the balanced sampler: K = max(2, batch_size // num_classes), P = batch_size // K.

    P is capped by the number of classes; the batch_size - P*K rows left over go one each to
    the first classes of the batch, so every row is a real sample.
    """
    k = max(2, batch_size // num_classes)
    return min(num_classes, batch_size // k), k


class _Cycler:
    """Endless stream over ``items``: one fresh permutation after another."""

    def __init__(self, items: np.ndarray, rng: np.random.Generator):
        self.items, self.rng, self.buffer = items, rng, np.empty(0, dtype=np.int64)

    def take(self, n: int) -> np.ndarray:
        while len(self.buffer) < n:
            self.buffer = np.concatenate([self.buffer, self.rng.permutation(self.items)])
        out, self.buffer = self.buffer[:n], self.buffer[n:]
        return out


def epoch_plan(
    labels: np.ndarray, batch_size: int, seed: int, epoch: int, sampler: str = "random"
) -> np.ndarray:
    """Sample indices [steps_per_epoch, batch_size] of one epoch (-1 = padding row).

    ``random``: a permutation of all samples, every sample once; the last batch padded.
    ``balanced``: P classes x K samples per batch (see :func:`balanced_shape`), drawn from
    per-class permutation streams, so every sample has a same-class partner in its batch; a
    class with fewer than K samples repeats samples within a batch (with replacement).
    """
    n = len(labels)
    steps = steps_per_epoch(n, batch_size)
    rng = np.random.default_rng([seed, epoch])
    if sampler == "random":
        plan = np.full(steps * batch_size, -1, dtype=np.int64)
        plan[:n] = rng.permutation(n)
        return plan.reshape(steps, batch_size)
    if sampler != "balanced":
        raise UserError(f"data.sampler must be one of {', '.join(SAMPLERS)}, got {sampler!r}")
    if batch_size < 2:
        raise UserError("data.sampler=balanced needs train.batch_size >= 2")
    classes = np.unique(labels)
    p, k = balanced_shape(len(classes), batch_size)
    streams = [_Cycler(np.flatnonzero(labels == c), rng) for c in classes]
    plan = np.empty((steps, batch_size), dtype=np.int64)
    for s in range(steps):
        chosen = rng.choice(len(classes), size=p, replace=False)
        counts = np.full(p, k)
        counts[: batch_size - p * k] += 1
        plan[s] = np.concatenate([streams[c].take(m) for c, m in zip(chosen, counts, strict=True)])
    return plan


def length_grouped_plan(
    lengths: np.ndarray, batch_size: int, max_length: int, seed: int, epoch: int
) -> np.ndarray:
    """Sample indices [steps_per_epoch, batch_size] of one epoch (-1 = padding row), samples of
    the same length bucket together, so each batch pads to its own bucket rather than to the
    longest of a random mix; the batches in a seeded random order."""
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths))
    bucket = np.searchsorted(buckets(max_length), lengths)  # index of the smallest that holds it
    order = order[np.argsort(bucket[order], kind="stable")]
    plan = np.full(steps_per_epoch(len(lengths), batch_size) * batch_size, -1, dtype=np.int64)
    plan[: len(order)] = order
    plan = plan.reshape(-1, batch_size)
    return plan[rng.permutation(len(plan))]


def merge_rare_buckets(widths: np.ndarray, min_batches: int) -> np.ndarray:
    """``widths`` with each bucket used by fewer than ``min_batches`` batches raised to the
    next larger bucket that stays (the largest always stays).

    Every bucket costs one compilation of the training step (11-12 s for the cpu-small
    benchmark step, more for deeper models); a bucket that a handful of batches use, such as
    the short last batch of an epoch, costs more to compile than its padding saves.
    """
    values, counts = np.unique(widths, return_counts=True)
    kept = values[(counts >= min_batches) | (values == values.max())]
    return kept[np.searchsorted(kept, widths)]


class TrainBatches:
    """Training batches by absolute step: epoch = step // steps_per_epoch (exact resume).

    Each batch is padded to its length bucket, except buckets that fewer than
    ``min_bucket_batches`` batches of the epoch use: those batches take the next larger bucket
    that stays (:func:`merge_rare_buckets`). The choice is a function of the epoch's plan, so a
    resumed run pads every batch as the uninterrupted run did.
    """

    def __init__(
        self, dataset: Dataset, batch_size: int, seed: int, sampler: str, pad: int,
        max_length: int, min_bucket_batches: int = 1, token_dropout: float = 0.0,
    ):  # fmt: skip
        if dataset.labels is None:
            raise ValueError("training needs a labelled dataset")
        self.dataset, self.batch_size, self.seed, self.sampler = dataset, batch_size, seed, sampler
        self.pad, self.max_length, self.min_bucket_batches = pad, max_length, min_bucket_batches
        self.token_dropout = token_dropout
        self.steps_per_epoch = steps_per_epoch(len(dataset), batch_size)
        self._epoch, self._plan = -1, np.empty((0, batch_size), dtype=np.int64)
        self._widths = np.empty(0, dtype=np.int64)
        if sampler == "balanced":
            classes, counts = np.unique(dataset.labels, return_counts=True)
            p, k = balanced_shape(len(classes), batch_size)
            log.info("balanced sampler: %d classes x %d samples per batch", p, k)
            small = classes[counts < k]
            if small.size:
                log.info(
                    "balanced sampler: classes %s have fewer than %d samples; sampled with "
                    "replacement", small.tolist(), k,
                )  # fmt: skip

    def width(self, step: int) -> int:
        """The length bucket batch ``step`` is padded to."""
        return self._plan_of(step)[1]

    def _plan_of(self, step: int) -> tuple[np.ndarray, int]:
        epoch, b = divmod(step, self.steps_per_epoch)
        if epoch != self._epoch:
            labels = self.dataset.labels
            self._plan = epoch_plan(labels, self.batch_size, self.seed, epoch, self.sampler)
            lengths = self.dataset.lengths
            longest = [lengths[row[row >= 0]].max() for row in self._plan]
            own = np.array([bucket_of(n, self.max_length) for n in longest])
            self._widths = merge_rare_buckets(own, self.min_bucket_batches)
            self._epoch = epoch
        return self._plan[b], int(self._widths[b])

    def __call__(self, step: int) -> Batch:
        indices, width = self._plan_of(step)
        batch = collate(self.dataset, indices, self.pad, self.max_length, width)
        if self.token_dropout > 0:
            rng = np.random.default_rng([self.seed, step, TOKEN_DROPOUT_STREAM])
            batch["input_ids"] = drop_tokens(batch, self.token_dropout, self.pad, rng)
        return batch


# Seeds token dropout's generator apart from the epoch plans' (seed, epoch) streams.
TOKEN_DROPOUT_STREAM = 1


def drop_tokens(batch: Batch, rate: float, pad: int, rng: np.random.Generator) -> np.ndarray:
    """Token ("word") dropout: each real token's id replaced by ``pad`` with probability
    ``rate``; the attention mask, and so the positions and the pooled token, stay."""
    drop = (rng.random(batch["input_ids"].shape) < rate) & (batch["attention_mask"] > 0)
    return np.where(drop, pad, batch["input_ids"]).astype(batch["input_ids"].dtype)


def eval_batches(dataset: Dataset, batch_size: int, pad: int, max_length: int) -> Iterator[Batch]:
    """Every sample once, in order; the last batch padded with valid=0 rows."""
    plan = np.full(steps_per_epoch(len(dataset), batch_size) * batch_size, -1, dtype=np.int64)
    plan[: len(dataset)] = np.arange(len(dataset))
    for indices in plan.reshape(-1, batch_size):
        yield collate(dataset, indices, pad, max_length)


def micro_batches(batches: TrainBatches, step: int, n: int, pad: int) -> dict:
    """Batch ``step`` as ``n`` micro-batches [n, B, ...] padded to one length bucket."""
    parts = [batches(step * n + i) for i in range(n)]
    width = max(p["input_ids"].shape[1] for p in parts)
    for p in parts:
        extra = width - p["input_ids"].shape[1]
        if extra:
            p["input_ids"] = np.pad(p["input_ids"], ((0, 0), (0, extra)), constant_values=pad)
            p["attention_mask"] = np.pad(p["attention_mask"], ((0, 0), (0, extra)))
    return {k: np.stack([p[k] for p in parts]) for k in parts[0]}
