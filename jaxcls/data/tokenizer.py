"""The model's tokenizer: loading it (training and inference alike), its pad id, tokenizing."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from transformers import AutoTokenizer

from jaxcls.data import long_text as long_text_lib
from jaxcls.errors import UserError

log = logging.getLogger("jaxcls")


def load_tokenizer(path: str | Path) -> Any:
    """A Hugging Face tokenizer from a dir, padding on the right."""
    try:
        tok = AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: cannot load a tokenizer ({str(e).splitlines()[0]})") from None
    tok.padding_side = "right"
    return tok


def pad_id(tokenizer) -> int:
    """The tokenizer's pad id, else its eos id (Qwen pads with <|endoftext|>)."""
    for token_id in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if token_id is not None:
            return int(token_id)
    raise UserError("the tokenizer has neither a pad nor an eos token; set pad_token in its config")


def tokenize(
    texts: Sequence[str], tokenizer, max_length: int, template: str = "", source: str = "texts"
) -> list[np.ndarray]:
    """Token ids (int32) per text, the tokenizer's default special tokens, cut at max_length."""
    _check_max_length(max_length)
    texts, ids = _encode_whole(texts, tokenizer, template)
    return _cut(texts, ids, tokenizer, max_length, source)


def _check_max_length(max_length: int) -> None:
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1:
        raise UserError(f"data.max_length must be a positive integer, got {max_length!r}")


def _encode_whole(texts: Sequence[str], tokenizer, template: str) -> tuple[list[str], list]:
    """(the texts in ``template``, each one's token ids with nothing cut)."""
    if template and "{text}" not in template:
        raise UserError(f"data.template {template!r} has no {{text}} placeholder; add one")
    if not texts:
        return [], []
    if template:  # str.replace, not format: other braces in a template are literal text
        texts = [template.replace("{text}", t) for t in texts]
    return list(texts), tokenizer(list(texts), truncation=False)["input_ids"]


def _cut(texts: list[str], ids: list, tokenizer, max_length: int, source: str) -> list[np.ndarray]:
    """``ids`` (of ``texts``, whole) with the texts longer than ``max_length`` cut there."""
    ids = list(ids)
    long = [i for i, x in enumerate(ids) if len(x) > max_length]
    if long:
        # Re-encode only the long ones, so the tokenizer places its special tokens itself.
        cut = tokenizer([texts[i] for i in long], truncation=True, max_length=max_length)
        for i, x in zip(long, cut["input_ids"], strict=True):
            ids[i] = x
        log.warning(
            "%s: %d of %d texts longer than max_length=%d tokens were truncated",
            source, len(long), len(ids), max_length,
        )  # fmt: skip
    return [np.asarray(x, dtype=np.int32) for x in ids]


LONG_TEXT = ("auto", "truncate", "head_tail", "windows")


def tokenize_rows(
    texts: Sequence[str], tokenizer, max_length: int, template: str = "", source: str = "texts",
    long_text: str = "truncate", stride: int = 0,
) -> tuple[list[np.ndarray], np.ndarray | None]:  # fmt: skip
    """(token ids per sequence, the row of each sequence or None) under ``data.long_text``.

    ``truncate``: ``tokenize``; ``head_tail``: the first max_length // 4 and the last tokens of
    a long text; ``windows``: overlapping windows of max_length tokens, consecutive starts
    ``stride`` apart (0 = max_length // 2), with ``row_index`` [W] naming each window's text;
    ``auto``: ``long_text.auto_mode`` of these texts (a training run resolves it once, from its
    training texts, so that every split is read alike).
    """
    if long_text not in LONG_TEXT:
        raise UserError(f"data.long_text must be one of {', '.join(LONG_TEXT)}, got {long_text!r}")
    if long_text == "truncate":
        return tokenize(texts, tokenizer, max_length, template, source), None
    _check_max_length(max_length)
    # Every other mode starts from the whole texts, each encoded once.
    texts, whole = _encode_whole(texts, tokenizer, template)
    if long_text == "auto":
        long_text = long_text_lib.auto_mode([len(x) for x in whole], max_length)
        log.info("%s: data.long_text=auto reads these texts as %s", source, long_text)
        if long_text == "truncate":
            return _cut(texts, whole, tokenizer, max_length, source), None
    full = [np.asarray(x, dtype=np.int32) for x in whole]
    n_long = sum(len(x) > max_length for x in full)
    if long_text == "head_tail":
        ids = [long_text_lib.head_tail(x, max_length) for x in full]
        if n_long:
            log.info(
                "%s: %d of %d texts longer than max_length=%d tokens keep their head and tail",
                source, n_long, len(full), max_length,
            )  # fmt: skip
        return [np.asarray(x, dtype=np.int32) for x in ids], None
    ids, row_index = long_text_lib.windows(full, max_length, stride or max(1, max_length // 2))
    if n_long:
        log.info(
            "%s: %d of %d texts longer than max_length=%d tokens make %d windows in all",
            source, n_long, len(full), max_length, len(ids),
        )  # fmt: skip
    return [np.asarray(x, dtype=np.int32) for x in ids], row_index
