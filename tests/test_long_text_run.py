"""data.long_text wired in: head+tail and window tokenization, training on windows, row-level
evaluation and prediction, and the temperature fitted after training (eval.calibrate)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
from helpers_e2e import CLASS_WORDS, FILLER, write_table

from jaxcls.data import batches, tables
from jaxcls.data.tokenizer import load_tokenizer, tokenize, tokenize_rows
from jaxcls.eval import scoring

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ("neg", "pos")


def long_rows(n_per_class: int, seed: int, noisy: float = 0.0) -> list[dict]:
    """Texts of 2 to 30 words (many longer than 16 tokens); ``noisy``: share of random labels."""
    rng = random.Random(seed)
    rows = []
    for label in CLASSES:
        for _ in range(n_per_class):
            words = [rng.choice(CLASS_WORDS[label]) for _ in range(rng.randint(1, 6))]
            words += [rng.choice(FILLER) for _ in range(rng.randint(1, 24))]
            rng.shuffle(words)
            gold = rng.choice(CLASSES) if rng.random() < noisy else label
            rows.append({"text": " ".join(words), "label": gold})
    rng.shuffle(rows)
    return rows


def ref_ece(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    """Top-label ECE with a plain loop over right-closed bins (b/bins, (b+1)/bins]."""
    conf, pred = probs.max(axis=1), probs.argmax(axis=1)
    total = 0.0
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        inside = (conf > lo) & (conf <= hi) if b else (conf <= hi)
        if inside.any():
            gap = np.mean(pred[inside] == labels[inside]) - np.mean(conf[inside])
            total += inside.sum() / len(conf) * abs(gap)
    return total


def ref_softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = np.asarray(logits, np.float64) / temperature
    z = np.exp(z - z.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def test_head_tail_and_windows_tokenization(tokenizer_dir, tmp_path):
    tok = load_tokenizer(tokenizer_dir)
    texts = ["the movie was great and the actors were wonderful " * 3, "ok", ""]
    full = [tok(t)["input_ids"] for t in texts]
    assert len(full[0]) > 20 and len(full[1]) <= 8
    kept, rows = tokenize_rows(texts, tok, 8, long_text="head_tail")
    assert rows is None
    assert kept[0].tolist() == full[0][:2] + full[0][-6:]  # head = 8 // 4, the rest tail
    assert kept[1].tolist() == full[1] and kept[2].tolist() == []
    cut, _ = tokenize_rows(texts, tok, 8)
    assert [x.tolist() for x in cut] == [x.tolist() for x in tokenize(texts, tok, 8)]
    assert cut[0].tolist() == full[0][:8]

    wins, rows = tokenize_rows(texts, tok, 8, long_text="windows", stride=3)
    assert rows.tolist() == [0] * (len(wins) - 2) + [1, 2]
    first = [w.tolist() for w, r in zip(wins, rows, strict=True) if r == 0]
    n = len(full[0])
    starts = [*range(0, n - 8, 3), n - 8]
    assert first == [full[0][s : s + 8] for s in starts]
    # auto, outside a training run: the texts given decide (one of three long: truncate).
    auto, rows = tokenize_rows(texts, tok, 8, long_text="auto", stride=3)
    assert rows is None and [x.tolist() for x in auto] == [x.tolist() for x in cut]
    auto, rows = tokenize_rows(texts[:1], tok, 8, long_text="auto", stride=3)
    assert [x.tolist() for x in auto] == first and rows.tolist() == [0] * len(first)

    rows = [{"text": "ok", "label": "neg"}, {"text": texts[0], "label": "pos"}]
    table = tables.read_table(str(write_table(tmp_path / "t.csv", rows)), "", "")
    ds = batches.make_dataset(table, tok, ["neg", "pos"], 8, long_text="windows", stride=3)
    assert ds.n_rows == 2 and len(ds) == 1 + len(first)
    assert ds.row_index.tolist() == [0] + [1] * len(first)
    assert ds.labels.tolist() == [0] + [1] * len(first)  # each window: its row's label
    assert ds.row_labels.tolist() == [0, 1]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny run trained on windows of 16 tokens (one validation, at the end)."""
    from jaxcls.config import load_config
    from jaxcls.evaluate_run import evaluate_after_training
    from jaxcls.train.trainer import Trainer

    folder = tmp_path_factory.mktemp("long")
    paths = {
        "train": write_table(folder / "train.xlsx", long_rows(12, 0)),
        "val": write_table(folder / "val.xlsx", long_rows(8, 1, noisy=0.4)),
        "test": write_table(folder / "test.xlsx", long_rows(8, 2, noisy=0.4)),
    }
    cfg = load_config(
        ROOT / "configs/tiny.py",
        [f"data.{k}={v}" for k, v in paths.items()]
        + [
            "data.max_length=16",
            "data.long_text=windows",
            "data.window_stride=8",
            "train.max_steps=4",
            "train.eval_every=4",
            "train.loggers=jsonl",
            "eval.max_tsne_points=0",
        ],
    )
    workdir = folder / "run"
    Trainer(cfg, workdir).fit()
    evaluate_after_training(cfg, workdir)
    return workdir, paths


