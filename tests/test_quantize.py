"""The int8 frozen base (``model.quantize``): against NumPy, the float model and transformers."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pandas as pd
import pytest
from conftest import TINY
from jax.sharding import PartitionSpec as P

from jaxcls import Classifier, UserError, export
from jaxcls.config import load_config, validate_config
from jaxcls.model import lora, quant
from jaxcls.train import run_model, sharding, steps
from jaxcls.train.restore import load_run

ROOT = Path(__file__).resolve().parents[1]
LABELS = ["negative", "neutral", "positive"]  # as the tiny HF model's id2label (conftest)
WORDS = "the movie was great terrible plot food slow 电影 非常 好看 失望 价格 便宜 客服".split()


def texts(n: int, seed: int = 0, max_words: int = 11) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, rng.integers(1, max_words + 1))) for _ in range(n)]


def reference_quantize(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Column by column, as written in the issue: scale = max|w| / 127, q = round(w / scale)
    (in float32: bf16 weights often sit exactly between two steps, where float64 may differ)."""
    w = w.astype(np.float32)
    q, scale = np.zeros(w.shape, np.int8), np.ones(w.shape[1], np.float32)
    for j in range(w.shape[1]):
        if np.abs(w[:, j]).max() > 0:
            scale[j] = np.abs(w[:, j]).max() / np.float32(127)
            q[:, j] = np.rint(w[:, j] / scale[j])
    return q, scale


@pytest.mark.parametrize("dtype", [np.float32, ml_dtypes.bfloat16])
def test_round_trip_matches_numpy(dtype):
    w = np.random.default_rng(0).standard_normal((48, 20)).astype(dtype)
    w[:, 5] = 0  # an all-zero column: scale 1, q 0
    kernel = quant.quantize(w)
    want_q, want_scale = reference_quantize(w)
    assert kernel.q.dtype == np.int8 and kernel.scale.dtype == np.float32
    np.testing.assert_array_equal(kernel.q, want_q)
    np.testing.assert_allclose(kernel.scale, want_scale, rtol=1e-6)
    back = quant.dequantize(kernel)
    # Rounding to the nearest step: each weight within half a step of its column's scale.
    assert np.all(np.abs(back - w.astype(np.float32)) <= want_scale / 2 * (1 + 1e-5))
    # A stack of layers [L, in, out] quantizes as each layer does.
    stacked = quant.quantize(np.stack([w, 2 * w]))
    np.testing.assert_array_equal(stacked.q[1], quant.quantize(2 * w).q)


def test_lora_on_int8_kernel_matches_dequantized_float():
    """The factored product and its hand-written backward on q * scale, against autodiff of
    the plain formula on the dequantized kernel."""
    rng = np.random.default_rng(1)
    kernel = jax.tree_util.tree_map(jnp.asarray, quant.quantize(rng.standard_normal((16, 8))))
    w = quant.dequantize(kernel)
    x, a, b = (
        jnp.asarray(rng.standard_normal(s), jnp.float32) for s in ((3, 5, 16), (16, 4), (4, 8))
    )

    def ours(x, a, b):
        out = lora.factored_matmul(x, lora.LoRAWeight(kernel, a, b, 2.0), jnp.float32, None)
        return jnp.sum(jnp.sin(out))

    def plain(x, a, b):
        return jnp.sum(jnp.sin(x @ w + 2.0 * (x @ a) @ b))

    np.testing.assert_allclose(ours(x, a, b), plain(x, a, b), rtol=1e-5)
    grads = jax.grad(ours, (0, 1, 2))(x, a, b), jax.grad(plain, (0, 1, 2))(x, a, b)
    for got, want in zip(*grads, strict=True):
        np.testing.assert_allclose(got, want, atol=1e-4)


