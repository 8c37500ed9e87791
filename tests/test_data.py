"""Readers, column detection, cleaning, validation errors and the label map (jaxcls.data.tables)."""

import json
import logging

import numpy as np
import openpyxl
import pandas as pd
import pytest

from jaxcls.data import tables
from jaxcls.errors import UserError
from jaxcls.formats import run_dir

TEXTS = ["这本书很好看", "质量太差了，不推荐", "hello world", "物流很快 👍", "一般般吧"]
LABELS = ["pos", "neg", "pos", "pos", "neg"]


def write(path, frame: pd.DataFrame):
    """Write ``frame`` in the format named by the path's extension, independently of jaxcls."""
    ext = path.suffix
    if ext == ".xlsx":
        frame.to_excel(path, index=False)
    elif ext in (".csv", ".tsv"):
        frame.to_csv(path, index=False, sep="\t" if ext == ".tsv" else ",")
    elif ext == ".jsonl":
        path.write_text(
            "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in frame.to_dict("records")),
            encoding="utf-8",
        )
    elif ext == ".json":
        path.write_text(json.dumps(frame.to_dict("records"), ensure_ascii=False), encoding="utf-8")
    elif ext == ".parquet":
        frame.to_parquet(path)
    return path


def xlsx(path, rows):
    """An xlsx file whose sheet holds exactly ``rows`` (first row = header), None = empty cell."""
    wb = openpyxl.Workbook()
    for row in rows:
        wb.active.append(row)
    wb.save(path)
    return path


@pytest.mark.parametrize("ext", tables.SUPPORTED)
def test_every_format_reads_texts_and_labels(tmp_path, ext):
    path = write(tmp_path / f"d{ext}", pd.DataFrame({"text": TEXTS, "label": LABELS}))
    table = tables.read_table(path)
    assert table.texts == TEXTS
    assert table.labels == LABELS
    assert (table.text_column, table.label_column) == ("text", "label")


def test_json_of_columns(tmp_path):
    path = tmp_path / "d.json"
    path.write_text(json.dumps({"text": TEXTS, "label": LABELS}, ensure_ascii=False))
    assert tables.read_table(path).labels == LABELS


def test_gbk_csv(tmp_path):
    path = tmp_path / "d.csv"
    pd.DataFrame({"text": TEXTS[:2], "label": LABELS[:2]}).to_csv(
        path, index=False, encoding="gb18030"
    )
    assert tables.read_table(path).texts == TEXTS[:2]


@pytest.mark.parametrize(
    "header,text_col,label_col",
    [
        (["Review", "Category"], "", ""),
        (["文本", "标签"], "", ""),
        (["内容", "类别"], "", ""),
        (["id", "SENTENCE", "labels"], "", ""),
        (["body", "y"], "body", "y"),
        (["Body", "Y"], "body", "y"),
    ],
)
def test_column_detection(tmp_path, header, text_col, label_col):
    pairs = zip(TEXTS, LABELS, strict=True)
    rows = [[i, *pair] if len(header) == 3 else list(pair) for i, pair in enumerate(pairs)]
    path = xlsx(tmp_path / "d.xlsx", [header, *rows])
    table = tables.read_table(path, text_col, label_col)
    assert table.texts == TEXTS and table.labels == LABELS


def test_configured_column_missing_lists_columns(tmp_path):
    path = xlsx(tmp_path / "d.xlsx", [["text", "label"], ["a", "x"]])
    with pytest.raises(UserError, match=r"d\.xlsx.*'body'.*data\.text_column.*text, label"):
        tables.read_table(path, text_column="body")
    with pytest.raises(UserError, match=r"d\.xlsx.*'y'.*data\.label_column.*text, label"):
        tables.read_table(path, label_column="y")


def test_no_text_or_label_column_found(tmp_path):
    path = xlsx(tmp_path / "d.xlsx", [["words", "label"], ["a", "x"]])
    with pytest.raises(UserError, match=r"d\.xlsx: no text column among: words, label"):
        tables.read_table(path)
    path = xlsx(tmp_path / "e.xlsx", [["text", "y"], ["a", "x"]])
    with pytest.raises(UserError, match=r"e\.xlsx: no label column among: text, y"):
        tables.read_table(path)