@pytest.fixture(scope="module")
def loaded(trained):
    """(the run at its best checkpoint, that step, its ``evaluate_run.scorer``)."""
    from jaxcls.evaluate_run import scorer
    from jaxcls.train.restore import load_run

    run, step = load_run(trained[0], "best")
    return run, step, scorer(run)


def per_window_average(score, dataset: batches.Dataset) -> np.ndarray:
    """Row logits from each window's own logits, averaged here with a loop over rows."""
    _, per_window = score(batches.Dataset(dataset.ids, dataset.labels))  # one entry per window
    logits = per_window["logits"].astype(np.float64)
    return np.stack([logits[dataset.row_index == r].mean(axis=0) for r in range(dataset.n_rows)])


def test_windows_train_and_evaluate_per_row(trained, loaded):
    from jaxcls import Classifier

    workdir, paths = trained
    run, step, score = loaded
    assert step == 4
    val = run.read_table(str(paths["val"]))
    dataset = run.dataset(val)
    assert dataset.row_index is not None and len(dataset) > len(val.texts)  # texts were split
    result, raw = score(dataset)
    expected = per_window_average(score, dataset)
    np.testing.assert_allclose(raw["logits"], expected, rtol=1e-5, atol=1e-5)
    gold = np.array([CLASSES.index(y) for y in val.labels])
    assert result["num_samples"] == len(val.texts)  # rows, not windows
    assert result["accuracy"] == pytest.approx(np.mean(expected.argmax(1) == gold))
    # Validation during training scored the same rows the same way.
    events = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    val_event = [e for e in events if e["split"] == "val"][-1]
    assert val_event["accuracy"] == pytest.approx(result["accuracy"])
    # The final evaluation counted the test file's rows.
    metrics = json.loads((workdir / "eval" / "metrics.json").read_text())
    assert metrics["num_samples"] == len(run.read_table(str(paths["test"])).texts)
    # The API splits and averages the same way (its own batching and order).
    clf = Classifier.load(workdir, batch_size=4)
    assert clf.long_text == "windows" and clf.window_stride == 8
    np.testing.assert_allclose(clf.predict_logits(val.texts), expected, rtol=1e-4, atol=1e-4)


def test_temperature_fitted_after_training_and_reported(trained):
    workdir, _ = trained
    record = json.loads((workdir / "calibration.json").read_text())
    assert record["checkpoint_step"] == 4 and record["temperature"] > 0
    metrics = json.loads((workdir / "eval" / "metrics.json").read_text())
    cal = metrics["calibration"]
    assert cal["temperature"] == pytest.approx(record["temperature"])
    assert cal["ece_bins"] == 15
    assert {"ece_before", "ece_after", "nll_before", "nll_after"} <= set(cal)
    assert (workdir / "eval" / "calibration.png").stat().st_size > 0
    assert "calibration/ece_after" in (workdir / "eval" / "report.html").read_text()


