"""Multi-label end to end: train a tiny run, tune thresholds, evaluate, predict and export.

References: sklearn's metrics for the evaluation, transformers (torch) for the export.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import accuracy_score, f1_score

from jaxcls.config import load_config

ROOT = Path(__file__).resolve().parents[1]
# Each label has its words; a text carries the words of one or two labels.
WORDS = {"billing": ["invoice", "charge"], "refund": ["refund", "money"], "shipping": ["late"]}
NAMES = sorted(WORDS)


def make_rows(n: int, seed: int) -> list[dict]:
    """``n`` rows: a text and its labels joined by '|' (one or two labels per row)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        labels = sorted(rng.sample(NAMES, rng.choice([1, 1, 2])))
        words = [rng.choice(WORDS[label]) for label in labels] + [rng.choice(["the", "my"])]
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "label": "|".join(labels)})
    return rows


def write_files(folder: Path) -> dict[str, Path]:
    paths = {}
    for name, (n, seed) in {"train": (48, 0), "val": (24, 1), "test": (24, 2)}.items():
        paths[name] = folder / f"{name}.csv"
        pd.DataFrame(make_rows(n, seed)).to_csv(paths[name], index=False)
    return paths


@pytest.fixture(scope="module")
def run(make_hf_model, tmp_path_factory):
    """A multi-label run of 6 steps on the tiny HF base, evaluated as train.py does."""
    from jaxcls.evaluate_run import evaluate_after_training
    from jaxcls.train.trainer import Trainer

    root = tmp_path_factory.mktemp("multilabel")
    data = write_files(root)
    cfg = load_config(
        ROOT / "configs" / "tiny.py",
        [f"model.path={make_hf_model()}", "model.problem=multi_label", "data.label_sep=|",
         *(f"data.{k}={v}" for k, v in data.items()), "optim.lr=0.02", "train.max_steps=6",
         "train.eval_every=3", "data.max_length=16", "eval.max_tsne_points=0"],
    )  # fmt: skip
    result = Trainer(cfg, root / "run").fit()
    evaluate_after_training(cfg, root / "run")
    return root / "run", data, result


def test_validation_logs_multilabel_metrics(run):
    workdir, _, result = run
    events = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    val = [e for e in events if e["split"] == "val"]
    assert [e["step"] for e in val] == [3, 6]
    for event in val:
        assert {"loss", "macro_f1", "micro_f1", "subset_accuracy"} <= set(event)
        assert "silhouette" not in event  # single-label feature metrics are not computed
    assert result["best_metric"] == "val/macro_f1" and result["best_step"] in (3, 6)
    train = [e for e in events if e["split"] == "train"]
    assert all(0 <= e["accuracy"] <= 1 and np.isfinite(e["con_loss"]) for e in train)


def test_thresholds_tuned_on_validation_and_saved(run):
    from jaxcls.eval.multilabel import tune_thresholds
    from jaxcls.evaluate_run import predictor
    from jaxcls.train.restore import load_run

    workdir, data, result = run
    temperatures = np.array(json.loads((workdir / "calibration.json").read_text())["temperature"])
    saved = json.loads((workdir / "thresholds.json").read_text())["steps"]
    assert list(saved) == [str(result["best_step"])]
    assert sorted(saved[str(result["best_step"])]) == NAMES
    # The same thresholds from the validation file's sigmoid outputs (NumPy here).
    loaded, step = load_run(workdir, "best")
    table = loaded.read_table(str(data["val"]))
    dataset = loaded.dataset(table)
    from jaxcls.eval import scoring

    raw = scoring.run_dataset(predictor(loaded), dataset, 8, loaded.pad_id, 16)
    # On the calibrated probabilities: sigmoid(logit / T_label).
    probs = 1.0 / (1.0 + np.exp(-raw["logits"].astype(np.float64) / temperatures))
    expected = tune_thresholds(probs, dataset.labels)
    got = np.array([saved[str(step)][n] for n in NAMES])
    np.testing.assert_allclose(got, expected, atol=1e-6)