def test_missing_text_and_label_columns_in_one_error(tmp_path):
    path = xlsx(tmp_path / "d.xlsx", [["words", "y"], ["a", "x"]])
    with pytest.raises(UserError) as err:
        tables.read_table(path)
    msg = str(err.value)
    assert "no text column and no label column among: words, y" in msg
    assert "data.text_column" in msg and "data.label_column" in msg and "\n" not in msg
    with pytest.raises(UserError, match=r"no column 'body' \(data\.text_column\) and no label"):
        tables.read_table(path, text_column="body")


@pytest.mark.parametrize("ext", tables.SUPPORTED)
def test_integer_labels_with_a_blank_cell_stay_integers(tmp_path, ext):
    # A blank label cell makes pandas store 0/1/2 as 0.0/1.0/2.0; files written from such a
    # frame hold "0.0" (csv, tsv, json) or float cells (xlsx, parquet).
    labels = [0, 1, 2, None, 1, 2]
    train = write(tmp_path / f"train{ext}", pd.DataFrame({"text": list("abcdef"), "label": labels}))
    assert pd.DataFrame({"label": labels})["label"].dtype == np.float64
    val = write(tmp_path / f"val{ext}", pd.DataFrame({"text": ["g", "h"], "label": [1, 2]}))
    table = tables.read_table(train)
    assert table.labels == ["0", "1", "2", "1", "2"]
    names = tables.build_label_map(table)
    assert names == ["0", "1", "2"]
    np.testing.assert_array_equal(tables.encode_labels(tables.read_table(val), names), [1, 2])


@pytest.mark.parametrize("ext", tables.SUPPORTED)
def test_fractional_labels_stay_as_written(tmp_path, ext):
    frame = pd.DataFrame({"text": list("abc"), "label": [0.5, 1.5, None]})
    assert tables.read_table(write(tmp_path / f"d{ext}", frame)).labels == ["0.5", "1.5"]


def test_numbers_as_text_and_integer_labels(tmp_path):
    rows = [["text", "label"], [123, 10], [1.5, 2], ["abc", 1.0], [7.0, 2]]
    table = tables.read_table(xlsx(tmp_path / "d.xlsx", rows))
    assert table.texts == ["123", "1.5", "abc", "7"]
    assert table.labels == ["10", "2", "1", "2"]
    names = tables.build_label_map(table)
    assert names == ["1", "2", "10"]  # numeric order, not "1" < "10" < "2"
    np.testing.assert_array_equal(tables.encode_labels(table, names), [2, 1, 0, 1])


