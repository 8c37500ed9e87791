"""Next-token pretraining of a new random-init base (the ``pretrain`` config section)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import jax
import numpy as np
import pytest

from jaxcls.config import load_config
from jaxcls.convert import load_hf
from jaxcls.data import batches, learned_tokenizer, tokenizer
from jaxcls.errors import UserError
from jaxcls.formats import model_dir
from jaxcls.model.qwen3 import Qwen3Model
from jaxcls.train import base_model, lm_pretrain

ROOT = Path(__file__).resolve().parents[1]
TEXTS = [
    "the delivery was fast and the phone works great",
    "terrible battery, returned it after two days",
    "物流很快，包装完好，非常满意",
    "质量太差了，用了两天就坏了",
] * 16


def test_next_token_loss_matches_transformers_causal_lm(make_hf_model, padded_batch):
    import torch
    from transformers import AutoModelForCausalLM

    hf_dir = make_hf_model(causal_lm=True, tie=True)
    ids, mask = padded_batch
    valid = np.array([1, 1, 0, 1], np.float32)  # row 2 is a batch's padding row
    config, params, _ = load_hf(hf_dir, "float32")
    batch = {"input_ids": ids, "attention_mask": mask, "valid": valid}
    ours = lm_pretrain.next_token_loss(Qwen3Model(config), params["model"], batch)

    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    labels = np.where((mask > 0) & (valid[:, None] > 0), ids, -100)
    with torch.no_grad():
        want = model(
            input_ids=torch.tensor(ids, dtype=torch.long),
            attention_mask=torch.tensor(mask),
            labels=torch.tensor(labels, dtype=torch.long),
        ).loss.item()
    np.testing.assert_allclose(float(ours), want, rtol=1e-5)


def test_the_plan_is_epochs_of_batches_cut_at_max_tokens():
    data = batches.Dataset(ids=[np.zeros(n, np.int32) for n in [10] * 60 + [3] * 5], labels=None)

    def plan(max_tokens: int) -> list[np.ndarray]:
        overrides = ["pretrain.epochs=3", f"pretrain.max_tokens={max_tokens}"]
        cfg = load_config(ROOT / "configs/tiny.py", overrides)
        return lm_pretrain.pretrain_plan(data, lm_pretrain.PretrainSettings.from_config(cfg))

    full = plan(0)
    assert len(full) == 3 * 9  # batch 8: 9 batches an epoch, 615 tokens
    flat = np.concatenate(full)
    assert np.bincount(flat[flat >= 0]).tolist() == [3] * 65
    cut = plan(1000)  # one epoch (615 tokens) and as many of the next as stay within 1,000
    tokens = [sum(len(data.ids[i]) for i in b if i >= 0) for b in full]
    assert len(cut) == np.searchsorted(np.cumsum(tokens), 1000, side="right")
    assert 9 < len(cut) < 18 and all((a == b).all() for a, b in zip(cut, full, strict=False))
    assert len(plan(1)) == 1  # at least one batch


def test_every_text_ends_with_end_of_text_within_max_length(tmp_path):
    learned_tokenizer.write_learned_tokenizer(TEXTS, 600, tmp_path)
    tok = tokenizer.load_tokenizer(tmp_path)
    data, cut = lm_pretrain.lm_dataset(TEXTS[:4] + ["long " * 100], tok, 16)
    assert cut == 1 / 5
    assert all(x[-1] == tok.eos_token_id for x in data.ids)
    assert max(len(x) for x in data.ids) == 16
    assert list(data.ids[0][:-1]) == tok(TEXTS[0])["input_ids"]


def _base(tmp_path: Path, overrides: list[str]):
    cfg = load_config(ROOT / "configs/tiny.py", overrides)
    loaded = base_model.load_backbone(cfg, tmp_path, write=True, train_texts=TEXTS)
    return cfg, loaded


def test_pretraining_lowers_next_token_loss_and_is_saved_with_the_base(tmp_path):
    overrides = ["pretrain.epochs=6", "pretrain.lr=3e-3", "model.vocab_size=600"]
    cfg, pretrained = _base(tmp_path / "on", overrides)
    _, plain = _base(tmp_path / "off", ["pretrain.epochs=0", "model.vocab_size=600"])
    tok = tokenizer.load_tokenizer(pretrained.tokenizer_dir)
    data, _ = lm_pretrain.lm_dataset(TEXTS[:4], tok, 32)
    width = max(len(x) for x in data.ids)
    ids = np.zeros((4, width), np.int32)
    mask = np.zeros((4, width), np.int32)
    for r, x in enumerate(data.ids):
        ids[r, : len(x)], mask[r, : len(x)] = x, 1
    batch = {"input_ids": ids, "attention_mask": mask, "valid": np.ones(4, np.float32)}
    module = Qwen3Model(pretrained.config)

    def loss(loaded):
        return float(lm_pretrain.next_token_loss(module, loaded.params["model"], batch))

    # The same random init (seed), then 48 steps on texts it keeps seeing: far below chance.
    assert loss(plain) > np.log(600) * 0.8
    assert loss(pretrained) < 0.5 * loss(plain)
    meta = json.loads((tmp_path / "on" / base_model.BASE_DIR / model_dir.META_FILE).read_text())
    assert "next-token pretraining (48 steps)" in meta["source"]
    # Read back from the run dir (no texts needed), the same weights.
    again = base_model.load_backbone(cfg, tmp_path / "on", write=False, train_texts=None)
    jax.tree_util.tree_map(np.testing.assert_array_equal, again.params, pretrained.params)


def test_pretraining_is_deterministic(tmp_path):
    overrides = ["pretrain.epochs=1", "model.vocab_size=600"]
    _, a = _base(tmp_path / "a", overrides)
    _, b = _base(tmp_path / "b", overrides)
    jax.tree_util.tree_map(np.testing.assert_array_equal, a.params, b.params)


def test_a_missing_pretrained_base_is_an_error_not_a_new_model(tmp_path):
    cfg = load_config(ROOT / "configs/tiny.py", ["model.tokenizer=qwen", "pretrain.epochs=2"])
    with pytest.raises(UserError, match="pretrained weights"):
        base_model.load_backbone(cfg, tmp_path, write=True, train_texts=None)


def test_each_epoch_has_every_text_once_in_batches_of_like_length():
    rng = np.random.default_rng(0)
    lengths = rng.choice([5, 12, 30, 60], size=203, p=[0.4, 0.3, 0.2, 0.1])
    data = batches.Dataset(ids=[np.zeros(n, np.int32) for n in lengths], labels=None)
    plan = list(batches.length_grouped_plan(data.lengths, 16, 64, seed=0, epoch=0))
    flat = np.concatenate(plan)
    assert len(plan) == 13 and all(len(b) == 16 for b in plan)
    assert sorted(flat[flat >= 0]) == list(range(203)) and (flat < 0).sum() == 13 * 16 - 203
    # Batches mix at most two length buckets (where one bucket's texts run out), so only a few
    # are padded beyond their texts' own bucket: all of a random batching's would be.
    buckets = [{batches.bucket_of(lengths[i], 64) for i in b if i >= 0} for b in plan]
    assert max(len(b) for b in buckets) <= 2 and sum(len(b) == 2 for b in buckets) <= 3
    again = batches.length_grouped_plan(data.lengths, 16, 64, seed=0, epoch=0)
    assert all((a == b).all() for a, b in zip(plan, again, strict=True))
    other = batches.length_grouped_plan(data.lengths, 16, 64, seed=0, epoch=1)
    assert any((a != b).any() for a, b in zip(plan, other, strict=True))


def test_pretraining_is_skipped_when_most_texts_are_cut(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="jaxcls")
    short = ["pretrain.epochs=2", "model.vocab_size=600", "data.max_length=2"]
    _, skipped = _base(tmp_path / "skip", short)
    _, plain = _base(tmp_path / "plain", ["pretrain.epochs=0", "model.vocab_size=600"])
    jax.tree_util.tree_map(np.testing.assert_array_equal, skipped.params, plain.params)
    assert "pretraining skipped" in caplog.text
    _, forced = _base(tmp_path / "forced", [*short, "pretrain.skip_truncated=false"])
    meta = json.loads((tmp_path / "forced" / base_model.BASE_DIR / model_dir.META_FILE).read_text())
    assert "next-token pretraining (16 steps)" in meta["source"]
