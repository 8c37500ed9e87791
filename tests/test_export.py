"""Export: a run trained here serves unchanged in peft and transformers (the same logits)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import jax
import numpy as np
import pandas as pd
import pytest

from jaxcls import UserError, export
from jaxcls.config import load_config
from jaxcls.formats import peft_dir
from jaxcls.train import run_model, sharding, steps
from jaxcls.train.restore import load_run

ROOT = Path(__file__).resolve().parents[1]
LABELS = ["negative", "neutral", "positive"]  # as the tiny HF model's id2label (conftest)


def write_data(folder: Path) -> Path:
    path = folder / "train.csv"
    words = ["great", "awful", "fine", "slow", "很好", "失望", "一般", "推荐"]
    texts = [f"{a} {b} {i}" for i in range(3) for a in words for b in words[:3]]
    pd.DataFrame({"text": texts, "label": [LABELS[i % 3] for i in range(len(texts))]}).to_csv(
        path, index=False
    )
    return path


def logits(run, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """A loaded run's own logits (factored LoRA, as evaluation computes them)."""
    eval_step = jax.jit(steps.make_eval_step(run.model, run.lora, sharding.make_mesh("0")))
    batch = {"input_ids": ids, "attention_mask": mask, "labels": np.zeros(len(ids), np.int32)}
    return np.asarray(eval_step(run.trainable, run.frozen, batch)["logits"])


def torch_logits(model, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        out = model.eval()(input_ids=torch.tensor(ids).long(), attention_mask=torch.tensor(mask))
    return out.logits.numpy()


@pytest.fixture(scope="module")
def trained(make_hf_model, tmp_path_factory, padded_batch):
    """(HF base, run dir, the run's logits on the padded batch) after 2 training steps."""
    from jaxcls.train.trainer import Trainer

    hf_dir = make_hf_model()
    root = tmp_path_factory.mktemp("export")
    data = write_data(root)
    cfg = load_config(
        ROOT / "configs" / "tiny.py",
        [f"model.path={hf_dir}", f"data.train={data}", f"data.val={data}", "optim.lr=0.05",
         "train.max_steps=2", "train.eval_every=2", "model.projection_dim=8",
         "contrastive.temperature_schedule=learnable"],
    )  # fmt: skip
    Trainer(cfg, root / "run").fit()
    return hf_dir, root / "run", logits(load_run(root / "run", "best")[0], *padded_batch)


class Records(logging.Handler):
    """Collects the jaxcls log messages (the entry points reconfigure the root logger)."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_peft_export_loads_in_peft(trained, padded_batch, torch_forward, tmp_path):
    import torch
    from peft import PeftModel, get_peft_model_state_dict
    from safetensors import safe_open
    from transformers import AutoTokenizer, Qwen3ForSequenceClassification

    hf_dir, workdir, ours = trained
    out = tmp_path / "peft"
    records, logger = Records(), logging.getLogger("jaxcls")
    logger.addHandler(records)
    try:
        export.main(["--workdir", str(workdir), "--format", "peft", "--out", str(out)])
    finally:
        logger.removeHandler(records)
    assert "not exported (training only): projection, extra/log_temperature" in records.messages
    # Loading the run restores its trained head: nothing is said about the base's own head.
    assert not [m for m in records.messages if "score head" in m], records.messages
    config = json.loads((out / "adapter_config.json").read_text())
    assert (config["peft_type"], config["task_type"], config["r"], config["lora_alpha"]) == (
        "LORA", "SEQ_CLS", 4, 8.0,
    )  # fmt: skip
    assert config["modules_to_save"] == ["score"]
    assert config["base_model_name_or_path"] == str(Path(hf_dir).absolute())
    assert json.loads((out / "labels.json").read_text()) == LABELS
    assert AutoTokenizer.from_pretrained(out).pad_token == "<|endoftext|>"

    base = Qwen3ForSequenceClassification.from_pretrained(hf_dir, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, out)
    ids, mask = padded_batch
    # Training moved the logits (a no-op export would not pass), and peft computes ours.
    assert np.abs(ours - torch_forward(hf_dir, ids, mask)[0]).max() > 0.05
    np.testing.assert_allclose(torch_logits(model, ids, mask), ours, atol=1e-4)
    # The names peft itself would save for this model are exactly the file's.
    with safe_open(out / "adapter_model.safetensors", "np") as f:
        assert set(f.keys()) == set(get_peft_model_state_dict(model))

    # Read back here (base from base_model_name_or_path): our merged weights, LoRA folded in.
    run, _ = load_run(workdir, "best")
    jax.tree_util.tree_map(
        lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6),
        peft_dir.load_merged(out).params,
        without_projection(run.merged_params()),
    )


def test_merged_export_loads_in_transformers(trained, padded_batch, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    _, workdir, ours = trained
    out = tmp_path / "merged"
    export.export(workdir, "best", "merged", out)
    model = AutoModelForSequenceClassification.from_pretrained(out)
    assert model.config.id2label == dict(enumerate(LABELS))
    assert model.config.label2id == {n: i for i, n in enumerate(LABELS)}
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert model.config.pad_token_id == tokenizer.pad_token_id is not None
    np.testing.assert_allclose(torch_logits(model, *padded_batch), ours, atol=1e-4)


def without_projection(params):
    return {k: v for k, v in params.items() if k != "projection"}


def test_init_from_a_run_dir(trained, tmp_path):
    """lora.init_from a run dir, with another rank and alpha: the same merged weights."""
    hf_dir, workdir, _ = trained
    source, _ = load_run(workdir, "best")
    cfg = load_config(
        ROOT / "configs" / "tiny.py",
        [f"model.path={hf_dir}", f"lora.init_from={workdir}", "lora.rank=6", "lora.alpha=3.0"],
    )
    run = run_model.build(cfg, tmp_path, LABELS, write_base=False)
    assert run.trainable["adapters"]["model"]["layers_1"]["mlp"]["up_proj"]["lora_a"].shape[1] == 6
    jax.tree_util.tree_map(
        lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6),
        without_projection(run.merged_params()),
        without_projection(source.merged_params()),
    )


def test_export_refuses(trained, tmp_path):
    _, workdir, _ = trained
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(UserError, match="not empty"):
        export.export(workdir, "best", "merged", tmp_path / "full")
    with pytest.raises(UserError, match="no such run directory"):
        export.main(["--workdir", str(tmp_path / "none"), "--format", "peft", "--out", "o"])


def readme_peft_recipe() -> str:
    """The README's Python block that loads a peft export (under "Load the peft export")."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    after = readme[readme.index("Load the peft export in PyTorch") :]
    return after.split("```python\n", 1)[1].split("```", 1)[0]


def test_readme_peft_recipe_loads_three_classes_on_a_causal_lm_base(make_hf_model, tmp_path):
    """The README's recipe, run as written, on a 3-class export of a run whose base is a causal
    LM without pad_token_id (as Qwen3-1.7B): it classifies a padded batch as the run does."""
    import shutil

    from jaxcls.train.trainer import Trainer

    base = tmp_path / "qwen3-causal"
    shutil.copytree(make_hf_model(causal_lm=True), base)
    hf = json.loads((base / "config.json").read_text())
    hf.pop("pad_token_id", None)
    (base / "config.json").write_text(json.dumps(hf))
    cfg = load_config(
        ROOT / "configs" / "tiny.py",
        [f"model.path={base}", f"data.train={write_data(tmp_path)}", "train.max_steps=1"],
    )
    trainer = Trainer(cfg, tmp_path / "run")
    # Stands in for training: the LoRA factors and the score head move.
    rng = np.random.default_rng(0)
    moved = jax.tree_util.tree_map(
        lambda x: x + 0.05 * rng.standard_normal(x.shape).astype(x.dtype), trainer.state.trainable
    )
    trainer.ckpts.save(1, trainer.state.replace(trainable=moved), {"step": 1})
    trainer.ckpts.close()
    run, _ = load_run(tmp_path / "run", "latest")
    export.write(run, "peft", tmp_path / "exported" / "peft")

    code = readme_peft_recipe()
    assert '"exported/peft", "models/Qwen3-1.7B"' in code
    code = code.replace('"exported/peft"', repr(str(tmp_path / "exported" / "peft")))
    code = code.replace('"models/Qwen3-1.7B"', repr(str(base)))
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)  # the recipe as a user runs it
    ids = scope["batch"]["input_ids"].numpy()
    mask = scope["batch"]["attention_mask"].numpy()
    assert len(ids) >= 2 and not mask.all()  # a padded batch of several texts
    assert scope["model"].config.id2label == dict(enumerate(LABELS))
    ours = jax.nn.softmax(logits(run, ids.astype(np.int32), mask.astype(np.int32)), axis=-1)
    np.testing.assert_allclose(scope["probs"].numpy(), ours, atol=1e-5)


