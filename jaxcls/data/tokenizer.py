"""The model's tokenizer: loading it (training and inference alike), its pad id, tokenizing."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from transformers import AutoTokenizer

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
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1:
        raise UserError(f"data.max_length must be a positive integer, got {max_length!r}")
    if template and "{text}" not in template:
        raise UserError(f"data.template {template!r} has no {{text}} placeholder; add one")
    if not texts:
        return []
    if template:  # str.replace, not format: other braces in a template are literal text
        texts = [template.replace("{text}", t) for t in texts]
    ids = tokenizer(list(texts), truncation=False)["input_ids"]
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