@pytest.fixture(scope="module")
def hf_bf16(tokenizer_dir, tmp_path_factory):
    """A tiny bf16 ``Qwen3ForSequenceClassification`` as transformers initialises Qwen3
    (normal(0, 0.02) weights, unit norms), with a score head of std 0.15: its classes are
    apart (mean top probability 0.6), as a trained head's are. conftest's models (std 0.15
    everywhere) are harsher: there int8 moves probabilities by up to 0.035 (README)."""
    import torch
    from transformers import AutoTokenizer, Qwen3Config, Qwen3ForSequenceClassification

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = Qwen3Config(
        vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id, id2label=dict(enumerate(LABELS)), **TINY,
    )  # fmt: skip
    torch.manual_seed(0)
    model = Qwen3ForSequenceClassification(config).eval()
    with torch.no_grad():
        model.score.weight.normal_(0.0, 0.15)
    out = tmp_path_factory.mktemp("hf_init")
    model.to(torch.bfloat16).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def test_classifier_int8_close_to_float(hf_bf16):
    """Probabilities within 2e-2 of the bf16 model, the same argmax on >= 99% of the texts,
    and the projection kernels in half the bytes (plus a float32 scale per column)."""
    many = texts(400)
    float_clf = Classifier.load(hf_bf16, batch_size=len(many))  # one batch: one compilation
    int8_clf = Classifier.load(hf_bf16, batch_size=len(many), quantize="int8")
    want, got = float_clf.predict_proba(many), int8_clf.predict_proba(many)
    diff = np.abs(got - want).max()
    assert 0 < diff <= 2e-2  # (0: it did run on other weights)
    same = got.argmax(1) == want.argmax(1)
    assert np.mean(same) >= 0.99
    # Any flip is a near tie: the float model's top two within twice the largest change.
    top2 = np.sort(want, axis=1)[:, -2:]
    assert np.all(same | (top2[:, 1] - top2[:, 0] <= 2 * diff))

    kernels = lambda p: {k: v for k, v in flat(p).items() if quant.is_kernel(k)}  # noqa: E731
    bf16, int8 = kernels(float_clf.params), kernels(int8_clf.params)
    assert len(bf16) == 3 * 7 and set(bf16) == set(int8)
    columns = sum(v.shape[-1] for v in bf16.values())
    assert quant.weight_bytes(int8) <= 0.5 * quant.weight_bytes(bf16) + 4 * columns
    assert all(v.q.dtype == np.int8 for v in int8.values())
    # Embedding, norms and the score head keep the model's dtype.
    rest = [v for k, v in flat(int8_clf.params).items() if not quant.is_kernel(k)]
    assert {np.dtype(v.dtype).name for v in rest} == {"bfloat16"}

    with pytest.raises(UserError, match="quantize is 'int4'"):
        Classifier.load(hf_bf16, quantize="int4")


def test_scanned_and_unrolled_int8_agree(hf_bf16, padded_batch, tmp_path):
    """The eval step on the int8 base with LoRA (B moved off zero): the same logits scanned
    (layers stacked, Int8Kernel leaves included) and unrolled, near the float base's."""
    tiny = ROOT / "configs" / "tiny.py"
    ids, mask = padded_batch
    batch = {"input_ids": ids, "attention_mask": mask, "labels": np.zeros(len(ids), np.int32)}
    out = {}
    for scan, quantize in ((True, True), (False, True), (True, False)):
        overrides = [f"model.path={hf_bf16}", "model.quantize=int8", f"model.scan_layers={scan}"]
        run = run_model.build(load_config(tiny, overrides), tmp_path, LABELS, quantize=quantize)
        assert quant.is_quantized(run.frozen) == quantize
        moved = jax.tree_util.tree_map(lambda x: x + 0.1, run.trainable["adapters"])
        trainable = {**run.trainable, "adapters": moved}
        step = jax.jit(steps.make_eval_step(run.model, run.lora, sharding.make_mesh("0")))
        out[scan, quantize] = np.asarray(step(trainable, run.frozen, batch)["logits"])
    np.testing.assert_allclose(out[True, True], out[False, True], atol=1e-5)
    assert 0 < np.abs(out[True, True] - out[True, False]).max() < 0.1


def test_fsdp_splits_int8_kernels_and_replicates_scales():
    stacked, layer = "model/layers/mlp/up_proj/kernel", "model/layers_2/self_attn/o_proj/kernel"
    assert sharding.leaf_spec(f"{stacked}/q", (27, 64, 88), 2) == P(None, "fsdp", None)
    assert sharding.leaf_spec(f"{layer}/q", (64, 64), 2) == P("fsdp", None)
    assert sharding.leaf_spec(f"{stacked}/scale", (27, 88), 2) == P()


def flat(params) -> dict:
    """``{"model/layers_0/mlp/up_proj/kernel": leaf}`` (an Int8Kernel is one leaf)."""
    leaves = jax.tree_util.tree_leaves_with_path(
        params, is_leaf=lambda x: isinstance(x, quant.Int8Kernel)
    )
    return {"/".join(str(k.key) for k in path): leaf for path, leaf in leaves}


