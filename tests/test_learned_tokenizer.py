"""The vocabulary a random-init base learns from its training texts (model.tokenizer="data")."""

import json
import unicodedata
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from jaxcls.config import load_config, validate_config
from jaxcls.data import learned_tokenizer
from jaxcls.errors import UserError
from jaxcls.train import base_model

ROOT = Path(__file__).resolve().parents[1]
TRAIN = [
    "物流很快，包装完好，非常满意",
    "质量太差了，用了两天就坏了",
    "The delivery was fast and the phone works great",
    "Terrible battery, returned it after two days",
] * 20


def test_learned_vocabulary_is_small_and_loads_as_a_hf_tokenizer(tmp_path):
    size = learned_tokenizer.write_learned_tokenizer(TRAIN, 600, tmp_path)
    hf = AutoTokenizer.from_pretrained(tmp_path)
    raw = learned_tokenizer.learn_tokenizer(TRAIN, 600)
    assert 258 < size <= 600 and len(hf) == size
    assert hf.pad_token_id == 0 and hf.eos_token_id == 1
    # Text the vocabulary never saw (new characters, an emoji, digits, a composed accent)
    # still encodes, without unknown tokens, the same way in tokenizers and in transformers,
    # and decodes back to its NFC form.
    unseen = "电池续航一般 😀 Cafe\u0301 12345 物流很快"
    ids = hf(unseen)["input_ids"]
    assert ids == raw.encode(unseen).ids
    assert hf.decode(ids) == unicodedata.normalize("NFC", unseen)
    # Frequent training words became single tokens; Qwen's split keeps digits apart.
    assert len(hf.tokenize(" delivery")) == 1
    assert hf.tokenize("12345") == list("12345")


def test_learning_is_deterministic():
    a = learned_tokenizer.learn_tokenizer(TRAIN, 700).to_str()
    b = learned_tokenizer.learn_tokenizer(list(TRAIN), 700).to_str()
    assert a == b


def _corpus(frequent: int, rare: int, seed: int = 0) -> tuple[list[str], list[str], list[str]]:
    """Texts of ``frequent`` made-up words seen 10 times more than ``AUTO_MIN_COUNT`` each, and
    ``rare`` seen 3 times each."""
    import random

    rng = random.Random(seed)
    letters = "bcdfghjklmnpqrstvwxz"
    words = list({"".join(rng.choices(letters, k=7)) for _ in range(frequent + rare)})
    common, uncommon = words[:frequent], words[frequent:]
    tokens = common * (learned_tokenizer.AUTO_MIN_COUNT + 10) + uncommon * 3
    rng.shuffle(tokens)
    return [" ".join(tokens[i : i + 12]) for i in range(0, len(tokens), 12)], common, uncommon


def test_vocabulary_size_from_the_data_keeps_the_words_seen_often_enough():
    texts, common, uncommon = _corpus(frequent=5000, rare=2000)
    tok = learned_tokenizer.learn_tokenizer(texts, 0)
    assert learned_tokenizer.AUTO_MIN_SIZE < tok.get_vocab_size() <= learned_tokenizer.AUTO_MAX_SIZE

    # Seen AUTO_MIN_COUNT + 10 times: one token each; seen 3 times: pieces. (Nearly all:
    # BPE merges greedily, so a few frequent words end up split where their pieces won.)
    def whole(words: list[str], t) -> float:
        return sum(len(t.encode(" " + w).ids) == 1 for w in words) / len(words)

    assert whole(common, tok) > 0.95 and whole(uncommon, tok) < 0.05
    # A cap of 4,000 tokens (what a fixed model.vocab_size=4000 gives) drops frequent words.
    capped = learned_tokenizer.learn_tokenizer(texts, 4000)
    assert capped.get_vocab_size() == 4000
    assert whole(common, capped) < 0.9


def test_vocabulary_size_from_the_data_has_a_floor_and_a_cap(monkeypatch):
    # Few texts: too few merges are seen AUTO_MIN_COUNT times, so the floor's vocabulary (merges
    # seen twice, at most AUTO_MIN_SIZE tokens) is the one a fixed size would learn.
    assert (
        learned_tokenizer.learn_tokenizer(TRAIN, 0).to_str()
        == learned_tokenizer.learn_tokenizer(TRAIN, learned_tokenizer.AUTO_MIN_SIZE).to_str()
    )
    texts, _, _ = _corpus(frequent=5000, rare=0)
    monkeypatch.setattr(learned_tokenizer, "AUTO_MAX_SIZE", 4500)
    assert learned_tokenizer.learn_tokenizer(texts, 0).get_vocab_size() == 4500


def test_a_too_small_vocabulary_is_refused_by_name():
    cfg = load_config(ROOT / "configs/tiny.py", ["model.vocab_size=300"])
    with pytest.raises(UserError, match="model.vocab_size"):
        validate_config(cfg)


def _base_vocab(tmp_path: Path, tokenizer: str, texts) -> tuple[int, int]:
    cfg = load_config(ROOT / "configs/tiny.py", [f"model.tokenizer={tokenizer}"])
    loaded = base_model.load_backbone(cfg, tmp_path, write=True, train_texts=texts)
    embed = loaded.params["model"]["embed_tokens"]["embedding"].shape[0]
    saved = json.loads((tmp_path / base_model.BASE_DIR / "tokenizer.json").read_text())
    assert loaded.tokenizer_dir == tmp_path / base_model.BASE_DIR
    return embed, len(saved["model"]["vocab"]) + len(saved["added_tokens"])


def test_random_init_base_takes_the_learned_vocabulary_and_saves_it(tmp_path):
    texts = ["alpha beta gamma", "beta gamma delta"] * 10
    embed, saved = _base_vocab(tmp_path, "data", texts)
    assert saved < 512 and embed == -(-saved // 128) * 128  # rounded up to a multiple of 128
    # The run dir's base is read back as it is, without the texts.
    cfg = load_config(ROOT / "configs/tiny.py")
    again = base_model.load_backbone(cfg, tmp_path, write=False, train_texts=None)
    assert again.params["model"]["embed_tokens"]["embedding"].shape[0] == embed


def test_qwen_vocabulary_stays_available(tmp_path):
    embed, saved = _base_vocab(tmp_path, "qwen", None)
    assert saved == 151669 and embed == 151680  # Qwen3 ids, rounded up to 128s


def test_a_run_dir_without_its_learned_base_says_so(tmp_path):
    cfg = load_config(ROOT / "configs/tiny.py")
    with pytest.raises(UserError, match=r"random-init base \(its learned tokenizer.*\) is missing"):
        base_model.load_backbone(cfg, tmp_path, write=False, train_texts=None)
