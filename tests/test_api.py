"""``Classifier``: the same probabilities as transformers, from a model dir or an HF dir."""

from __future__ import annotations

import numpy as np
import pytest

from jaxcls import Classifier, UserError
from jaxcls.convert import convert

TEXTS = [
    "the actors were wonderful",
    "a terrible plot and bad acting",
    "ok",
    "这部电影非常好看",
    "物流太慢了，包装也破损了",
    "service was slow but the food tasted fine",
]
SHORT = ["good", "very bad", "还行", "ok then", "fine"]


def torch_outputs(hf_dir, texts):
    """(softmax probabilities, last-token final hidden state, labels) from transformers."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(hf_dir)
    tokenizer.padding_side = "right"
    model = AutoModelForSequenceClassification.from_pretrained(hf_dir, dtype=torch.float32)
    enc = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        out = model(**enc, output_hidden_states=True)
    last = enc["attention_mask"].sum(1) - 1
    features = out.hidden_states[-1][torch.arange(len(texts)), last]
    labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
    return torch.softmax(out.logits, -1).numpy(), features.numpy(), labels


@pytest.fixture(scope="module")
def hf_dir(make_hf_model):
    return make_hf_model()


@pytest.fixture(scope="module")
def model_dir(hf_dir, tmp_path_factory):
    return convert(hf_dir, tmp_path_factory.mktemp("converted") / "model")


@pytest.fixture(scope="module")
def clf(model_dir):
    return Classifier.load(model_dir, batch_size=4)


@pytest.mark.parametrize("source", ["model_dir", "hf_dir"])
def test_same_probabilities_as_transformers(source, clf, hf_dir):
    if source == "hf_dir":  # converted in memory
        clf = Classifier.load(hf_dir, batch_size=4)
    want_probs, want_features, labels = torch_outputs(hf_dir, TEXTS)
    probs = clf.predict_proba(TEXTS)
    assert probs.dtype == np.float32 and probs.shape == (len(TEXTS), 3)
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-6)
    # The model is confident enough that the comparison is not trivially satisfied.
    assert np.ptp(want_probs, axis=-1).max() > 0.3
    np.testing.assert_allclose(probs, want_probs, atol=1e-5)
    np.testing.assert_allclose(clf.embed(TEXTS), want_features, atol=1e-5, rtol=1e-5)
    assert clf.labels == labels == ["negative", "neutral", "positive"]
    assert clf.predict(TEXTS) == [labels[i] for i in want_probs.argmax(-1)]


def test_template_and_order(clf, hf_dir):
    want, _, _ = torch_outputs(hf_dir, [f"Review: {t} Label:" for t in TEXTS])
    clf.template = "Review: {text} Label:"
    try:
        np.testing.assert_allclose(clf.predict_proba(TEXTS), want, atol=1e-5)
        # Results come back in input order, whatever the length sort inside.
        reversed_probs = clf.predict_proba(TEXTS[::-1])
    finally:
        clf.template = ""
    np.testing.assert_allclose(reversed_probs[::-1], want, atol=1e-5)


def test_compiles_once_per_length_bucket(model_dir):
    clf = Classifier.load(model_dir, batch_size=4)
    clf.predict_proba(SHORT[:1])
    clf.predict_proba(SHORT)  # other batch counts, same bucket of 16 tokens
    assert clf._forward._cache_size() == 1
    clf.predict_proba(["word " * 20])  # 20+ tokens: the 32-token bucket
    assert clf._forward._cache_size() == 2
    assert clf.predict_proba([]).shape == (0, 3) and clf.embed([]).shape == (0, 64)


def test_pads_with_eos_when_there_is_no_pad_token(clf, hf_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(hf_dir)
    tok.pad_token = None
    tok.eos_token = tok.convert_ids_to_tokens(7)
    other = Classifier(clf.config, clf.head, clf.params, tok, clf.labels, batch_size=4)
    assert other.pad_id == 7
    want, _, _ = torch_outputs(hf_dir, SHORT)
    np.testing.assert_allclose(other.predict_proba(SHORT), want, atol=1e-5)


def test_base_model_has_no_head(make_hf_model, tmp_path):
    base = convert(make_hf_model(causal_lm=True), tmp_path / "base")
    with pytest.raises(UserError, match="without a classification head"):
        Classifier.load(base)