def test_csv_keeps_texts_verbatim(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("text,label\nNA,a\n007,b\n", encoding="utf-8")
    assert tables.read_table(path).texts == ["NA", "007"]


def test_empty_rows_dropped_with_counts(tmp_path, caplog):
    rows = [
        ["text", "label"],
        ["good", "pos"],  # row 2
        [None, "neg"],  # row 3: no text
        ["   ", "neg"],  # row 4: blank text
        [None, None],  # row 5: blank row, skipped silently
        ["bad", None],  # row 6: no label
        ["fine", "neg"],  # row 7
    ]
    path = xlsx(tmp_path / "d.xlsx", rows)
    with caplog.at_level(logging.WARNING, logger="jaxcls"):
        table = tables.read_table(path)
    assert table.texts == ["good", "fine"]
    np.testing.assert_array_equal(table.rows, [2, 7])
    assert "dropped 2 rows with empty text in column 'text' (row 3, 4)" in caplog.text
    assert "dropped 1 rows with no label in column 'label' (row 6)" in caplog.text


def test_texts_only_keeps_rows_without_labels(tmp_path):
    path = xlsx(tmp_path / "d.xlsx", [["text", "label"], ["a", None], ["b", "x"]])
    table = tables.read_table(path, label_column=None)
    assert table.texts == ["a", "b"] and table.labels is None


def test_jsonl_rows_are_line_numbers(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "a", "label": "x"}\n\n{"text": "b", "label": "q"}\n')
    table = tables.read_table(path)
    np.testing.assert_array_equal(table.rows, [1, 3])
    with pytest.raises(UserError, match=r"d\.jsonl.*'q' \(line 3\)"):
        tables.encode_labels(table, ["x", "y"])


def text_file(name, content):
    """A maker for a file ``name`` holding ``content``."""

    def make(folder):
        (folder / name).write_text(content, encoding="utf-8")
        return folder / name

    return make


def _corrupt(tmp_path):
    path = tmp_path / "bad.xlsx"
    path.write_bytes(np.random.default_rng(0).bytes(2000))
    return path


@pytest.mark.parametrize(
    "make,pattern",
    [
        (lambda p: p / "missing.csv", r"missing\.csv: no such file"),
        (lambda p: p, r"is a directory"),
        (lambda p: xlsx(p / "d.xls", [["text"]]), r"d\.xls: unsupported extension '\.xls'.*\.xlsx"),
        (_corrupt, r"bad\.xlsx: cannot read it as \.xlsx"),
        (lambda p: xlsx(p / "e.xlsx", []), r"e\.xlsx has no header row"),
        (lambda p: xlsx(p / "h.xlsx", [["text", "label"]]), r"h\.xlsx has a header but no data"),
        (text_file("z.csv", ""), r"z\.csv is empty"),
        (
            lambda p: xlsx(p / "n.xlsx", [["text", "label"], [None, "a"], ["", "b"]]),
            r"n\.xlsx: no rows left after dropping 2 with empty text",
        ),
        (
            text_file("j.jsonl", '{"text": "a"}\n{oops\n'),
            r"j\.jsonl: line 2 is not valid JSON",
        ),
        (
            text_file("j.json", '"just a string"'),
            r"j\.json: expected a JSON list of objects",
        ),
    ],
)
def test_bad_files(tmp_path, make, pattern):
    with pytest.raises(UserError, match=pattern):
        tables.read_table(make(tmp_path))


def test_same_text_and_label_column(tmp_path):
    path = xlsx(tmp_path / "s.xlsx", [["text", "label"], ["a", 1]])
    with pytest.raises(UserError, match=r"s\.xlsx: column 'text' is both"):
        tables.read_table(path, "text", "text")


def test_single_class(tmp_path):
    table = tables.read_table(
        xlsx(tmp_path / "d.xlsx", [["text", "label"], ["a", "x"], ["b", "x"]])
    )
    with pytest.raises(UserError, match=r"d\.xlsx: column 'label' has only one class \('x'\)"):
        tables.build_label_map(table)


def test_unseen_labels_name_file_rows_and_labels(tmp_path):
    rows = [["text", "label"], ["a", "x"], ["b", "new"], ["c", "y"], ["d", "new"], ["e", "odd"]]
    table = tables.read_table(xlsx(tmp_path / "val.xlsx", rows))
    with pytest.raises(UserError) as err:
        tables.encode_labels(table, ["x", "y"])
    msg = str(err.value)
    assert "val.xlsx" in msg and "column 'label'" in msg and "\n" not in msg
    assert "'new' (row 3, 5)" in msg and "'odd' (row 6)" in msg


def test_label_map_sorted_and_round_trip(tmp_path):
    table = tables.read_table(
        write(tmp_path / "d.csv", pd.DataFrame({"text": TEXTS, "label": LABELS}))
    )
    names = tables.build_label_map(table)
    assert names == sorted(set(LABELS))
    run_dir.save_labels(tmp_path / "labels.json", names)
    assert run_dir.load_labels(tmp_path / "labels.json") == names
    assert json.loads((tmp_path / "labels.json").read_text()) == names
    expected = [names.index(x) for x in LABELS]
    np.testing.assert_array_equal(tables.encode_labels(table, names), expected)


def test_load_labels_rejects_other_json(tmp_path):
    (tmp_path / "labels.json").write_text('{"a": 1}')
    with pytest.raises(UserError, match="labels.json: expected a JSON list"):
        run_dir.load_labels(tmp_path / "labels.json")
