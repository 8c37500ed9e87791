"""peft adapters made in PyTorch give the same numbers here: Classifier, eval.py, predict.py,
and training from them (``lora.init_from``)."""

from __future__ import annotations

import json
import re
import runpy
import sys
from pathlib import Path

import jax
import numpy as np
import pandas as pd
import pytest

from jaxcls import Classifier, UserError
from jaxcls.config import load_config
from jaxcls.formats import hf_keys, peft_dir
from jaxcls.model import lora
from jaxcls.train import run_model, sharding, steps

ROOT = Path(__file__).resolve().parents[1]
TEXTS = [
    "the movie was great and the actors were wonderful",
    "物流太慢了，包装也破损了",
    "ok",
    "service was slow but the food tasted fine",
    "价格便宜，质量一般",
]
# Per-module ranks and alphas, only some modules and layers; rslora with a tiny rank.
ADAPTERS = {
    "patterns": dict(
        r=8, lora_alpha=16, target_modules=["q_proj", "v_proj", "down_proj"],
        rank_pattern={"v_proj": 4}, alpha_pattern={"down_proj": 5.0}, layers_to_transform=[0, 2],
    ),
    "rslora": dict(
        r=2, lora_alpha=3, use_rslora=True,
        target_modules=["k_proj", "o_proj", "gate_proj", "up_proj"],
    ),
}  # fmt: skip
# Saved with the "rslora" adapter, unlike the base's id2label.
RSLORA_LABELS = ["positive", "negative", "neutral"]


