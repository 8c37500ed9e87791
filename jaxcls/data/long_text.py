"""Texts longer than ``data.max_length`` tokens: head+tail truncation, or overlapping windows.

``data.long_text`` picks one: ``truncate`` (keep the first max_length tokens, the tokenizer's
default), ``head_tail`` (keep the first and last tokens, ``head_tail``), ``windows`` (split each
text into overlapping windows of at most max_length tokens, ``windows``; a window carries its
row's label in training, and a row's prediction averages its windows' logits,
``average_by_row``), or ``auto`` (windows for documents, where more than half of the training
texts are longer than max_length, else truncate: ``auto_mode``).
Everything here works on plain lists of token ids and NumPy arrays; nothing depends on a tokenizer.
"""

from collections.abc import Sequence

import numpy as np


def _check_max_length(max_length: int) -> None:
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1:
        raise ValueError(f"max_length must be a positive integer, got {max_length!r}")


# "auto" reads texts in windows when more than this share of them are longer than max_length.
DOCUMENT_SHARE = 0.5


def share_longer(lengths: Sequence[int], max_length: int) -> float:
    """The share of texts (given by their token counts) longer than ``max_length`` tokens."""
    return sum(n > max_length for n in lengths) / max(1, len(lengths))


def is_documents(share_long: float) -> bool:
    """Whether texts of which ``share_long`` are longer than max_length are documents: read in
    windows by ``auto_mode``, and not pretrained on (``pretrain.skip_truncated``)."""
    return share_long > DOCUMENT_SHARE


def auto_mode(lengths: Sequence[int], max_length: int) -> str:
    """``data.long_text="auto"`` for texts of these token counts: ``windows`` when more than
    half are longer than ``max_length`` (documents: all of each is read), else ``truncate``
    (on the quality suite, windows gained nothing where most texts fit)."""
    return "windows" if is_documents(share_longer(lengths, max_length)) else "truncate"


def default_head(max_length: int) -> int:
    """The head share when none is given: a quarter of max_length (the rest is tail).

    Sun et al., "How to Fine-Tune BERT for Text Classification" (2019), found keeping the first
    128 and the last 382 of 510 tokens best on long reviews, i.e. about a quarter for the head.
    """
    return max_length // 4


def head_tail(ids: Sequence[int], max_length: int, head: int | None = None) -> list[int]:
    """The first ``head`` and the last ``max_length - head`` ids; a text that fits is unchanged."""
    _check_max_length(max_length)
    head = default_head(max_length) if head is None else head
    if isinstance(head, bool) or not isinstance(head, int) or not 0 <= head <= max_length:
        raise ValueError(f"head must be an integer in [0, {max_length}], got {head!r}")
    ids = list(ids)
    if len(ids) <= max_length:
        return ids
    tail = max_length - head
    return ids[:head] + ids[len(ids) - tail :]


def window_starts(length: int, max_length: int, stride: int) -> list[int]:
    """Start offsets of the windows of one text of ``length`` tokens (see ``windows``)."""
    if length <= max_length:
        return [0]
    # Starts step by `stride` while a window would still end before the text does; one last
    # window is then aligned to the end, so the tail is never cut and no window is short.
    last = length - max_length
    return [*range(0, last, stride), last]


def windows(
    ids_list: Sequence[Sequence[int]], max_length: int, stride: int
) -> tuple[list[list[int]], np.ndarray]:
    """Overlapping windows of every text, and the row each window came from.

    ``stride`` is the step between consecutive window starts (1 <= stride <= max_length), so
    consecutive windows share ``max_length - stride`` tokens. (Hugging Face tokenizers call that
    overlap the "stride"; here it is the step.) A text of at most max_length tokens, even an
    empty one, is one window; a longer one gets windows starting at 0, stride, 2*stride, ...
    and a last window ending exactly at the text's end, so every token is in some window and
    every window of a long text has exactly max_length tokens. Windows of a row are consecutive
    and rows keep their order; ``row_index`` [W] (int64) gives the row of each window.
    """
    _check_max_length(max_length)
    if isinstance(stride, bool) or not isinstance(stride, int) or not 1 <= stride <= max_length:
        raise ValueError(
            f"stride must be an integer in [1, max_length={max_length}], got {stride!r}"
        )
    out: list[list[int]] = []
    rows: list[int] = []
    for row, ids in enumerate(ids_list):
        ids = list(ids)
        for start in window_starts(len(ids), max_length, stride):
            out.append(ids[start : start + max_length])
            rows.append(row)
    return out, np.asarray(rows, np.int64)


def average_by_row(values: np.ndarray, row_index: np.ndarray, n_rows: int) -> np.ndarray:
    """[n_rows, C] mean of the rows of ``values`` [W, C] that share a ``row_index`` entry.

    Sums in float64; the result has the dtype of ``values`` widened to at least float32. Every row
    in [0, n_rows) must have a window: a row without one would silently become all zeros.
    """
    values = np.asarray(values)
    row_index = np.asarray(row_index)
    if values.ndim != 2 or row_index.shape != values.shape[:1]:
        raise ValueError(
            f"values must be [W, C] and row_index [W], got {values.shape} and {row_index.shape}"
        )
    if row_index.size and (row_index.min() < 0 or row_index.max() >= n_rows):
        raise ValueError(
            f"row_index must lie in [0, {n_rows}), got {row_index.min()} to {row_index.max()}"
        )
    counts = np.bincount(row_index, minlength=n_rows)
    if np.any(counts == 0):
        missing = np.flatnonzero(counts == 0)[:10].tolist()
        raise ValueError(f"rows without any window (first ones): {missing}")
    sums = np.zeros((n_rows, values.shape[1]), np.float64)
    np.add.at(sums, row_index, values.astype(np.float64))
    out_dtype = np.promote_types(values.dtype, np.float32)
    return (sums / counts[:, None]).astype(out_dtype)
