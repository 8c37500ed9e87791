"""End to end through the real entry points, and exact resume of the training loop."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
WORDS = {
    "好评": ["很好", "满意", "推荐", "great", "love"],
    "差评": ["太差", "失望", "退货", "awful", "broken"],
    "中评": ["一般", "还行", "普通", "okay", "average"],
}


def write_split(folder: Path, n_per_class: int, seed: int) -> dict[str, Path]:
    """Small three-class xlsx files whose classes are separable by their words."""
    rng = np.random.default_rng(seed)
    rows = [
        {"text": "".join(rng.choice(words, size=3)), "label": label}
        for label, words in WORDS.items()
        for _ in range(n_per_class)
    ]
    frame = pd.DataFrame(rows).sample(frac=1.0, random_state=seed).reset_index(drop=True)
    n = len(frame)
    parts = {
        "train": frame[: n // 2],
        "val": frame[n // 2 : 3 * n // 4],
        "test": frame[3 * n // 4 :],
    }
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, part in parts.items():
        paths[name] = folder / f"{name}.xlsx"
        part.to_excel(paths[name], index=False)
    return paths


def run(script: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, str(ROOT / script), *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip


def test_train_eval_predict_through_entry_points(tmp_path):
    paths = write_split(tmp_path / "data", n_per_class=24, seed=0)
    train_args = [
        "--config", str(ROOT / "configs/tiny.py"),
        f"--config.data.train={paths['train']}",
        f"--config.data.val={paths['val']}",
        f"--config.data.test={paths['test']}",
        "--config.train.max_steps=4",
        "--config.train.eval_every=2",
    ]  # fmt: skip
    first = run("train.py", *train_args, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    workdir = tmp_path / "runs" / "tiny"
    assert (tmp_path / "runs" / "LATEST").read_text().strip() == str(workdir.absolute())
    assert json.loads((workdir / "labels.json").read_text()) == sorted(WORDS)
    events = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [e["step"] for e in events if e["split"] == "val"] == [2, 4]
    for name in ("metrics.json", "predictions.xlsx", "report.html", "confusion.png", "tsne.png"):
        assert (workdir / "eval" / name).stat().st_size > 0, name

    evaluated = run("eval.py", "--ckpt", "best", "--out", str(tmp_path / "ev"), cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    result = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    test_rows = len(pd.read_excel(paths["test"]))
    assert result["num_samples"] == test_rows  # evaluation drops no sample
    assert {"accuracy", "macro_f1", "weighted_f1", "per_class"} <= set(result)
    assert "accuracy" in evaluated.stdout and "confusion matrix" in evaluated.stdout
    predicted = pd.read_excel(tmp_path / "ev" / "predictions.xlsx")
    assert len(predicted) == test_rows
    assert np.allclose(predicted[[f"p({n})" for n in sorted(WORDS)]].sum(axis=1), 1.0, atol=1e-5)

    out = tmp_path / "pred.csv"
    predicted = run(
        "predict.py", "--input", str(paths["test"]), "--output", str(out), "--top_k", "2",
        "--json", cwd=tmp_path,
    )  # fmt: skip
    assert predicted.returncode == 0, predicted.stderr[-3000:]
    lines = [json.loads(x) for x in predicted.stdout.splitlines()]
    assert len(lines) == test_rows
    assert lines[0]["label"] in WORDS
    assert abs(sum(lines[0]["probabilities"].values()) - 1.0) < 1e-4
    written = pd.read_csv(out)
    assert list(written.columns) == [
        *pd.read_excel(paths["test"]).columns,
        "pred_label",
        "pred_prob",
        "top2_label",
        "top2_prob",
    ]  # every input column, in order, then the predictions
    assert written["pred_label"].tolist() == [x["label"] for x in lines]


@pytest.fixture(scope="module")
def tiny_cfg(tmp_path_factory):
    from jaxcls.config import load_config

    paths = write_split(tmp_path_factory.mktemp("data"), n_per_class=16, seed=1)
    return load_config(
        ROOT / "configs/tiny.py",
        [
            f"data.train={paths['train']}",
            f"data.val={paths['val']}",
            "train.max_steps=6",
            "train.eval_every=3",
            "train.keep_best=2",
            "contrastive.loss=margin",
        ],
    )


def test_resume_continues_with_the_same_batches_and_losses(tiny_cfg, tmp_path):
    from jaxcls.train.trainer import Trainer

    full = tmp_path / "full"
    Trainer(tiny_cfg, full).fit()
    resumed = tmp_path / "resumed"
    shutil.copytree(full, resumed)
    # Forget everything after step 3, as if the run had stopped there.
    shutil.rmtree(resumed / "checkpoints" / "6")
    trainer = Trainer(tiny_cfg, resumed)
    assert int(trainer.state.step) == 3
    trainer.fit()

    def events(run_dir):  # everything but the wall-clock throughput
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
        return [{k: v for k, v in json.loads(x).items() if k != "tokens_per_s"} for x in lines]

    assert len(events(full)) == 6 + 2
    assert events(resumed) == events(full)
