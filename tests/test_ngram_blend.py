"""The n-gram blend (eval.ngram_blend): the TF-IDF + logistic-regression model against sklearn,
the weight chosen on validation against a plain loop, and a run that fits, saves and applies it
in the final evaluation, eval.py and the API."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
from helpers_e2e import CLASS_WORDS, FILLER, write_table

from jaxcls.errors import UserError
from jaxcls.eval import blend as blend_lib
from jaxcls.model import ngram

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ("neg", "pos", "mid")


def rows(n_per_class: int, seed: int, classes=CLASSES) -> list[dict]:
    """Short texts: one or two class words among filler words (and a Chinese word or two)."""
    rng = random.Random(seed)
    out = []
    for label in classes:
        for _ in range(n_per_class):
            words = [rng.choice(CLASS_WORDS[label]) for _ in range(rng.randint(1, 2))]
            words += [rng.choice([*FILLER, "手机", "电影很好"]) for _ in range(rng.randint(1, 4))]
            rng.shuffle(words)
            out.append({"text": " ".join(words), "label": label})
    rng.shuffle(out)
    return out


def split(data: list[dict], classes=CLASSES) -> tuple[list[str], np.ndarray]:
    return [r["text"] for r in data], np.array([classes.index(r["label"]) for r in data])


@pytest.mark.parametrize("classes", [CLASSES, CLASSES[:2]], ids=["3 classes", "2 classes"])
def test_ngram_model_matches_sklearn(classes, tmp_path, quality):
    from sklearn.linear_model import SGDClassifier

    train, val, test = (split(rows(30, s, classes), classes) for s in (0, 1, 2))
    model = ngram.fit(*train, *val, num_labels=len(classes))
    assert model.alpha in ngram.ALPHA_GRID
    reference = quality.tfidf_features().fit(train[0])  # the suite baseline's TfidfVectorizers
    x_test = reference.transform(test[0])
    np.testing.assert_allclose(model.features(test[0]).toarray(), x_test.toarray(), atol=1e-12)
    # The probabilities are sklearn's predict_proba of the same regression.
    sgd = SGDClassifier(loss="log_loss", alpha=model.alpha, max_iter=ngram.MAX_EPOCHS, tol=1e-4)
    sgd.set_params(random_state=0).fit(reference.transform(train[0]), train[1])
    probs = np.exp(model.log_proba(test[0]))
    np.testing.assert_allclose(probs, sgd.predict_proba(x_test), atol=1e-5)
    assert np.mean(probs.argmax(1) == test[1]) > 0.9  # the class words are learned
    # A label training never saw (the label map has 4) gets a row that never wins.
    wider = ngram.fit(*train, *val, num_labels=len(classes) + 1)
    np.testing.assert_allclose(np.exp(wider.log_proba(test[0]))[:, :-1], probs, atol=1e-6)
    assert np.exp(wider.log_proba(test[0]))[:, -1].max() < 1e-9

    model.save(tmp_path / "ngram.npz")
    again = ngram.load(tmp_path / "ngram.npz")
    np.testing.assert_array_equal(again.log_proba(test[0]), model.log_proba(test[0]))
    # Texts with no word in two of them (a language without spaces): the character part alone.
    chinese = ["你好世界", "今天天气", "天气很好", "世界很大"]
    only_chars = ngram.fit(chinese, np.array([0, 1, 1, 0]), chinese[:2], np.array([0, 1]), 2)
    assert [p.name for p in only_chars.parts] == ["char"]
    only_chars.save(tmp_path / "chars.npz")
    np.testing.assert_array_equal(
        ngram.load(tmp_path / "chars.npz").log_proba(chinese), only_chars.log_proba(chinese)
    )
    assert ngram.fit(["", ""], np.array([0, 1]), [""], np.array([0]), 2) is None  # no n-gram
    assert ngram.fit(chinese, np.zeros(4, int), chinese, np.zeros(4, int), 2) is None
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(UserError, match="bad.npz: not an n-gram model"):
        ngram.load(tmp_path / "bad.npz")


def test_weight_chosen_as_a_plain_loop_chooses_it():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 200)
    logits = rng.normal(size=(200, 4)) + 1.5 * np.eye(4)[labels]
    ngram_logp = np.log(rng.dirichlet(np.ones(4), 200) + np.eye(4)[labels] * 0.5)
    ngram_logp -= np.log(np.exp(ngram_logp).sum(1, keepdims=True))

    def geometric_mix(w):  # p ~ p_network^(1-w) * p_ngram^w, normalised
        p_net = np.exp(logits - logits.max(1, keepdims=True))
        p_net /= p_net.sum(1, keepdims=True)
        p = p_net ** (1 - w) * np.exp(ngram_logp) ** w
        return p / p.sum(1, keepdims=True)

    accuracy = {w: np.mean(geometric_mix(w).argmax(1) == labels) for w in blend_lib.WEIGHTS}
    best = max(accuracy.values())
    weight, scores = blend_lib.choose_weight(logits, ngram_logp, labels)
    assert weight == min(w for w, a in accuracy.items() if a == best)
    assert scores == pytest.approx(
        {"network": accuracy[0.0], "ngram": accuracy[1.0], "blend": best}
    )
    mixed = blend_lib.mix(logits, ngram_logp, 0.3)
    e = np.exp(mixed - mixed.max(1, keepdims=True))
    np.testing.assert_allclose(e / e.sum(1, keepdims=True), geometric_mix(0.3), atol=1e-5)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny run (4 steps: the network barely trained) with the blend on."""
    from jaxcls.config import load_config
    from jaxcls.evaluate_run import evaluate_after_training
    from jaxcls.train.trainer import Trainer

    folder = tmp_path_factory.mktemp("blend")
    paths = {
        k: write_table(folder / f"{k}.csv", rows(16, s))
        for s, k in enumerate(("train", "val", "test"))
    }
    overrides = [f"data.{k}={v}" for k, v in paths.items()] + [
        "data.max_train_samples=0",
        "train.eval_every=4",
        "train.loggers=jsonl",
        "eval.max_tsne_points=0",
        "eval.ngram_blend=True",
    ]
    cfg = load_config(ROOT / "configs/tiny.py", overrides)
    workdir = folder / "run"
    Trainer(cfg, workdir).fit()
    evaluate_after_training(cfg, workdir)
    return workdir, paths


