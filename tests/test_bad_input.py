"""Bad input through the real entry points: one ``error:`` line naming the file, row, column or
key and what to do, exit code 2, no traceback, and nothing written over a good run.

Every failing command points at the session's reference run (a finished run dir), which must
be byte-identical afterwards. The runs are forked from a zygote (tests/helpers_e2e.py), so a
case costs its own work, not Python's imports.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import helpers_e2e as e2e
import pandas as pd
import pytest


@pytest.fixture(scope="module")
def zygote(tmp_path_factory):
    return e2e.shared_zygote(tmp_path_factory)


@pytest.fixture(scope="module")
def good(tmp_path_factory, make_hf_model) -> e2e.Reference:
    return e2e.reference_run(tmp_path_factory, make_hf_model())


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """One bad file (or dir) per case."""
    d = tmp_path_factory.mktemp("bad")
    rows = e2e.make_rows(4, ("neg", "pos"))
    corrupt = d / "corrupt.xlsx"
    corrupt.write_bytes(os.urandom(3000))
    (d / "zero.xlsx").write_bytes(b"")
    (d / "a_dir.xlsx").mkdir()
    (d / "notes.txt").write_text("text,label\nhi,pos\n")
    llama = d / "llama"
    llama.mkdir()
    (llama / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 64}))
    return {
        "corrupt": corrupt,
        "dir": d / "a_dir.xlsx",
        "zero": d / "zero.xlsx",
        "txt": d / "notes.txt",
        "header_only": _header_only(d / "header_only.xlsx"),
        "no_text": e2e.write_table(
            d / "no_text.xlsx", [{"body": r["text"], "label": r["label"]} for r in rows]
        ),
        "no_label": e2e.write_table(d / "no_label.xlsx", [{"text": r["text"]} for r in rows]),
        "empty_texts": e2e.write_table(d / "empty.xlsx", [{"text": "", "label": "pos"}] * 3),
        "one_class": e2e.write_table(d / "one.xlsx", e2e.make_rows(4, ("pos",))),
        "unseen": e2e.write_table(d / "unseen.xlsx", rows + [{"text": "meh", "label": "mid"}]),
        "three": e2e.write_table(d / "three.xlsx", e2e.make_rows(4, ("neg", "pos", "mid"))),
        "only_unseen": e2e.write_table(d / "only_unseen.xlsx", e2e.make_rows(4, ("mid",))),
        "llama": llama,
    }


def _header_only(path: Path) -> Path:
    pd.DataFrame(columns=["text", "label"]).to_excel(path, index=False)
    return path


def _cases(good: e2e.Reference, f: dict[str, Path], tmp: Path) -> dict:
    """id -> (script, args, env, fragments the error line must contain)."""
    run = good.workdir

    def train_with(*overrides: str, **data: Path) -> list[str]:
        return good.train_args(None, *overrides, **data)

    missing = tmp / "missing" / "train.xlsx"
    relabelled = tmp / "relabelled"
    shutil.copytree(run, relabelled)
    (relabelled / "labels.json").write_text(json.dumps(["neg", "pos", "mid"]))
    two = {"XLA_FLAGS": f"{os.environ['XLA_FLAGS']} --xla_force_host_platform_device_count=2"}
    cases = {
        "missing file": ("train.py", train_with(train=missing), {}, [str(missing), "no such file"]),
        "directory": ("train.py", train_with(train=f["dir"]), {}, [str(f["dir"]), "directory"]),
        "extension": ("train.py", train_with(train=f["txt"]), {}, ["'.txt'", ".xlsx"]),
        "corrupt xlsx": (
            "train.py", train_with(train=f["corrupt"]), {}, [str(f["corrupt"]), "valid .xlsx"],
        ),
        "zero bytes": ("train.py", train_with(train=f["zero"]), {}, [str(f["zero"]), "is empty"]),
        "no rows": ("train.py", train_with(train=f["header_only"]), {}, ["no data rows"]),
        "no text column": (
            "train.py", train_with(train=f["no_text"]), {}, ["no text column among: body, label"],
        ),
        "no label column": (
            "train.py", train_with(train=f["no_label"]), {}, ["no label column", "text"],
        ),
        "named column missing": (
            "train.py", train_with("--config.data.text_column=msg"), {},
            ["no column 'msg'", "data.text_column", "among: text, label"],
        ),
        "all texts empty": (
            "train.py", train_with(train=f["empty_texts"]), {}, ["no rows left", "'text'"],
        ),
        "one class": (
            "train.py", train_with(train=f["one_class"]), {}, ["only one class", "'pos'"],
        ),
        "unseen val label": (
            "train.py", train_with(val=f["unseen"]), {}, [str(f["unseen"]), "'mid' (row 10)"],
        ),
        "batch vs devices": (
            "train.py", train_with("--config.train.batch_size=3"), two,
            ["'train.batch_size' is 3", "2 devices", "multiple of 2"],
        ),
        "mistyped key": (
            "train.py", train_with("--config.train.batch_sise=4"), {},
            ["unknown config key 'train.batch_sise'", "did you mean 'train.batch_size'"],
        ),
        "wrong type": (
            "train.py", train_with("--config.train.batch_size=four"), {},
            ["'train.batch_size' expects int", "'four'"],
        ),
        "other adapter shape": (
            "train.py", train_with("--config.lora.rank=8"), {},
            [str(run), "lora.rank=4 (now 8)", "new workdir"],
        ),
        "other labels": (
            "train.py", train_with(train=f["three"]), {},
            ["labels.json has labels ['neg', 'pos']", "['mid', 'neg', 'pos']", "new workdir"],
        ),
        "resume off": (
            "train.py", train_with("--config.train.resume=false"), {},
            ["has checkpoints", "train.resume"],
        ),
        "other architecture": (
            "train.py",
            good.train_args(tmp / "new", f"--config.model.path={f['llama']}"),
            {},
            ["model_type 'llama'", "Qwen3"],
        ),
        "convert other architecture": (
            "-m jaxcls.convert", ["--hf", str(f["llama"]), "--out", str(tmp / "conv")], {},
            ["model_type 'llama'"],
        ),
        "ckpt names nothing": (
            "eval.py", ["--workdir", str(run), "--ckpt", "99", "--data", str(good.data["val"])],
            {},
            ["--ckpt '99' names no checkpoint", "best, latest"],
        ),
        "no run dir": (
            "eval.py", ["--workdir", str(tmp / "nowhere")], {}, ["no such run directory"],
        ),
        "eval with other labels": (
            "eval.py", ["--workdir", str(relabelled), "--data", str(good.data["val"])], {},
            ["does not fit", "labels.json", "(64, 3)", "(64, 2)"],
        ),
        "eval only unseen labels": (
            "eval.py", ["--workdir", str(run), "--data", str(f["only_unseen"])], {},
            ["no row has a label the run was trained on", "'mid' (row 2, 3, 4, ...)"],
        ),
        "predict ckpt names nothing": (
            "predict.py", ["--workdir", str(run), "--ckpt", "99", "--text", "hi"], {},
            ["names no checkpoint"],
        ),
    }  # fmt: skip
    return cases


def test_odd_cells_and_long_texts_train(good):
    """Numbers in the text column become strings, and an over-long text is cut with a warning."""
    stderr = good.result.stderr
    assert "19 training / 8 validation texts" in stderr  # 16 + the 3 odd rows
    assert "1 of 19 texts longer than max_length=16 tokens were truncated" in stderr
    assert json.loads((good.workdir / "labels.json").read_text()) == ["neg", "pos"]


def test_bad_inputs_fail_cleanly_and_touch_nothing(zygote, good, files, tmp_path):
    run = good.workdir
    before = e2e.tree_digest(run)
    failures = []
    for name, (script, args, env, fragments) in _cases(good, files, tmp_path).items():
        result = zygote.run(script, *args, env=env, timeout=300)
        try:
            e2e.assert_user_error(result, *fragments)
        except AssertionError as e:
            failures.append(f"{name}: {e}")
        if e2e.tree_digest(run) != before:
            failures.append(f"{name}: changed files in the good run dir")
            before = e2e.tree_digest(run)
    assert not failures, "\n\n".join(failures)