def test_random_init_run_with_trained_base(tmp_path):
    """A demo run (random-init base, model.train_base): merged holds the trained base; peft
    writes it as OUT/base, where AutoPeftModel finds it."""
    import torch
    from peft import AutoPeftModelForSequenceClassification
    from transformers import AutoModelForSequenceClassification

    from jaxcls.train.trainer import Trainer

    data = write_data(tmp_path)
    cfg = load_config(
        ROOT / "configs" / "tiny.py",
        ["model.num_layers=1", f"data.train={data}", f"data.val={data}", "train.max_steps=1"],
    )
    trainer = Trainer(cfg, tmp_path / "run")
    assert trainer.run.train_base
    # Stands in for training: every trainable leaf (base, heads, LoRA factors) moves.
    rng = np.random.default_rng(0)
    moved = jax.tree_util.tree_map(
        lambda x: x + 0.05 * rng.standard_normal(x.shape).astype(x.dtype), trainer.state.trainable
    )
    trainer.ckpts.save(1, trainer.state.replace(trainable=moved), {"step": 1})
    trainer.ckpts.close()

    run, _ = load_run(tmp_path / "run", "latest")
    ids = np.array([[5, 6, 7, 8], [9, 10, run.pad_id, run.pad_id]], np.int32)
    mask = (np.arange(4) < np.array([[4], [2]])).astype(np.int32)
    ours = logits(run, ids, mask)
    export.write(run, "merged", tmp_path / "merged")
    export.write(run, "peft", tmp_path / "peft")
    merged = AutoModelForSequenceClassification.from_pretrained(tmp_path / "merged")
    np.testing.assert_allclose(torch_logits(merged, ids, mask), ours, atol=1e-4)
    assert (tmp_path / "peft" / "base" / "model.safetensors").is_file()
    adapter = AutoPeftModelForSequenceClassification.from_pretrained(
        tmp_path / "peft", dtype=torch.float32
    )
    np.testing.assert_allclose(torch_logits(adapter, ids, mask), ours, atol=1e-4)

    # Its adapters fit only its own trained base: continuing from them is refused. (The
    # session is built in the run dir only to reuse its saved random-init base.)
    cfg = load_config(ROOT / "configs" / "tiny.py", [f"lora.init_from={tmp_path / 'run'}"])
    with pytest.raises(UserError, match="also trained its random-init base"):
        run_model.build(cfg, tmp_path / "run", LABELS, write_base=False)
