"""Tokenization, length buckets, fixed-shape batches and samplers (jaxcls.data.batches)."""

import logging
import os
from types import SimpleNamespace

import numpy as np
import pytest

from jaxcls.data import batches
from jaxcls.data import tokenizer as tokenizer_lib
from jaxcls.data.tables import Table
from jaxcls.errors import UserError

os.environ["HF_HUB_OFFLINE"] = "1"

CORPUS = [
    "这本书很好看，推荐购买",
    "质量太差了，不推荐",
    "the quick brown fox jumps over the lazy dog",
    "物流很快，包装完好 good value",
    "classify the review: it was fine",
] * 20


def _save_tokenizer(folder, post_eos: bool):
    """A tiny byte-level BPE trained here (offline), saved and loaded as an HF tokenizer dir."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<pad>", "<eos>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(CORPUS, trainer)
    if post_eos:  # a tokenizer that appends a special token by default, like BERT's [SEP]
        tok.post_processor = processors.TemplateProcessing(
            single="$A <eos>", special_tokens=[("<eos>", tok.token_to_id("<eos>"))]
        )
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>")
    fast.save_pretrained(folder)
    return AutoTokenizer.from_pretrained(folder)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return _save_tokenizer(tmp_path_factory.mktemp("tok"), post_eos=False)


@pytest.fixture(scope="module")
def eos_tokenizer(tmp_path_factory):
    return _save_tokenizer(tmp_path_factory.mktemp("tok_eos"), post_eos=True)


def table(texts, labels=None):
    rows = np.arange(len(texts)) + 2
    return Table(None, list(texts), labels, rows, "row", "text", "label")


def test_tokenize_matches_tokenizer(tokenizer):
    ids = tokenizer_lib.tokenize(CORPUS[:5], tokenizer, max_length=512)
    for text, x in zip(CORPUS[:5], ids, strict=True):
        assert x.dtype == np.int32
        assert x.tolist() == tokenizer(text)["input_ids"]


def test_template(tokenizer):
    template = 'Review {"kind": "shop"}: {text}'
    ids = tokenizer_lib.tokenize(["很好"], tokenizer, 512, template=template)
    assert ids[0].tolist() == tokenizer('Review {"kind": "shop"}: 很好')["input_ids"]
    with pytest.raises(UserError, match=r"data\.template .* no \{text\} placeholder"):
        tokenizer_lib.tokenize(["很好"], tokenizer, 512, template="Review:")


@pytest.mark.parametrize("fixture", ["tokenizer", "eos_tokenizer"])
def test_truncation_counted_and_keeps_special_tokens(fixture, request, caplog):
    tok = request.getfixturevalue(fixture)
    texts = [CORPUS[2], "ok", CORPUS[2] * 3]
    full = [tok(t)["input_ids"] for t in texts]
    with caplog.at_level(logging.WARNING, logger="jaxcls"):
        ids = tokenizer_lib.tokenize(texts, tok, max_length=8, source="f.xlsx")
    assert "f.xlsx: 2 of 3 texts longer than max_length=8 tokens were truncated" in caplog.text
    assert [len(x) for x in ids] == [min(8, len(f)) for f in full]
    assert ids[1].tolist() == full[1]
    assert ids[0].tolist() == tok(texts[0], truncation=True, max_length=8)["input_ids"]
    if fixture == "eos_tokenizer":
        assert ids[0][-1] == tok.eos_token_id and ids[0][:7].tolist() == full[0][:7]


@pytest.mark.parametrize("bad", [0, -3, 1.5, True])
def test_bad_max_length(tokenizer, bad):
    with pytest.raises(UserError, match="data.max_length"):
        tokenizer_lib.tokenize(["a"], tokenizer, bad)


def test_make_dataset(tokenizer):
    t = table(["好", "差", "好 good"], ["pos", "neg", "pos"])
    ds = batches.make_dataset(t, tokenizer, ["neg", "pos"], max_length=16)
    np.testing.assert_array_equal(ds.labels, [1, 0, 1])
    assert ds.lengths.tolist() == [len(tokenizer(x)["input_ids"]) for x in t.texts]
    assert batches.make_dataset(t, tokenizer, None, 16).labels is None
    with pytest.raises(UserError, match=r"'pos' \(row 2, 4\)"):
        batches.make_dataset(t, tokenizer, ["neg", "other"], 16)


def test_pad_id(tokenizer):
    assert tokenizer_lib.pad_id(tokenizer) == tokenizer.convert_tokens_to_ids("<pad>")
    assert tokenizer_lib.pad_id(SimpleNamespace(pad_token_id=None, eos_token_id=7)) == 7
    with pytest.raises(UserError, match="neither a pad nor an eos"):
        tokenizer_lib.pad_id(SimpleNamespace(pad_token_id=None, eos_token_id=None))


def test_buckets():
    assert batches.buckets(100) == (16, 32, 64, 100)
    assert batches.buckets(128) == (16, 32, 64, 128)
    assert batches.buckets(16) == (16,)
    assert batches.buckets(5) == (5,)


def random_dataset(n, num_classes, max_len=40, seed=0):
    rng = np.random.default_rng(seed)
    ids = [
        rng.integers(3, 50, size=rng.integers(1, max_len + 1)).astype(np.int32) for _ in range(n)
    ]
    return batches.Dataset(ids, rng.integers(0, num_classes, size=n).astype(np.int32))


def check_batch(batch, ds, indices, pad, max_length):
    """Compare a batch against a plain loop over the samples it should hold."""
    real = [i for i in indices if i >= 0]
    longest = max(len(ds.ids[i]) for i in real)
    width = min(b for b in batches.buckets(max_length) if b >= longest)
    assert batch["input_ids"].shape == (len(indices), width)
    assert batch["input_ids"].dtype == batch["attention_mask"].dtype == np.int32
    assert batch["labels"].dtype == np.int32 and batch["valid"].dtype == np.float32
    for r, i in enumerate(indices):
        src = ds.ids[i if i >= 0 else real[0]]
        assert batch["valid"][r] == (1.0 if i >= 0 else 0.0)
        assert batch["labels"][r] == ds.labels[i if i >= 0 else real[0]]
        assert batch["input_ids"][r, : len(src)].tolist() == src.tolist()
        assert (batch["input_ids"][r, len(src) :] == pad).all()
        assert batch["attention_mask"][r].tolist() == [1] * len(src) + [0] * (width - len(src))


def test_collate_shapes_padding_and_valid():
    ds = random_dataset(10, 3)
    indices = np.array([4, 0, 9, -1, -1])
    batch = batches.collate(ds, indices, pad=1, max_length=40)
    check_batch(batch, ds, indices, pad=1, max_length=40)


def test_eval_batches_cover_everything_in_order():
    ds = random_dataset(23, 3)
    produced = list(batches.eval_batches(ds, batch_size=5, pad=1, max_length=40))
    assert len(produced) == 5
    for b, batch in enumerate(produced):
        indices = [i if i < 23 else -1 for i in range(5 * b, 5 * b + 5)]
        check_batch(batch, ds, indices, pad=1, max_length=40)
    assert sum(batch["valid"].sum() for batch in produced) == 23


def test_random_sampler_is_a_permutation_per_epoch():
    labels = random_dataset(23, 3).labels
    for epoch in range(3):
        plan = batches.epoch_plan(labels, 5, seed=1, epoch=epoch, sampler="random")
        assert plan.shape == (batches.steps_per_epoch(23, 5), 5) == (5, 5)
        assert sorted(plan[plan >= 0].tolist()) == list(range(23))
        assert (plan[-1, 3:] == -1).all()


def test_plans_are_pure_functions_of_seed_and_epoch():
    labels = random_dataset(40, 4).labels
    for sampler in batches.SAMPLERS:
        plan = batches.epoch_plan(labels, 8, 3, 2, sampler)
        np.testing.assert_array_equal(plan, batches.epoch_plan(labels, 8, 3, 2, sampler))
        assert not np.array_equal(plan, batches.epoch_plan(labels, 8, 4, 2, sampler))
        assert not np.array_equal(plan, batches.epoch_plan(labels, 8, 3, 3, sampler))


@pytest.mark.parametrize(
    "counts,batch_size",
    [((30, 30), 8), ((50, 7, 3), 9), ((20, 20, 20, 20, 20, 20), 8), ((25, 1, 12, 9), 16)],
)
def test_balanced_batches_give_every_anchor_a_positive(counts, batch_size):
    labels = np.repeat(np.arange(len(counts)), counts).astype(np.int32)
    plan = batches.epoch_plan(labels, batch_size, seed=0, epoch=0, sampler="balanced")
    assert plan.shape == (batches.steps_per_epoch(len(labels), batch_size), batch_size)
    assert (plan >= 0).all()
    p, k = batches.balanced_shape(len(counts), batch_size)
    for row in plan:
        per_class = np.bincount(labels[row], minlength=len(counts))
        present = per_class[per_class > 0]
        assert (present >= 2).all()
        assert len(present) == p and (present >= k).all()
    seen = np.bincount(labels[plan.ravel()], minlength=len(counts))
    assert seen.min() > 0  # every class is drawn during the epoch


def test_balanced_logs_small_classes(caplog):
    ds = batches.Dataset([np.ones(3, np.int32)] * 11, np.array([0] * 10 + [1], np.int32))
    with caplog.at_level(logging.INFO, logger="jaxcls"):
        batches.TrainBatches(ds, 8, seed=0, sampler="balanced", pad=0, max_length=16)
    assert "2 classes x 4 samples per batch" in caplog.text
    assert "classes [1] have fewer than 4 samples; sampled with replacement" in caplog.text


def test_bad_sampler_and_batch_size():
    labels = np.array([0, 1, 0, 1])
    with pytest.raises(UserError, match="data.sampler must be one of random, balanced"):
        batches.epoch_plan(labels, 2, 0, 0, "stratified")
    with pytest.raises(UserError, match="train.batch_size >= 2"):
        batches.epoch_plan(labels, 1, 0, 0, "balanced")


@pytest.mark.parametrize("sampler", batches.SAMPLERS)
def test_train_batches_by_step_resume_exactly(sampler):
    ds = random_dataset(21, 3)
    loader = batches.TrainBatches(ds, 4, seed=5, sampler=sampler, pad=1, max_length=40)
    spe = loader.steps_per_epoch
    assert spe == 6
    straight = [loader(step) for step in range(3 * spe)]
    resumed = batches.TrainBatches(ds, 4, seed=5, sampler=sampler, pad=1, max_length=40)
    for step in range(2 * spe - 1, 3 * spe):  # a fresh loader, started mid-epoch
        for key, value in resumed(step).items():
            np.testing.assert_array_equal(value, straight[step][key])
    for step, batch in enumerate(straight):
        plan = batches.epoch_plan(ds.labels, 4, 5, step // spe, sampler)
        check_batch(batch, ds, plan[step % spe], pad=1, max_length=40)


def test_rare_buckets_are_padded_up_to_the_next_kept_one():
    widths = np.array([16, 128, 128, 32, 128, 64, 64, 16])
    # 16 and 64 have two batches each and stay; 32 has one and goes up to 64.
    np.testing.assert_array_equal(
        batches.merge_rare_buckets(widths, 2), [16, 128, 128, 64, 128, 64, 64, 16]
    )
    # Only the largest bucket is always kept.
    np.testing.assert_array_equal(batches.merge_rare_buckets(widths, 4), np.full(8, 128))
    np.testing.assert_array_equal(batches.merge_rare_buckets(widths, 1), widths)


def test_train_batches_pad_batches_of_a_rare_bucket_to_a_common_one():
    ids = [np.arange(1, 41, dtype=np.int32)] * 37 + [np.arange(1, 4, dtype=np.int32)] * 3
    ds = batches.Dataset(ids=ids, labels=np.zeros(40, np.int32))
    merged = batches.TrainBatches(ds, 1, seed=0, sampler="random", pad=0, max_length=64,
                                   min_bucket_batches=8)  # fmt: skip
    own = batches.TrainBatches(ds, 1, seed=0, sampler="random", pad=0, max_length=64)
    assert [own(s)["input_ids"].shape[1] for s in range(40)].count(16) == 3
    for step in range(40):
        a, b = merged(step), own(step)
        assert a["input_ids"].shape[1] == merged.width(step) == 64
        width = b["input_ids"].shape[1]  # the same tokens, more padding
        np.testing.assert_array_equal(a["input_ids"][:, :width], b["input_ids"])
        assert a["attention_mask"].sum() == b["attention_mask"].sum()
        assert not a["attention_mask"][:, width:].any()


def test_token_dropout_replaces_real_tokens_only_and_resumes_exactly():
    ds = random_dataset(64, 3)
    kwargs = dict(seed=3, sampler="random", pad=1, max_length=40)
    plain = batches.TrainBatches(ds, 8, **kwargs)
    dropped = batches.TrainBatches(ds, 8, token_dropout=0.3, **kwargs)
    changed = real = 0
    for step in range(16):
        a, b = plain(step), dropped(step)
        np.testing.assert_array_equal(a["attention_mask"], b["attention_mask"])
        np.testing.assert_array_equal(a["labels"], b["labels"])
        mask = a["attention_mask"] > 0
        np.testing.assert_array_equal(b["input_ids"][~mask], a["input_ids"][~mask])
        differ = b["input_ids"] != a["input_ids"]
        assert np.all(b["input_ids"][differ] == 1)  # replaced by the pad id
        changed += int(differ[mask].sum())  # ids are 3..49: every replaced token differs
        real += int(mask.sum())
    # About 30% of the real tokens (a binomial over ~thousands of tokens: 0.3 +- 0.05).
    assert 0.25 < changed / real < 0.35
    again = batches.TrainBatches(ds, 8, token_dropout=0.3, **kwargs)  # a resumed run
    np.testing.assert_array_equal(again(11)["input_ids"], dropped(11)["input_ids"])
