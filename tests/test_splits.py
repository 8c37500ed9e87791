"""Which files a run uses: data.split of one file, and the resolved config.json of a run."""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path

import pandas as pd
import pytest
from test_loggers import read_scalars

from jaxcls import evaluate_run
from jaxcls.config import load_config, parse_split, validate_config
from jaxcls.data import splits, tables
from jaxcls.errors import UserError
from jaxcls.train import trainer

TINY = Path(__file__).resolve().parents[1] / "configs" / "tiny.py"
WORDS = {"neg": ["bad", "awful", "poor"], "pos": ["good", "great", "fine"], "mid": ["okay", "so"]}
# A tiny run: one length bucket, two steps, one validation.
RUN = ["data.max_length=16", "train.max_steps=2", "train.eval_every=2", "model.train_base=false"]


def write_file(path: Path, n_per_class: int, seed: int = 0) -> Path:
    rng = random.Random(seed)
    rows = [
        {"text": " ".join(rng.choice(words) for _ in range(4)), "label": label}
        for label, words in WORDS.items()
        for _ in range(n_per_class)
    ]
    rng.shuffle(rows)
    pd.DataFrame(rows).to_excel(path, index=False)
    return path


def test_split_parts_are_stratified_seeded_and_disjoint(tmp_path):
    table = tables.read_table(write_file(tmp_path / "all.xlsx", 20))
    parts = splits.split_parts(table, [0.8, 0.1, 0.1], seed=3)
    assert {k: len(p.texts) for k, p in parts.items()} == {"train": 48, "val": 6, "test": 6}
    rows = [r for p in parts.values() for r in p.rows.tolist()]
    assert sorted(rows) == sorted(table.rows.tolist())  # every row once
    for part in parts.values():  # stratified: each class in its share
        assert {label: part.labels.count(label) for label in WORDS} == dict.fromkeys(
            WORDS, len(part.texts) // 3
        )
    again = splits.split_parts(table, [0.8, 0.1, 0.1], seed=3)
    assert all(again[k].rows.tolist() == p.rows.tolist() for k, p in parts.items())
    other = splits.split_parts(table, [0.8, 0.1, 0.1], seed=4)
    assert other["test"].rows.tolist() != parts["test"].rows.tolist()
    two = splits.split_parts(table, [0.9, 0.1], seed=3)
    assert {k: len(p.texts) for k, p in two.items()} == {"train": 54, "val": 6}


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["data.split=0.8,0.3"], r"'data\.split' is '0\.8,0\.3'; give 2 or 3 fractions"),
        (["data.split=0.8"], r"'data\.split' is '0\.8'"),
        (["data.split=a,b"], r"'data\.split' is 'a,b'"),
        (["data.split=0.8,0.1,0.1"], r"'data\.split' splits data\.train; set data\.train"),
        (
            ["data.split=0.8,0.1,0.1", "data.train=t.xlsx", "data.val=v.xlsx"],
            r"leave data\.val and data\.test empty",
        ),
    ],
)
def test_data_split_is_validated(overrides, message):
    with pytest.raises(UserError, match=message):
        validate_config(load_config(TINY, overrides))


def test_parse_split():
    assert parse_split("") == [] and parse_split(" 0.8, 0.1,0.1 ") == [0.8, 0.1, 0.1]


def test_one_file_is_enough(tmp_path, monkeypatch, caplog):
    """data.split makes train/val/test from one file; the run dir keeps the parts, config.json
    names them, the final evaluation finds the test part, and the run resumes."""
    source = write_file(tmp_path / "all.xlsx", 10)
    monkeypatch.chdir(tmp_path)  # workdir "" = runs/tiny, relative to the working dir
    cfg = load_config(TINY, [*RUN, f"data.train={source}", "data.split=0.6,0.2,0.2"])
    result = trainer.train_and_evaluate(cfg)
    run = tmp_path / "runs" / "tiny"
    assert Path(result["workdir"]).absolute() == run
    saved = json.loads((run / "config.json").read_text())
    assert saved["workdir"] == str(run)
    assert saved["data"]["split"] == ""
    parts = {k: pd.read_csv(run / "data" / f"{k}.csv") for k in ("train", "val", "test")}
    for name, frame in parts.items():
        assert saved["data"][name] == str(run / "data" / f"{name}.csv")
        assert list(frame.columns) == ["text", "label", "source_row"]
    assert {k: len(f) for k, f in parts.items()} == {"train": 18, "val": 6, "test": 6}
    original = pd.read_excel(source)
    test = parts["test"]
    assert original.iloc[test["source_row"] - 2]["text"].tolist() == test["text"].tolist()
    meta = json.loads((run / "data" / "split.json").read_text())
    assert meta == {
        "source": str(source),
        "split": "0.6,0.2,0.2",
        "seed": 0,
        "rows": {"train": 18, "val": 6, "test": 6},
    }
    evaluate_run.evaluate_after_training(cfg, result["workdir"])
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    assert metrics["num_samples"] == 6
    assert metrics["meta"]["data_file"] == str(run / "data" / "test.csv")
    # The same command again resumes the finished run (config.json's data paths differ from
    # the command's, which is fine: resume compares the model keys only).
    with caplog.at_level(logging.INFO, logger="jaxcls"):
        trainer.Trainer(cfg).fit()
    assert "resumed from" in caplog.text and "checkpoints/2" in caplog.text
    assert json.loads((run / "config.json").read_text()) == saved
    # TensorBoard (on by default) holds metrics.jsonl's scalars, each once after the resume.
    scalars = read_scalars(run / "tensorboard")
    want = {}
    for event in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()):
        for key, value in event.items():
            if key not in ("step", "split") and value is not None:
                want[(f"{event['split']}/{key}", event["step"])] = [pytest.approx(value, rel=1e-6)]
    assert scalars == want
    for tag in ("train/loss", "train/lr", "train/con_weight", "train/temperature", "val/loss"):
        assert (tag, 2) in scalars


def test_config_json_names_the_demo_files_and_workdir(tmp_path, monkeypatch, caplog):
    """With data.train empty the run uses the demo files; config.json says which, and where the
    run is, and the same command resumes it."""
    demo = {s: write_file(tmp_path / f"{s}.xlsx", n, i) for i, (s, n) in enumerate(
        [("train", 8), ("val", 3), ("test", 3)]
    )}  # fmt: skip
    monkeypatch.setattr(splits, "ensure_demo_data", lambda: demo)
    monkeypatch.chdir(tmp_path)
    cfg = load_config(TINY, RUN)
    assert cfg.data.train == "" and cfg.workdir == ""
    trainer.train_and_evaluate(cfg)
    run = tmp_path / "runs" / "tiny"
    saved = json.loads((run / "config.json").read_text())
    assert saved["workdir"] == str(run)
    assert {k: saved["data"][k] for k in demo} == {k: str(v) for k, v in demo.items()}
    with caplog.at_level(logging.INFO, logger="jaxcls"):
        trainer.Trainer(cfg).fit()
    assert "resumed from" in caplog.text
