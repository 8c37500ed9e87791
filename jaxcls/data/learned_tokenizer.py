"""A byte-level BPE vocabulary learned from the training texts, for a random-init base.

A model trained from scratch gains nothing from Qwen3's 151,936-token vocabulary: most of its
embedding rows never appear in a small training set, and the rows that do appear are seen a
handful of times each. A few thousand merges learned from the data itself give every token
enough examples (measured in benchmarks/NOTES.md, "A vocabulary learned from the data").
The tokenizer splits text as Qwen3 does (NFC, the same pre-tokenizer regex, byte-level, so
no text is ever out of vocabulary) and saves as a Hugging Face tokenizer dir that
``AutoTokenizer`` and an exported checkpoint load like Qwen's.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from jaxcls.data.demo import QWEN_PATTERN

log = logging.getLogger("jaxcls")

PAD_TOKEN = "<|endoftext|>"  # id 0, as Qwen pads with <|endoftext|>
EOS_TOKEN = "<|im_end|>"  # id 1
# model.vocab_size=0: every merge seen at least AUTO_MIN_COUNT times in the training texts,
# within [AUTO_MIN_SIZE, AUTO_MAX_SIZE] tokens. Short-text sets land on the floor; a large
# corpus of documents gets the words it has enough examples of (benchmarks/NOTES.md).
AUTO_MIN_COUNT = 50
AUTO_MIN_SIZE = 4000
AUTO_MAX_SIZE = 32000


def learn_tokenizer(texts: Sequence[str], vocab_size: int) -> Tokenizer:
    """A byte-level BPE of at most ``vocab_size`` tokens (merges seen at least twice); 0: of
    the size the texts support (``AUTO_MIN_COUNT`` examples a merge, ``AUTO_MIN_SIZE`` to
    ``AUTO_MAX_SIZE`` tokens)."""
    if vocab_size:
        return _learn(texts, vocab_size, min_count=2)
    tok = _learn(texts, AUTO_MAX_SIZE, min_count=AUTO_MIN_COUNT)
    if tok.get_vocab_size() < AUTO_MIN_SIZE:
        tok = _learn(texts, AUTO_MIN_SIZE, min_count=2)
    return tok


def _learn(texts: Sequence[str], vocab_size: int, min_count: int) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])  # fmt: skip
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_count,
        special_tokens=[PAD_TOKEN, EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer, length=len(texts))
    return tok


def save_tokenizer(tok: Tokenizer, out_dir: Path) -> None:
    """``tokenizer.json`` + ``tokenizer_config.json`` in ``out_dir`` (made if missing)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    tok.save(str(out_dir / "tokenizer.json"))
    config = {
        "tokenizer_class": "Qwen2Tokenizer",
        "add_prefix_space": False,
        "bos_token": None,
        "eos_token": EOS_TOKEN,
        "pad_token": PAD_TOKEN,
        "unk_token": None,
        "padding_side": "right",
        "model_max_length": 131072,
        "clean_up_tokenization_spaces": False,
        "errors": "replace",
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=1) + "\n")


def write_learned_tokenizer(texts: Sequence[str], vocab_size: int, out_dir: Path) -> int:
    """Learn a tokenizer from ``texts``, save it in ``out_dir``; its vocabulary size."""
    tok = learn_tokenizer(texts, vocab_size)
    save_tokenizer(tok, out_dir)
    size = tok.get_vocab_size()
    how = "" if vocab_size else (
        f" (model.vocab_size=0: the merges seen at least {AUTO_MIN_COUNT} times, "
        f"{AUTO_MIN_SIZE} to {AUTO_MAX_SIZE} tokens)"
    )  # fmt: skip
    log.info("learned a %d-token byte-level BPE from %d training texts%s", size, len(texts), how)
    return size