def peft_model(hf_dir: Path, kind: str):
    """A PyTorch peft SEQ_CLS model with random non-zero LoRA factors and score head."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import Qwen3ForSequenceClassification

    torch.manual_seed(len(kind))
    base = Qwen3ForSequenceClassification.from_pretrained(hf_dir, dtype=torch.float32)
    model = get_peft_model(base, LoraConfig(task_type="SEQ_CLS", **ADAPTERS[kind]))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name or "modules_to_save" in name:
                p.normal_(0.0, 0.3)
    return model.eval()


def torch_logits(model, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        out = model(
            input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask)
        )
    return out.logits.numpy()


def encode(tokenizer_dir: Path, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    tokenizer.padding_side = "right"
    enc = tokenizer(texts, padding=True, return_tensors="np")
    return enc["input_ids"], enc["attention_mask"]


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


@pytest.fixture(scope="module")
def hf_dir(make_hf_model):
    return make_hf_model()


@pytest.fixture(scope="module")
def adapters(hf_dir, tmp_path_factory):
    """kind -> (adapter dir, PyTorch probabilities of TEXTS, logits of the padded batch)."""
    out = {}
    ids, mask = encode(hf_dir, TEXTS)
    for kind in ADAPTERS:
        model = peft_model(hf_dir, kind)
        path = tmp_path_factory.mktemp(f"peft_{kind}")
        model.save_pretrained(path)
        if kind == "rslora":  # our labels.json names the score's rows, whatever the base says
            (path / "labels.json").write_text(json.dumps(RSLORA_LABELS))
        out[kind] = (path, model)
    return out, ids, mask


@pytest.mark.parametrize("kind", list(ADAPTERS))
def test_classifier_matches_peft(kind, adapters, hf_dir):
    found, ids, mask = adapters
    path, model = found[kind]
    want = softmax(torch_logits(model, ids, mask))
    assert np.ptp(want, axis=-1).max() > 0.3  # the adapter's output is far from uniform
    clf = Classifier.load(path, base=hf_dir, batch_size=4)
    np.testing.assert_allclose(clf.predict_proba(TEXTS), want, atol=1e-5)
    labels = RSLORA_LABELS if kind == "rslora" else ["negative", "neutral", "positive"]
    assert clf.labels == labels  # from labels.json, else the base's id2label


def test_adapter_alone_differs_from_base(adapters, padded_batch):
    """The imported factors matter: dropping them changes the logits (not a no-op import)."""
    found, _, _ = adapters
    path, model = found["patterns"]
    ids, mask = padded_batch
    adapted = torch_logits(model, ids, mask)
    with model.disable_adapter():
        plain = torch_logits(model, ids, mask)
    assert np.abs(adapted - plain).max() > 0.1
    adapter = peft_dir.read(path)
    # peft's scales: alpha / r per module (rank_pattern / alpha_pattern), layers 0 and 2 only.
    scales = {hf_keys.hf_module(m): s for m, (_, _, s) in adapter.lora.items()}
    assert scales == {
        f"model.layers.{i}.{name}": scale
        for i in (0, 2)
        for name, scale in [("self_attn.q_proj", 2.0), ("self_attn.v_proj", 4.0),
                            ("mlp.down_proj", 5 / 8)]
    }  # fmt: skip


def lora_cfg(hf_dir: Path, path: Path, *overrides: str):
    return load_config(
        ROOT / "configs" / "tiny.py",
        [f"model.path={hf_dir}", f"lora.init_from={path}", "lora.dropout=0.0", *overrides],
    )


def session_logits(run, ids, mask) -> np.ndarray:
    lora_config = lora.LoRAConfig.from_config(run.cfg.lora)
    eval_step = jax.jit(steps.make_eval_step(run.model, lora_config, sharding.make_mesh("0")))
    batch = {"input_ids": ids, "attention_mask": mask, "labels": np.zeros(len(ids), np.int32)}
    return np.asarray(eval_step(run.trainable, run.frozen, batch)["logits"])


def test_init_from_starts_at_the_adapter(adapters, hf_dir, padded_batch, tmp_path):
    """Training's step-0 state (rank 12 > the adapter's 8 and 4, scales folded into B)."""
    from jaxcls.train.trainer import Trainer

    found, _, _ = adapters
    path, model = found["patterns"]
    ids, mask = padded_batch
    want = torch_logits(model, ids, mask)
    data_file = tmp_path / "train.csv"
    labels = ["positive", "negative", "neutral"] * 3 + ["positive"]
    pd.DataFrame({"text": TEXTS * 2, "label": labels}).to_csv(data_file, index=False)
    cfg = lora_cfg(hf_dir, path, "lora.rank=12", "lora.alpha=7.0", f"data.train={data_file}",
                   f"data.val={data_file}")  # fmt: skip
    trainer = Trainer(cfg, tmp_path / "run")  # nothing compiled yet: its initial state
    assert trainer.label_names == ["negative", "neutral", "positive"]
    run = trainer.run
    np.testing.assert_allclose(session_logits(run, ids, mask), want, atol=1e-4)
    adapters_ = run.trainable["adapters"]["model"]
    q = adapters_["layers_0"]["self_attn"]["q_proj"]
    assert q["lora_a"].shape == (64, 12) and not np.any(q["lora_b"][8:])
    # A target the adapter does not cover starts fresh: B = 0.
    assert not np.any(adapters_["layers_1"]["self_attn"]["q_proj"]["lora_b"])

    # Labels in another order: the score head's columns follow them.
    moved = run_model.build(cfg, tmp_path / "other", ["positive", "negative", "neutral"], False)
    score = run.trainable["params"]["score"]["kernel"]
    np.testing.assert_array_equal(moved.trainable["params"]["score"]["kernel"], score[:, [2, 0, 1]])


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["lora.rank=4"], "lora.rank=8"),
        (["lora.rank=8", "lora.targets=(q_proj|down_proj)$"], "v_proj, which lora.targets"),
    ],
)
def test_init_from_that_does_not_fit(adapters, hf_dir, tmp_path, overrides, message):
    found, _, _ = adapters
    cfg = lora_cfg(hf_dir, found["patterns"][0], *overrides)
    with pytest.raises(UserError, match=re.escape(message)):
        run_model.build(cfg, tmp_path, ["negative", "neutral", "positive"], write_base=False)


def run_script(script: str, argv: list[str], monkeypatch) -> int:
    monkeypatch.setattr(sys, "argv", [script, *argv])
    with pytest.raises(SystemExit) as exit_:
        runpy.run_path(str(ROOT / script), run_name="__main__")
    return exit_.value.code


def test_eval_and_predict_scripts(adapters, hf_dir, tmp_path, monkeypatch, capsys):
    found, ids, mask = adapters
    path, model = found["patterns"]
    want = softmax(torch_logits(model, ids, mask))
    labels = ["negative", "neutral", "positive"]
    gold = [labels[i] for i in want.argmax(-1)]
    data_file = tmp_path / "test.csv"
    pd.DataFrame({"text": TEXTS, "label": gold}).to_csv(data_file, index=False)
    argv = ["--lora_model", str(path), "--base", str(hf_dir), "--data", str(data_file),
            "--out", str(tmp_path / "eval")]  # fmt: skip
    assert run_script("eval.py", argv, monkeypatch) == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["accuracy"] == 1.0
    predicted = pd.read_excel(tmp_path / "eval" / "predictions.xlsx")
    got = predicted[[f"p({n})" for n in labels]].to_numpy()
    np.testing.assert_allclose(got, want, atol=1e-5)

    capsys.readouterr()
    argv = ["--lora_model", str(path), "--base", str(hf_dir), "--json"]
    assert run_script("predict.py", argv + [f"--text={t}" for t in TEXTS], monkeypatch) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    got = np.array([[r["probabilities"][n] for n in labels] for r in records])
    np.testing.assert_allclose(got, want, atol=5e-6)  # printed with 6 decimals


def llama_adapter(path: Path) -> None:
    """A peft SEQ_CLS adapter for a Llama model: Qwen3-like key names, other shapes."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForSequenceClassification

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=40, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, num_labels=3)  # fmt: skip
    model = get_peft_model(
        LlamaForSequenceClassification(config), LoraConfig(task_type="SEQ_CLS", r=4)
    )
    model.save_pretrained(path)


def test_adapter_for_another_architecture(hf_dir, tmp_path, monkeypatch, capsys):
    llama_adapter(tmp_path / "llama")
    with pytest.raises(UserError, match="made for another model"):
        Classifier.load(tmp_path / "llama", base=hf_dir)
    argv = ["--lora_model", str(tmp_path / "llama"), "--base", str(hf_dir), "--text", "hi"]
    assert run_script("predict.py", argv, monkeypatch) == 2
    assert "error:" in capsys.readouterr().err

    # Key names of another architecture (GPT-2), and a non-LoRA peft type.
    from safetensors.numpy import save_file

    gpt2 = tmp_path / "gpt2"
    gpt2.mkdir()
    name = "base_model.model.transformer.h.0.attn.c_attn.lora_A.weight"
    save_file({name: np.ones((4, 8), np.float32)}, gpt2 / "adapter_model.safetensors")
    config = {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "base_model_name_or_path": "gpt2"}
    (gpt2 / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match="tensors that a Qwen3 model does not have"):
        peft_dir.read(gpt2)
    (gpt2 / "adapter_config.json").write_text(json.dumps({**config, "peft_type": "IA3"}))
    with pytest.raises(UserError, match="LORA only"):
        peft_dir.read(gpt2)
