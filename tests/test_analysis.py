"""Analysis outputs end to end on one tiny run (trainer + evaluation in process).

The run uses progressive training (warmup, then a linear ramp), a cosine temperature and
early stopping on ``val/silhouette``; the tests check what it logged, which checkpoint it
chose, and the files of ``eval/``: all written, readable, and a self-contained report.
"""

from __future__ import annotations

import base64
import html
import html.parser
import json
import math
import random
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib import image as mpimg

from jaxcls import evaluate_run
from jaxcls.config import load_config
from jaxcls.errors import UserError
from jaxcls.train import restore, trainer
from jaxcls.train.checkpoints import Checkpoints

TINY = Path(__file__).resolve().parents[1] / "configs" / "tiny.py"
STEPS, EVERY, WARMUP, RAMP, WEIGHT = 8, 2, 2, 4, 0.5
T0, T1 = 0.2, 0.05
# Chinese class names exercise the plots' CJK handling; class words make them learnable.
WORDS = {
    "负面": ["差", "慢", "坏了", "失望", "bad", "awful"],
    "正面": ["好", "快", "满意", "喜欢", "good", "great"],
    "中性": ["一般", "还行", "普通", "凑合", "okay", "plain"],
}
FILLER = ["这个", "手机", "电影", "服务", "the", "really", "也", "很"]
PNGS = ("tsne.png", "confusion.png", "curves.png", "centroids.png", "calibration.png")


def write_split(path: Path, n_per_class: int, seed: int) -> Path:
    rng = random.Random(seed)
    rows = []
    for label, words in WORDS.items():
        for _ in range(n_per_class):
            text = [rng.choice(words) for _ in range(3)] + rng.sample(FILLER, 3)
            rng.shuffle(text)
            rows.append({"text": " ".join(text), "label": label})
    rng.shuffle(rows)
    pd.DataFrame(rows).to_excel(path, index=False)
    return path


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("analysis")
    files = {s: write_split(root / f"{s}.xlsx", n, i) for i, (s, n) in enumerate(
        [("train", 12), ("val", 6), ("test", 6)]
    )}  # fmt: skip
    overrides = [
        f"workdir={root / 'run'}",
        *(f"data.{split}={path}" for split, path in files.items()),
        "data.max_length=16",  # one length bucket: one compile of each step
        "model.train_base=false",
        f"train.max_steps={STEPS}",
        f"train.eval_every={EVERY}",
        "train.log_every=1",
        "train.best_metric=val/silhouette",
        "train.patience=2",
        "contrastive.loss=simple",
        f"contrastive.weight={WEIGHT}",
        "contrastive.schedule=linear",
        f"contrastive.warmup_steps={WARMUP}",
        f"contrastive.ramp_steps={RAMP}",
        "contrastive.temperature_schedule=cosine",
        f"contrastive.temperature={T0}",
        f"contrastive.temperature_end={T1}",
    ]
    cfg = load_config(TINY, overrides)
    result = trainer.train_and_evaluate(cfg)
    evaluate_run.evaluate_after_training(cfg, result["workdir"])
    return Path(result["workdir"])


def events(run: Path, split: str) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return [e for e in map(json.loads, lines) if e["split"] == split]


def test_schedules_are_logged_every_step(run):
    train = events(run, "train")
    assert [e["step"] for e in train] == list(range(1, len(train) + 1))
    for e in train:
        s = e["step"] - 1  # the event after step s+1 reports the values step s used
        ramp = min(max(s - WARMUP, 0) / RAMP, 1.0)
        assert e["con_weight"] == pytest.approx(WEIGHT * ramp if s >= WARMUP else 0.0)
        cos_t = T1 + (T0 - T1) * (1 + math.cos(math.pi * s / STEPS)) / 2
        assert e["temperature"] == pytest.approx(cos_t, rel=1e-6)
        assert {"loss", "cls_loss", "con_loss", "lr", "grad_norm"} <= set(e)
    for e in events(run, "val"):
        assert {"accuracy", "macro_f1", "intra_sim", "inter_sim", "sim_gap", "silhouette"} <= set(e)
        assert e["sim_gap"] == pytest.approx(e["intra_sim"] - e["inter_sim"])