def test_over_confident_model_gets_a_temperature_above_one(trained, loaded):
    from jaxcls import Classifier
    from jaxcls.evaluate_run import evaluate_file, fit_calibration

    workdir, paths = trained
    run, step, unscaled = loaded

    # A Scorer (evaluate_run.scorer's signature) whose logits are x 50, as from a score head x 50:
    # over-confident.
    def score(dataset, thresholds=None, temperature=None, adjust=None):
        _, raw = unscaled(dataset)
        raw = {**raw, "logits": raw["logits"] * 50.0}
        result = scoring.score(raw, dataset.row_labels, run.label_names, thresholds, temperature)
        return result, raw

    temperature = fit_calibration(run, step, score)
    assert temperature > 1.0
    assert json.loads((workdir / "calibration.json").read_text())["temperature"] == temperature
    result, raw, _ = evaluate_file(run, str(paths["test"]), temperature=temperature, score=score)
    logits, gold = raw["logits"], raw["labels"]
    before, after = ref_softmax(logits), ref_softmax(logits, temperature)
    assert (after.argmax(1) == before.argmax(1)).all()
    cal = result["calibration"]
    assert cal["ece_before"] == pytest.approx(ref_ece(before, gold), abs=1e-9)
    assert cal["ece_after"] == pytest.approx(ref_ece(after, gold), abs=1e-9)
    assert cal["ece_after"] < cal["ece_before"]
    nll = -np.mean(np.log(after[np.arange(len(gold)), gold]))
    assert cal["nll_after"] == pytest.approx(nll) and nll < cal["nll_before"]

    # The checkpoint itself is unscaled; the stored temperature applies to it as well.
    clf = Classifier.load(workdir, batch_size=4)
    assert clf.temperature == temperature
    texts = run.read_table(str(paths["test"])).texts
    z = clf.predict_logits(texts)
    probs = clf.predict_proba(texts)
    np.testing.assert_allclose(probs, ref_softmax(z, temperature), rtol=1e-5, atol=1e-6)
    assert (probs.argmax(1) == z.argmax(1)).all()
    assert clf.predict(texts) == [clf.labels[i] for i in z.argmax(1)]


@pytest.mark.parametrize(
    "override,key",
    [("data.long_text=sliding", "data.long_text"), ("data.window_stride=33", "data.window_stride"),
     ("data.window_stride=-1", "data.window_stride")],
)  # fmt: skip
def test_long_text_keys_are_validated(override, key):
    from jaxcls.config import load_config, validate_config
    from jaxcls.errors import UserError

    cfg = load_config(ROOT / "configs/tiny.py", [override])  # data.max_length=32
    with pytest.raises(UserError, match=key.replace(".", r"\.")):
        validate_config(cfg)


def test_auto_reads_documents_in_windows_and_counts_windows_in_the_plan(tmp_path):
    """data.long_text=auto (the default) picks windows where most training texts are long,
    records it, and the "auto" plan (train.epochs, train.eval_every) is then sized by the
    training windows, the sequences the run actually steps through."""
    from jaxcls.config import load_config
    from jaxcls.train import plan
    from jaxcls.train.trainer import Trainer

    train = write_table(tmp_path / "train.xlsx", long_rows(12, 0))
    val = write_table(tmp_path / "val.xlsx", long_rows(4, 1))
    overrides = [f"data.train={train}", f"data.val={val}", "data.max_length=12"]
    overrides += ["data.long_text=auto", "data.window_stride=8", "train.loggers=jsonl"]
    # The plan left to "auto" (tiny.py fixes it); one validation an epoch.
    overrides += ["train.max_steps=0", "train.eval_every=0", "train.batch_size=4"]
    overrides += ["train.evals_per_epoch=1", "optim.lr=0"]
    cfg = load_config(ROOT / "configs/tiny.py", overrides)
    trainer = Trainer(cfg, tmp_path / "run")
    tok = load_tokenizer(tmp_path / "run" / "base")
    lengths = [len(x) for x in tokenize([r["text"] for r in long_rows(12, 0)], tok, 10**6)]
    assert len(lengths) == 24 and sum(n > 12 for n in lengths) > 12  # most are long
    assert trainer.cfg.data.long_text == "windows"
    n_windows, n_rows = len(trainer.train_set), trainer.train_set.n_rows
    assert n_rows == 24 and n_windows > 1.5 * n_rows
    windows_cfg = plan.resolve_long_text(cfg, lengths)[0]
    by_windows, by_rows = plan.resolve(windows_cfg, n_windows)[0], plan.resolve(cfg, n_rows)[0]
    assert by_windows.train.eval_every != by_rows.train.eval_every
    for key in ("epochs", "eval_every"):
        assert trainer.cfg.train[key] == by_windows.train[key]
    assert trainer.n_steps == by_windows.train.epochs * trainer.batches.steps_per_epoch
    # The run model (which restores the best checkpoint after training) has the same plan.
    assert trainer.run.cfg.to_dict() == trainer.cfg.to_dict() == by_windows.to_dict()
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["train"]["eval_every"] == by_windows.train.eval_every
    assert saved["data"]["long_text"] == "windows"  # eval.py, predict.py and the API read it