def test_run_fits_saves_and_applies_the_blend(trained, tmp_path):
    from jaxcls import Classifier
    from jaxcls.commands import eval as eval_command
    from jaxcls.evaluate_run import scorer
    from jaxcls.train.restore import load_run

    workdir, paths = trained
    record = json.loads((workdir / "blend.json").read_text())
    run, step = load_run(workdir, "best")
    assert record["checkpoint_step"] == step
    weight = record["weight"]
    assert 0 < weight <= 1  # the n-gram model reads the class words; 4 steps of the network do not
    assert record["val_accuracy_blend"] >= max(
        record["val_accuracy_network"], record["val_accuracy_ngram"]
    )

    # The network's own logits, and the blend recomputed from them and the saved n-gram model.
    test = run.read_table(str(paths["test"]))
    _, raw = scorer(run)(run.dataset(test))
    p_net = np.exp(raw["logits"] - raw["logits"].max(1, keepdims=True))
    p_net /= p_net.sum(1, keepdims=True)
    p_ngram = np.exp(ngram.load(workdir / "ngram.npz").log_proba(test.texts))
    mixed = np.log(p_net ** (1 - weight) * p_ngram**weight)
    temperature = json.loads((workdir / "calibration.json").read_text())["temperature"]
    z = mixed / temperature
    expected = np.exp(z - z.max(1, keepdims=True))
    expected /= expected.sum(1, keepdims=True)
    gold = np.array([run.label_names.index(y) for y in test.labels])

    metrics = json.loads((workdir / "eval" / "metrics.json").read_text())
    assert metrics["ngram_blend"]["weight"] == weight
    assert metrics["accuracy"] == pytest.approx(np.mean(expected.argmax(1) == gold))
    clf = Classifier.load(workdir)
    np.testing.assert_allclose(clf.predict_proba(test.texts), expected, atol=1e-4)

    assert eval_command.main(["--workdir", str(workdir), "--out", str(tmp_path / "ev")]) == 0
    again = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert again["accuracy"] == metrics["accuracy"] and again["ngram_blend"]["weight"] == weight


def test_blend_of_another_checkpoint_is_not_applied(trained, tmp_path, caplog):
    workdir, _ = trained
    record = json.loads((workdir / "blend.json").read_text())
    copy = tmp_path / "run"
    copy.mkdir()
    (copy / "ngram.npz").write_bytes((workdir / "ngram.npz").read_bytes())
    (copy / "blend.json").write_text(json.dumps({**record, "checkpoint_step": 999}))
    assert blend_lib.load(copy, record["checkpoint_step"]) is None
    assert "chosen for checkpoint 999" in caplog.text
    assert blend_lib.load(copy, 999).weight == record["weight"]
    (copy / "blend.json").write_text(json.dumps({**record, "weight": 0.0}))
    assert blend_lib.load(copy, record["checkpoint_step"]) is None  # 0: the network alone
    (copy / "blend.json").write_text("{")
    with pytest.raises(UserError, match="blend.json: not a blend file"):
        blend_lib.load(copy, 1)
    blend_lib.remove(copy)
    assert not any(copy.iterdir())
