"""jaxcls.data.long_text: coverage and sizes of windows, head+tail slices, per-row averaging."""

import numpy as np
import pytest

from jaxcls.data.long_text import (
    auto_mode,
    average_by_row,
    default_head,
    head_tail,
    share_longer,
    window_starts,
    windows,
)

LENGTHS = [0, 1, 7, 8, 9, 16, 17, 23, 64, 101]


@pytest.mark.parametrize("max_length,stride", [(8, 8), (8, 3), (8, 1), (13, 5), (1, 1)])
def test_windows_cover_every_token_within_max_length(max_length, stride):
    # Distinct token values per row, so a token's identity is its position.
    texts = [list(range(1000 * r, 1000 * r + n)) for r, n in enumerate(LENGTHS)]
    out, rows = windows(texts, max_length, stride)
    assert rows.dtype == np.int64 and len(out) == len(rows)
    assert np.all(np.diff(rows) >= 0) and set(rows.tolist()) == set(range(len(texts)))
    for r, ids in enumerate(texts):
        mine = [w for w, row in zip(out, rows, strict=True) if row == r]
        if len(ids) <= max_length:
            assert mine == [ids]
            continue
        # Every window is a contiguous slice of exactly max_length tokens, the first starts the
        # text, the last ends it, and consecutive starts step by `stride` (the last by less).
        starts = [ids.index(w[0]) for w in mine]
        for start, w in zip(starts, mine, strict=True):
            assert w == ids[start : start + max_length]
        assert starts[0] == 0 and starts[-1] == len(ids) - max_length
        assert all(0 < b - a <= stride for a, b in zip(starts, starts[1:], strict=False))
        assert all(b - a == stride for a, b in zip(starts[:-1], starts[1:-1], strict=False))
        covered = sorted({t for w in mine for t in w})
        assert covered == ids


def test_window_count_matches_closed_form():
    for n in range(1, 60):
        for max_length, stride in [(8, 3), (10, 10), (5, 1)]:
            expected = 1 if n <= max_length else -(-(n - max_length) // stride) + 1
            assert len(window_starts(n, max_length, stride)) == expected


@pytest.mark.parametrize("stride", [0, 9, 2.5, True])
def test_windows_reject_bad_stride(stride):
    with pytest.raises(ValueError, match="stride"):
        windows([[1, 2, 3]], 8, stride)


@pytest.mark.parametrize("max_length,head", [(8, None), (8, 0), (8, 8), (8, 3), (1, None), (9, 1)])
def test_head_tail_keeps_head_and_tail_exactly(max_length, head):
    k = default_head(max_length) if head is None else head
    for n in LENGTHS:
        ids = list(range(100, 100 + n))
        out = head_tail(ids, max_length, head)
        if n <= max_length:
            assert out == ids
        else:
            assert len(out) == max_length
            assert out[:k] == ids[:k]
            assert out[k:] == ids[n - (max_length - k) :]


def test_head_tail_default_is_a_quarter_and_rejects_bad_head():
    assert default_head(512) == 128 and default_head(3) == 0
    assert head_tail(range(20), 8) == [0, 1, 14, 15, 16, 17, 18, 19]
    for head in (-1, 9, 1.5):
        with pytest.raises(ValueError, match="head"):
            head_tail(range(20), 8, head)
    with pytest.raises(ValueError, match="max_length"):
        head_tail(range(20), 0)


def test_average_by_row_equals_a_loop():
    rng = np.random.default_rng(0)
    texts = [list(range(n)) for n in (3, 40, 17, 8, 25)]
    _, rows = windows(texts, 8, 5)
    values = rng.normal(size=(len(rows), 7)).astype(np.float32)
    got = average_by_row(values, rows, len(texts))
    assert got.dtype == np.float32 and got.shape == (len(texts), 7)
    for r in range(len(texts)):
        picked = [values[w].astype(np.float64) for w in range(len(rows)) if rows[w] == r]
        expected = sum(picked) / len(picked)
        np.testing.assert_allclose(got[r], expected, rtol=1e-6)
    # Shuffled windows give the same averages; ints widen to float.
    perm = rng.permutation(len(rows))
    np.testing.assert_allclose(average_by_row(values[perm], rows[perm], 5), got, rtol=1e-6)
    assert average_by_row(np.ones((2, 1), np.int32), np.array([0, 1]), 2).dtype == np.float64


def test_average_by_row_rejects_missing_rows_and_bad_shapes():
    with pytest.raises(ValueError, match="without any window"):
        average_by_row(np.zeros((2, 3)), np.array([0, 2]), 3)
    with pytest.raises(ValueError, match="row_index"):
        average_by_row(np.zeros((2, 3)), np.array([0, 3]), 3)
    with pytest.raises(ValueError, match=r"\[W, C\]"):
        average_by_row(np.zeros((2,)), np.array([0, 1]), 2)


@pytest.mark.parametrize("multi_label", [False, True])
def test_window_outputs_average_to_rows_for_both_problems(multi_label):
    from jaxcls.data.batches import Dataset
    from jaxcls.eval.scoring import by_row
    from jaxcls.train.objectives import nll

    rng = np.random.default_rng(3)
    row_index = np.array([0, 0, 0, 1, 2, 2])
    row_labels = np.array([[1, 0, 1], [0, 0, 0], [0, 1, 1]]) if multi_label else np.array([2, 0, 1])
    dataset = Dataset(ids=[np.zeros(1, np.int32)] * 6, labels=row_labels[row_index],
                      row_index=row_index)  # fmt: skip
    raw = {"logits": rng.normal(size=(6, 3)), "features": rng.normal(size=(6, 4))}
    out = by_row(raw, dataset)
    logits = np.stack([raw["logits"][row_index == r].mean(axis=0) for r in range(3)])
    np.testing.assert_allclose(out["logits"], logits, rtol=1e-6)
    # The NLL of the averaged logits, as the eval step computes it per sequence.
    expected = np.asarray(nll(multi_label, logits.astype(np.float32), row_labels))
    np.testing.assert_allclose(out["nll"], expected, rtol=1e-4, atol=1e-5)


def test_auto_reads_in_windows_only_when_most_texts_are_longer_than_max_length():
    assert share_longer([3, 8, 9, 20], 8) == 0.5 and share_longer([], 8) == 0.0
    assert auto_mode([3, 8, 9, 20], 8) == "truncate"  # half: not most
    assert auto_mode([3, 9, 9, 20], 8) == "windows"
    assert auto_mode([8] * 10, 8) == "truncate"  # exactly max_length fits