def test_test_metrics_match_sklearn(run):
    workdir, data, _ = run
    metrics = json.loads((workdir / "eval" / "metrics.json").read_text())
    frame = pd.read_excel(workdir / "eval" / "predictions.xlsx", keep_default_na=False)
    gold = pd.read_csv(data["test"])["label"]
    assert frame["gold"].tolist() == gold.tolist()

    def indicators(cells) -> np.ndarray:
        return np.array([[int(n in str(c).split("|")) for n in NAMES] for c in cells])

    y_true, y_pred = indicators(frame["gold"]), indicators(frame["predicted"])
    # predicted = the probabilities at or above the saved thresholds
    cut = np.array([metrics["thresholds"][n] for n in NAMES])
    probs = frame[[f"p({n})" for n in NAMES]].to_numpy()
    np.testing.assert_array_equal(y_pred, (probs >= cut).astype(int))
    assert metrics["subset_accuracy"] == pytest.approx(accuracy_score(y_true, y_pred))
    assert metrics["micro_f1"] == pytest.approx(f1_score(y_true, y_pred, average="micro"))
    present = y_true.any(0) | y_pred.any(0)
    macro = f1_score(y_true[:, present], y_pred[:, present], average="macro", zero_division=0)
    assert metrics["macro_f1"] == pytest.approx(macro)
    assert (workdir / "eval" / "report.html").is_file()
    assert not (workdir / "eval" / "confusion.png").exists()


def test_one_temperature_per_label_fitted_on_validation(run):
    """Each label's T minimises its binary NLL on validation (a NumPy grid search here)."""
    from jaxcls.eval import scoring
    from jaxcls.evaluate_run import predictor
    from jaxcls.train.restore import load_run

    workdir, data, result = run
    record = json.loads((workdir / "calibration.json").read_text())
    assert record["checkpoint_step"] == result["best_step"] and len(record["temperature"]) == 3
    temperatures = np.array(record["temperature"])
    # The fixture's short run is not calibrated as it is: some label's T is far from 1.
    assert np.abs(np.log(temperatures)).max() > 0.05
    loaded, _ = load_run(workdir, "best")
    dataset = loaded.dataset(loaded.read_table(str(data["val"])))
    logits = scoring.run_dataset(predictor(loaded), dataset, 8, loaded.pad_id, 16)["logits"]
    grid = np.exp(np.linspace(np.log(0.05), np.log(20.0), 4001))
    for c in range(3):
        z, y = logits[:, c].astype(np.float64)[:, None] / grid, dataset.labels[:, c][:, None]
        nll = np.mean(np.logaddexp(0, -z) * y + np.logaddexp(0, z) * (1 - y), axis=0)
        assert temperatures[c] == pytest.approx(grid[np.argmin(nll)], rel=2e-3)
    assert record["val_nll_after"] <= record["val_nll_before"]
    metrics = json.loads((workdir / "eval" / "metrics.json").read_text())
    assert metrics["calibration"]["temperature"] == pytest.approx(temperatures.tolist())
    assert {"ece_before", "ece_after", "nll_before", "nll_after"} <= set(metrics["calibration"])
    assert (workdir / "eval" / "calibration.png").stat().st_size > 0


def test_classifier_predicts_label_sets(run):
    from jaxcls import Classifier

    workdir, data, result = run
    clf = Classifier.load(workdir)
    assert clf.multi_label and clf.labels == NAMES
    texts = pd.read_csv(data["test"])["text"].tolist()
    probs = clf.predict_proba(texts)
    temperatures = json.loads((workdir / "calibration.json").read_text())["temperature"]
    z = clf.predict_logits(texts).astype(np.float64) / np.array(temperatures)
    np.testing.assert_allclose(probs, 1.0 / (1.0 + np.exp(-z)), rtol=1e-5)
    assert probs.shape == (len(texts), 3) and np.all((probs > 0) & (probs < 1))
    assert not np.allclose(probs.sum(axis=1), 1.0)  # sigmoid, not softmax
    saved = json.loads((workdir / "thresholds.json").read_text())["steps"]
    cut = np.array([saved[str(result["best_step"])][n] for n in NAMES])
    expected = [[n for n, p, t in zip(NAMES, row, cut, strict=True) if p >= t] for row in probs]
    assert clf.predict(texts) == expected