def write_data(folder: Path) -> Path:
    """48 texts whose label is their first word's (a task a few steps can learn)."""
    path = folder / "train.csv"
    first = {"negative": "terrible", "neutral": "价格", "positive": "great"}
    labels = [LABELS[i % 3] for i in range(48)]
    rows = [f"{first[y]} {t}" for y, t in zip(labels, texts(48, seed=1), strict=True)]
    pd.DataFrame({"text": rows, "label": labels}).to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def int8_run(hf_bf16, tmp_path_factory):
    """A run of 6 full-batch steps with LoRA on the int8 base (scanned layers), and its data."""
    from jaxcls.train.trainer import Trainer

    root = tmp_path_factory.mktemp("int8")
    data = write_data(root)
    cfg = load_config(
        ROOT / "configs" / "tiny.py",
        [f"model.path={hf_bf16}", "model.quantize=int8", "model.param_dtype=bfloat16",
         f"data.train={data}", f"data.val={data}", "optim.lr=0.02", "train.max_steps=6",
         "train.eval_every=6", "train.batch_size=48", "lora.dropout=0.0", "contrastive.loss=none",
         # The export tolerance below was measured on these last weights (0.018 of 0.02).
         "optim.ema=0"],
    )  # fmt: skip
    trainer = Trainer(cfg, root / "run")
    trainer.fit()
    return root / "run", data


def test_training_on_int8_base(int8_run):
    workdir, _ = int8_run
    events = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    train = [e["loss"] for e in events if e.get("split") == "train"]
    assert len(train) == 6 and all(np.isfinite(train))
    assert train[-1] < 0.8 * train[0]
    run, _ = load_run(workdir, "best")
    assert quant.is_quantized(run.frozen) and run.model.head.scan
    adapters = run.trainable["adapters"]["model"]["layers_0"]["self_attn"]["q_proj"]
    assert np.abs(adapters["lora_b"]).max() > 0  # LoRA trained on top


def test_classifier_and_export_of_int8_run(int8_run, tmp_path):
    """The run loads as an int8 Classifier; its merged export (into the original bf16 weights)
    loads in transformers with probabilities within 2e-2 of the int8 run's."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    workdir, _ = int8_run
    many = texts(40, seed=2, max_words=4)  # none truncated (transformers does not truncate)
    clf = Classifier.load(workdir, batch_size=len(many))
    assert any(isinstance(x, lora.LoRAWeight) for x in flat_nodes(clf.params))
    ours = clf.predict_proba(many)

    out = export.export(workdir, "best", "merged", tmp_path / "merged")
    model = AutoModelForSequenceClassification.from_pretrained(out, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    tokenizer.padding_side = "right"
    with torch.no_grad():
        logits = model(**tokenizer(many, padding=True, return_tensors="pt")).logits
    theirs = torch.softmax(logits, -1).numpy()
    assert np.abs(theirs - ours).max() <= 2e-2
    assert np.mean(theirs.argmax(1) == ours.argmax(1)) >= 0.95

    # Merged into the original weights: exported - base = scale * A @ B (up to bf16 rounding).
    run, _ = load_run(workdir, "best", quantize=False)
    base = AutoModelForSequenceClassification.from_pretrained(run.cfg.model.path)
    name = "model.layers.1.mlp.up_proj.weight"
    got = model.state_dict()[name].float() - base.state_dict()[name].float()
    ad = run.trainable["adapters"]["model"]["layers_1"]["mlp"]["up_proj"]
    want = run.lora.scale * np.asarray(ad["lora_a"]) @ np.asarray(ad["lora_b"])
    np.testing.assert_allclose(got.numpy().T, want, atol=2e-2)


def flat_nodes(params) -> list:
    return jax.tree_util.tree_leaves(params, is_leaf=lambda x: isinstance(x, lora.LoRAWeight))


def test_quantize_needs_a_frozen_base():
    tiny = ROOT / "configs" / "tiny.py"
    with pytest.raises(UserError, match="model.train_base=false"):
        validate_config(load_config(tiny, ["model.quantize=int8"]))
    with pytest.raises(UserError, match="'model.quantize' is 'int4'"):
        validate_config(load_config(tiny, ["model.quantize=int4"]))
    validate_config(load_config(tiny, ["model.quantize=int8", "model.train_base=false"]))
