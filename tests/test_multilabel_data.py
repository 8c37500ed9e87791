"""Multi-label data: label sets from data.label_sep or data.label_columns, the config's checks,
and bad input that stops an entry point with exit 2 before any training."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers_e2e import TINY, assert_user_error, run_entry

from jaxcls.config import load_config, validate_config
from jaxcls.data import batches, label_sets, splits
from jaxcls.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
SEP = label_sets.LabelFormat(sep="|")
COLUMNS = label_sets.LabelFormat(columns=("billing", "refund", "late"))


def write(path: Path, rows: list[dict]) -> Path:
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_label_sep_reads_sets_and_encodes_indicators(tmp_path):
    rows = [
        {"text": "a", "label": "refund|billing"},
        {"text": "b", "label": " billing "},
        {"text": "", "label": "late"},  # no text: dropped, as in single-label files
        {"text": "c", "label": "late|refund|late"},
    ]
    table = label_sets.read_labelled(write(tmp_path / "t.csv", rows), "", "", SEP)
    assert table.multi_label and table.texts == ["a", "b", "c"]
    assert [label_sets.label_set(x) for x in table.labels] == [
        ["billing", "refund"], ["billing"], ["late", "refund"],
    ]  # fmt: skip
    names = label_sets.build_label_map(table, SEP)
    assert names == ["billing", "late", "refund"]
    expected = np.array([[1, 0, 1], [1, 0, 0], [0, 1, 1]], np.int32)
    np.testing.assert_array_equal(label_sets.encode(table, names), expected)


def test_label_columns_read_in_config_order(tmp_path):
    rows = [
        {"review": "a", "billing": 1, "refund": 0, "late": 1, "other": "x"},
        {"review": "b", "billing": "0", "refund": "true", "late": 0.0, "other": ""},
        {"review": "c", "billing": 0, "refund": 0, "late": 0, "other": ""},  # no label: kept
    ]
    table = label_sets.read_labelled(write(tmp_path / "t.csv", rows), "", "", COLUMNS)
    names = label_sets.build_label_map(table, COLUMNS)
    assert names == ["billing", "refund", "late"] and table.text_column == "review"
    expected = np.array([[1, 0, 1], [0, 1, 0], [0, 0, 0]], np.int32)
    np.testing.assert_array_equal(label_sets.encode(table, names), expected)
    # data.split writes the parts back in the same form, and they read back the same.
    cells = label_sets.label_cells(table, COLUMNS)
    assert cells == {"billing": [1, 0, 0], "refund": [0, 1, 0], "late": [1, 0, 0]}


def test_batches_carry_indicator_labels_and_padding_rows(tmp_path, tokenizer_dir):
    from jaxcls.data.tokenizer import load_tokenizer

    rows = [{"text": f"t {i}", "label": "x|y" if i % 2 else "y"} for i in range(5)]
    table = label_sets.read_labelled(write(tmp_path / "t.csv", rows), "", "", SEP)
    data = batches.make_dataset(table, load_tokenizer(tokenizer_dir), ["x", "y"], 16)
    batch = list(batches.eval_batches(data, 4, 0, 16))[-1]
    assert batch["labels"].shape == (4, 2) and batch["labels"].dtype == np.int32
    np.testing.assert_array_equal(batch["valid"], [1, 0, 0, 0])
    np.testing.assert_array_equal(batch["labels"][0], [0, 1])


def test_unseen_labels_of_a_file_to_evaluate(tmp_path):
    rows = [{"text": "a", "label": "x|new"}, {"text": "b", "label": "y"}]
    table = label_sets.read_labelled(write(tmp_path / "t.csv", rows), "", "", SEP)
    assert label_sets.check_some_known(table, ["x", "y"]) == {"new": [2]}
    assert label_sets.known_rows(table, ["x", "y"]).texts == ["b"]
    with pytest.raises(UserError, match="'new'"):
        label_sets.encode(table, ["x", "y"])


@pytest.mark.parametrize(
    ("fmt", "rows", "fragments"),
    [
        (SEP, [{"text": "a", "label": "x||y"}], ["row 2", "'x||y'", "data.label_sep"]),
        (SEP, [{"text": "a", "label": "x"}, {"text": "b", "label": "|"}], ["row 3", "'|'"]),
        (COLUMNS, [{"text": "a", "billing": 1, "refund": 2, "late": 0}], ["row 2", "'refund'"]),
        (COLUMNS, [{"text": "a", "billing": 1, "refund": "", "late": 0}], ["row 2", "hold 1"]),
        (COLUMNS, [{"text": "a", "billing": 1}], ["'refund', 'late'", "data.label_columns"]),
    ],
)
def test_bad_label_cells_name_file_and_row(tmp_path, fmt, rows, fragments):
    path = write(tmp_path / "bad.csv", rows)
    with pytest.raises(UserError) as err:
        label_sets.read_labelled(path, "", "", fmt)
    for fragment in [str(path), *fragments]:
        assert fragment in str(err.value)


def test_single_label_set_in_training_is_an_error(tmp_path):
    path = write(tmp_path / "t.csv", [{"text": "a", "label": "x"}, {"text": "b", "label": "x"}])
    with pytest.raises(UserError, match="at least 2"):
        label_sets.build_label_map(label_sets.read_labelled(path, "", "", SEP), SEP)


def test_read_inputs_holds_out_validation_rows(tmp_path):
    rows = [{"text": f"t{i}", "label": ["a|b", "a", "b|c"][i % 3]} for i in range(30)]
    cfg = load_config(
        ROOT / TINY,
        ["model.problem=multi_label", "data.label_sep=|", f"data.train={tmp_path / 't.csv'}"],
    )
    write(tmp_path / "t.csv", rows)
    inputs = splits.read_inputs(cfg.data, 0)
    assert inputs.label_names == ["a", "b", "c"]
    assert len(inputs.train.texts) + len(inputs.val.texts) == 30 and inputs.val.multi_label


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        (["model.problem=multi_label"], "data.label_sep"),
        (["data.label_sep=|"], "model.problem=multi_label"),
        (["model.problem=multi_label", "data.label_sep=|", "data.sampler=balanced"], "sampler"),
        (["model.problem=multi_label", "data.label_sep=|", "contrastive.loss=margin"], "margin"),
        (["model.problem=multi_label", "data.label_sep=|", "loss.focal_alpha=balanced"], "(0, 1]"),
        (["model.problem=multi_label", "data.label_sep=|", "train.best_metric=val/accuracy"],
         "val/subset_accuracy"),
        (["model.problem=multi_label", "data.label_columns=a,b", "data.label_column=y"],
         "keep one"),
        (["model.problem=multi"], "single_label, multi_label"),
    ],
)  # fmt: skip
def test_config_rejects_combinations(overrides, fragment):
    cfg = load_config(ROOT / TINY, overrides)
    with pytest.raises(UserError) as err:
        validate_config(cfg)
    assert fragment in str(err.value)


def test_config_accepts_multi_label():
    for extra in (["data.label_sep=|"], ["data.label_columns=a,b", "loss.focal_alpha=0.25,0.75"]):
        validate_config(load_config(ROOT / TINY, ["model.problem=multi_label", *extra]))


def test_train_entry_point_exits_2_on_a_bad_cell(tmp_path):
    rows = [{"text": "a", "label": "x|"}, {"text": "b", "label": "y"}]
    train = write(tmp_path / "train.csv", rows)
    result = run_entry(
        "train.py", "--config", TINY, "--config.model.problem=multi_label",
        "--config.data.label_sep=|", f"--config.data.train={train}",
        f"--config.workdir={tmp_path / 'run'}", timeout=120,
    )  # fmt: skip
    assert_user_error(result, str(train), "row 2", "'x|'")
    assert not (tmp_path / "run").exists()