def test_merged_export_matches_transformers(run, tmp_path):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

    from jaxcls import Classifier, export

    workdir, data, _ = run
    out = export.export(workdir, "best", "merged", tmp_path / "hf")
    config = json.loads((out / "config.json").read_text())
    assert config["problem_type"] == "multi_label_classification"
    assert (out / "thresholds.json").is_file()
    texts = pd.read_csv(data["test"])["text"].tolist()[:8]
    # transformers gives the plain sigmoid: the run's calibration is not folded in.
    ours = 1.0 / (1.0 + np.exp(-Classifier.load(workdir).predict_logits(texts)))
    model = AutoModelForSequenceClassification.from_pretrained(out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    with torch.no_grad():
        theirs = [
            torch.sigmoid(model(**tokenizer(t, return_tensors="pt")).logits)[0] for t in texts
        ]
    np.testing.assert_allclose(np.stack([t.numpy() for t in theirs]), ours, atol=1e-4)
    # transformers' own pipeline reads problem_type and applies the sigmoid itself.
    scores = pipeline("text-classification", model=model, tokenizer=tokenizer, top_k=None)(texts)
    by_label = np.array(
        [[{s["label"]: s["score"] for s in row}[n] for n in NAMES] for row in scores]
    )
    np.testing.assert_allclose(by_label, ours, atol=1e-4)
    # The export loads back into jaxcls as a multi-label model whose thresholds on the plain
    # sigmoid make the run's decisions.
    back = Classifier.load(out)
    texts = pd.read_csv(data["test"])["text"].tolist()
    assert back.multi_label and back.predict(texts) == Classifier.load(workdir).predict(texts)


def test_predict_command_writes_label_sets(run, tmp_path, capsys):
    from jaxcls import Classifier
    from jaxcls.commands import predict

    workdir, data, _ = run
    source = pd.read_csv(data["test"]).head(6)
    source.loc[2, "text"] = ""  # a blank text gets no prediction
    source.to_csv(tmp_path / "in.csv", index=False)
    out = tmp_path / "out.csv"
    args = ["--workdir", str(workdir), "--input", str(tmp_path / "in.csv"), "--output", str(out)]
    assert predict.main(args) == 0
    table = pd.read_csv(out, keep_default_na=False)
    assert list(table.columns) == ["text", "label", "pred_labels"] + [f"prob({n})" for n in NAMES]
    texts = [t for t in source["text"] if t]
    expected = ["|".join(s) for s in Classifier.load(workdir).predict(texts)]
    assert [c for i, c in enumerate(table["pred_labels"]) if i != 2] == expected
    assert table.loc[2, "pred_labels"] == "" and table.loc[2, "prob(refund)"] == ""
    assert predict.main(["--workdir", str(workdir), "--text", texts[0], "--json"]) == 0
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert record["labels"] == (expected[0].split("|") if expected[0] else [])
    assert set(record["probabilities"]) == set(NAMES)


def test_classifier_tunes_missing_thresholds_as_training_did(run, tmp_path):
    import shutil

    from jaxcls import Classifier

    workdir, _, result = run
    copy = shutil.copytree(workdir, tmp_path / "copy")
    (copy / "thresholds.json").unlink()
    clf = Classifier.load(copy)
    step = str(result["best_step"])
    saved = json.loads((workdir / "thresholds.json").read_text())["steps"][step]
    np.testing.assert_allclose(clf.thresholds, [saved[n] for n in NAMES], atol=1e-6)
    record = json.loads((copy / "thresholds.json").read_text())["steps"][step]
    assert record == pytest.approx(saved, abs=1e-6)  # float32 probabilities here


def test_eval_command_scores_a_file_with_the_saved_thresholds(run, tmp_path, capsys):
    from jaxcls.commands import eval as eval_command

    workdir, data, _ = run
    rows = pd.read_csv(data["val"]).head(10)
    rows.loc[0, "label"] = "billing|weather"  # a label training never saw: not scored
    rows.to_csv(tmp_path / "file.csv", index=False)
    args = ["--workdir", str(workdir), "--data", str(tmp_path / "file.csv")]
    assert eval_command.main([*args, "--out", str(tmp_path / "out")]) == 0
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["num_samples"] == 9 and metrics["unseen_labels"]["labels"] == {"weather": [2]}
    best = json.loads((workdir / "eval" / "metrics.json").read_text())["thresholds"]
    assert metrics["thresholds"] == best
    assert "subset accuracy" in capsys.readouterr().out