def test_best_checkpoint_and_early_stop_follow_val_silhouette(run):
    """Replay the rule on the logged values: same stopping point, same best checkpoint."""
    val = events(run, "val")
    best, best_step, bad, stop = None, None, 0, STEPS
    for e in val:
        if best is None or e["silhouette"] > best:
            best, best_step, bad = e["silhouette"], e["step"], 0
        else:
            bad += 1
        if bad >= 2:
            stop = e["step"]
            break
    assert val[-1]["step"] == stop
    assert events(run, "train")[-1]["step"] == stop
    ckpts = Checkpoints(run / "checkpoints", "val/silhouette", "max", 1)
    try:
        assert ckpts.resolve("best") == best_step
        assert ckpts.meta(best_step)["metrics"]["val/silhouette"] == pytest.approx(best)
    finally:
        ckpts.close()


def test_eval_files_are_written_and_agree(run):
    out = run / "eval"
    for name in (*PNGS, "report.html", "metrics.json", "predictions.xlsx"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    frame = pd.read_excel(out / "predictions.xlsx")
    assert len(frame) == metrics["num_samples"] == 18
    assert metrics["accuracy"] == pytest.approx((frame["gold"] == frame["predicted"]).mean())
    probs = frame[[f"p({name})" for name in WORDS]].to_numpy()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    for key in ("intra_sim", "inter_sim", "sim_gap", "silhouette"):
        assert isinstance(metrics[key], float)
    assert len(metrics["centroid_similarity"]) == 3


def test_report_says_what_was_evaluated_and_lists_confident_mistakes(run):
    out = run / "eval"
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    page = (out / "report.html").read_text(encoding="utf-8")
    meta = metrics["meta"]
    config = json.loads((run / "config.json").read_text(encoding="utf-8"))
    assert meta["run"] == str(run.absolute())
    assert meta["data_file"] == str(Path(config["data"]["test"]).absolute())
    best = Checkpoints(run / "checkpoints", "val/silhouette", "max", 1)
    try:
        assert meta["checkpoint_step"] == best.resolve("best")
    finally:
        best.close()
    assert meta["date"][:4].isdigit() and meta["jaxcls_version"]
    for value in (meta["run"], meta["data_file"], meta["date"], meta["jaxcls_version"]):
        assert html.escape(str(value)) in page
    # The most confident mistakes: wrong, most confident first, with their texts.
    frame = pd.read_excel(out / "predictions.xlsx")
    names = json.loads((run / "labels.json").read_text(encoding="utf-8"))
    probs = frame[[f"p({n})" for n in names]].to_numpy()
    wrong = (frame["gold"] != frame["predicted"]).to_numpy()
    confidences = sorted(probs.max(axis=1)[wrong], reverse=True)[:20]
    mistakes = metrics["mistakes"]
    assert len(mistakes) == len(confidences) > 0
    assert [m["probability"] for m in mistakes] == pytest.approx(confidences)
    for m in mistakes:
        assert m["gold"] != m["predicted"] and m["probability"] >= m["p_gold"]
        row = frame[frame["row"] == m["row"]].iloc[0]
        for key in ("text", "gold", "predicted"):
            assert row[key] == m[key]
        assert html.escape(m["text"]) in page


def test_unseen_test_labels_are_reported_and_the_rest_scored(run, tmp_path, caplog):
    test = pd.read_excel(Path(json.loads((run / "config.json").read_text())["data"]["test"]))
    extra = pd.DataFrame({"text": ["惊喜 surprise", "意外 wow", "惊喜"], "label": ["惊讶"] * 3})
    path = tmp_path / "test.xlsx"
    pd.concat([test, extra]).to_excel(path, index=False)  # rows 20, 21, 22 are unseen
    trained, step = restore.load_run(run, "best")
    with caplog.at_level("INFO", logger="jaxcls"):
        result, raw, table = evaluate_run.evaluate_file(trained, str(path))
        evaluate_run.write_outputs(trained, result, raw, table, tmp_path / "eval", step=step,
                                   tsne_points=0)  # fmt: skip
    assert result["num_samples"] == len(test) == len(table.texts)
    unseen = {"count": 3, "unit": "row", "labels": {"惊讶": [20, 21, 22]}}
    assert result["unseen_labels"] == unseen
    assert "3 of 21 rows have labels never seen in training" in caplog.text
    assert "'惊讶' (row 20, 21, 22)" in caplog.text
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["unseen_labels"] == unseen
    page = (tmp_path / "eval" / "report.html").read_text(encoding="utf-8")
    assert "labels never seen in training" in page and "20, 21, 22" in page
    # eval.max_tsne_points=0: no t-SNE, and the log says so.
    assert not (tmp_path / "eval" / "tsne.png").exists()
    assert "t-SNE skipped" in caplog.text
    # Only unseen labels: nothing to score is an error naming them.
    only = tmp_path / "only.xlsx"
    extra.to_excel(only, index=False)
    with pytest.raises(UserError, match=r"only\.xlsx: no row has a label.*'惊讶'"):
        evaluate_run.evaluate_file(trained, str(only))


def test_tsne_is_logged_with_its_time(run, caplog):
    trained, step = restore.load_run(run, "best")
    test = json.loads((run / "config.json").read_text())["data"]["test"]
    result, raw, table = evaluate_run.evaluate_file(trained, test)
    with caplog.at_level("INFO", logger="jaxcls"):
        evaluate_run.write_outputs(trained, result, raw, table, run / "eval2", step=step)
    assert "t-SNE of 18 feature vectors (eval.max_tsne_points=3000; 0 skips it)" in caplog.text
    assert re.search(r"t-SNE done in \d+\.\d s", caplog.text)


class _Refs(html.parser.HTMLParser):
    """Every tag and the attributes that could load something from elsewhere."""

    def __init__(self):
        super().__init__()
        self.tags, self.refs = [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.refs += [(tag, k, v) for k, v in attrs if k in ("src", "href", "srcset", "data")]


def test_report_is_self_contained(run):
    out = run / "eval"
    page = (out / "report.html").read_text(encoding="utf-8")
    parser = _Refs()
    parser.feed(page)
    assert not {"script", "link", "iframe", "object"} & set(parser.tags)
    assert "url(" not in page  # no stylesheet fetches either
    # Every reference is an embedded PNG, and each picture of eval/ is embedded verbatim.
    assert all(tag == "img" and k == "src" for tag, k, _ in parser.refs)
    embedded = [base64.b64decode(v.split(",", 1)[1]) for _, _, v in parser.refs]
    assert all(v.startswith("data:image/png;base64,") for _, _, v in parser.refs)
    assert sorted(embedded) == sorted((out / name).read_bytes() for name in PNGS)
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert f"{metrics['accuracy']:.4f}" in page and f"{metrics['silhouette']:.4f}" in page
    assert all(name in page for name in WORDS)


@pytest.mark.parametrize("name", PNGS)
def test_pictures_are_readable_images(run, name):
    pixels = mpimg.imread(run / "eval" / name)  # fails on a broken PNG
    height, width = pixels.shape[:2]
    assert width >= 400 and height >= 300
    # Not blank: a real share of pixels differs from the background (the corner).
    rgb = pixels[..., :3]
    assert np.mean(np.any(np.abs(rgb - rgb[0, 0]) > 0.1, axis=-1)) > 0.02


def test_tokens_per_s_leaves_out_validation_time(tmp_path, monkeypatch):
    """A slow validation (1 s here) does not count as training time in the next window."""
    import time

    evaluate_and_save = trainer.Trainer._evaluate_and_save

    def slow(self, done):
        time.sleep(1.0)
        return evaluate_and_save(self, done)

    monkeypatch.setattr(trainer.Trainer, "_evaluate_and_save", slow)
    files = {s: write_split(tmp_path / f"{s}.xlsx", 6, i) for i, s in enumerate(["train", "val"])}
    overrides = [
        f"workdir={tmp_path / 'run'}",
        *(f"data.{split}={path}" for split, path in files.items()),
        "data.max_length=16",
        "model.train_base=false",
        "train.max_steps=3",
        "train.eval_every=1",
        "train.log_every=1",
    ]
    result = trainer.train_and_evaluate(load_config(TINY, overrides))
    after_validation = events(Path(result["workdir"]), "train")[1:]  # step 1 compiles
    assert len(after_validation) == 2
    most_tokens = 8 * 16  # batch x max_length per step
    for e in after_validation:  # with the 1 s inside: under most_tokens tokens/s
        assert e["tokens_per_s"] > 2 * most_tokens
