"""The key table, the converter, the model dir format and their error cases."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from jaxcls.convert import convert, load_hf, main
from jaxcls.errors import UserError
from jaxcls.formats import hf_keys, model_dir
from jaxcls.formats.model_dir import read_model
from jaxcls.model.classifier import HeadConfig, Qwen3Classifier
from jaxcls.model.qwen3 import Qwen3Config


def flat(tree) -> dict[str, np.ndarray]:
    return flax.traverse_util.flatten_dict(tree, sep="/")


def copy_dir(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def hf_tensors(hf_dir: Path) -> dict[str, np.ndarray]:
    return load_file(hf_dir / "model.safetensors")


def test_table_covers_the_hf_checkpoint_both_ways(make_hf_model):
    hf_dir = make_hf_model()
    tensors = hf_tensors(hf_dir)
    config = Qwen3Config.from_hf(hf_dir)
    want = hf_keys.expected_hf_shapes(config, num_labels=3)
    assert {k: v.shape for k, v in tensors.items()} == want
    for name, array in tensors.items():
        path, transform = hf_keys.hf_to_ours(name)
        assert hf_keys.ours_to_hf(path) == (name, transform)
        ours = transform.to_ours(array)
        assert ours.shape == transform.shape(array.shape)
        np.testing.assert_array_equal(transform.to_hf(ours), array)
    assert hf_keys.hf_to_ours("lm_head.weight") is None and hf_keys.is_skipped("lm_head.weight")


def test_table_matches_the_flax_param_tree():
    config = Qwen3Config(
        vocab_size=97, hidden_size=24, intermediate_size=40, num_hidden_layers=2,
        num_attention_heads=3, num_key_value_heads=1, head_dim=8,
    )  # fmt: skip
    ids = jnp.zeros((1, 4), jnp.int32)
    model = Qwen3Classifier(config, HeadConfig(num_labels=5))
    tree = jax.eval_shape(model.init, jax.random.key(0), ids, ids)["params"]
    assert {k: v.shape for k, v in flat(tree).items()} == hf_keys.expected_param_shapes(config, 5)


def test_write_model_takes_jax_arrays(tmp_path):
    config = Qwen3Config(
        vocab_size=53, hidden_size=16, intermediate_size=24, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, head_dim=8,
    )  # fmt: skip
    ids = jnp.zeros((1, 4), jnp.int32)
    params = Qwen3Classifier(config, HeadConfig(num_labels=2)).init(jax.random.key(1), ids, ids)
    id2label = {0: "no", 1: "yes"}
    out = model_dir.write_model(
        tmp_path / "m", config, params["params"], id2label, tokenizer_dir=None, source="init"
    )
    loaded = read_model(out)
    assert loaded.config == config and loaded.id2label == id2label
    assert loaded.tokenizer_dir is None
    want = flat(params["params"])
    assert set(flat(loaded.params)) == set(want)
    for key, value in flat(loaded.params).items():
        np.testing.assert_array_equal(value, want[key])


def test_convert_writes_a_model_dir_that_reads_back(make_hf_model, tmp_path, capsys):
    hf_dir = make_hf_model()
    out = tmp_path / "model"
    assert main(["--hf", str(hf_dir), "--out", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    meta = json.loads((out / model_dir.META_FILE).read_text())
    assert meta["format"] == "jaxcls-model" and meta["version"] == 1
    assert meta["id2label"] == {"0": "negative", "1": "neutral", "2": "positive"}
    assert meta["param_dtype"] == "float32" and meta["qwen3"]["num_hidden_layers"] == 3
    assert {"tokenizer.json", "tokenizer_config.json"} <= {p.name for p in out.iterdir()}
    assert not list(tmp_path.glob("*.tmp-*"))
    loaded = read_model(out)
    assert loaded.config == Qwen3Config.from_hf(hf_dir) and loaded.tokenizer_dir == out
    # Every tensor of the source, through the table, equals what the model dir holds.
    params = flat(loaded.params)
    for name, array in hf_tensors(hf_dir).items():
        path, transform = hf_keys.hf_to_ours(name)
        np.testing.assert_array_equal(transform.to_hf(params[path]), array)
    # read_model also takes the HF dir itself, and casts on request.
    from_hf = read_model(hf_dir, dtype="bfloat16")
    assert from_hf.id2label == loaded.id2label
    assert {x.dtype.name for x in jax.tree_util.tree_leaves(from_hf.params)} == {"bfloat16"}
    cast = flat(read_model(out, dtype="bfloat16").params)
    assert {x.dtype.name for x in cast.values()} == {"bfloat16"}
    np.testing.assert_array_equal(cast["score/kernel"], from_hf.params["score"]["kernel"])


def test_bf16_model_dir_keeps_bf16(make_hf_model, tmp_path):
    out = convert(make_hf_model(dtype="bfloat16"), tmp_path / "m")
    assert json.loads((out / model_dir.META_FILE).read_text())["param_dtype"] == "bfloat16"
    leaves = jax.tree_util.tree_leaves(read_model(out).params)
    assert {x.dtype.name for x in leaves} == {"bfloat16"}


@pytest.mark.parametrize("tie", [False, True])
def test_causal_lm_becomes_a_base_model_without_lm_head(tie, make_hf_model, tmp_path):
    hf_dir = make_hf_model(causal_lm=True, tie=tie)
    assert ("lm_head.weight" in hf_tensors(hf_dir)) == (not tie)
    config, params, id2label = load_hf(hf_dir)
    assert id2label is None and set(params) == {"model"}
    assert set(flat(params)) == set(hf_keys.expected_param_shapes(config, None))
    loaded = read_model(convert(hf_dir, tmp_path / "base"))
    assert loaded.id2label is None and "score" not in loaded.params


def test_missing_id2label_gives_hf_default_names(make_hf_model, tmp_path):
    hf_dir = copy_dir(make_hf_model(), tmp_path / "hf")
    raw = json.loads((hf_dir / "config.json").read_text())
    del raw["id2label"], raw["label2id"]
    raw["num_labels"] = 3
    (hf_dir / "config.json").write_text(json.dumps(raw))
    assert load_hf(hf_dir)[2] == {0: "LABEL_0", 1: "LABEL_1", 2: "LABEL_2"}


def test_pytorch_bin_equals_safetensors(make_hf_model, tmp_path, monkeypatch):
    import torch

    src = make_hf_model()
    hf_dir = tmp_path / "bin"
    hf_dir.mkdir()
    shutil.copy(src / "config.json", hf_dir)
    state = {k: torch.from_numpy(v) for k, v in hf_tensors(src).items()}
    torch.save(state, hf_dir / "pytorch_model.bin")
    want = flat(load_hf(src)[1])
    got = flat(load_hf(hf_dir)[1])
    assert set(got) == set(want)
    for key, value in want.items():
        np.testing.assert_array_equal(got[key], value)
    monkeypatch.setitem(sys.modules, "torch", None)  # as if torch were not installed
    with pytest.raises(UserError, match="needs torch"):
        load_hf(hf_dir)


def _no_config(d: Path) -> None:
    (d / "config.json").unlink()


def _no_weights(d: Path) -> None:
    (d / "model.safetensors").unlink()


def _llama(d: Path) -> None:
    raw = json.loads((d / "config.json").read_text())
    raw.update(model_type="llama", architectures=["LlamaForSequenceClassification"])
    (d / "config.json").write_text(json.dumps(raw))


def _rewrite_tensors(d: Path, edit) -> None:
    tensors = hf_tensors(d)
    edit(tensors)
    save_file(tensors, d / "model.safetensors", metadata={"format": "pt"})


def _wrong_shape(d: Path) -> None:
    def edit(t):
        t["model.layers.1.mlp.up_proj.weight"] = t["model.layers.1.mlp.up_proj.weight"][:-1]

    _rewrite_tensors(d, edit)


def _missing_tensor(d: Path) -> None:
    _rewrite_tensors(d, lambda t: t.pop("model.layers.2.self_attn.k_norm.weight"))


def _unknown_tensor(d: Path) -> None:
    _rewrite_tensors(d, lambda t: t.update({"score.bias": np.zeros(3, np.float32)}))


def _missing_shard(d: Path) -> None:
    next(d.glob("model-0000*.safetensors")).unlink()


@pytest.mark.parametrize(
    "breakage, words",
    [
        (_no_config, "no config.json"),
        (_no_weights, "no weights found"),
        (_llama, "'llama'"),
        (_wrong_shape, r"layers.1.mlp.up_proj.weight has shape \[87, 64\], expected \[88, 64\]"),
        (_missing_tensor, "missing tensors.*k_norm"),
        (_unknown_tensor, "score.bias"),
        (_missing_shard, "shards that are missing"),
    ],
)  # fmt: skip
def test_converter_errors_leave_nothing(breakage, words, make_hf_model, tmp_path):
    src = make_hf_model(shard="60KB") if breakage is _missing_shard else make_hf_model()
    hf_dir = copy_dir(src, tmp_path / "hf")
    breakage(hf_dir)
    out = tmp_path / "out"
    with pytest.raises(UserError, match=words) as err:
        convert(hf_dir, out)
    assert "\n" not in str(err.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf"]


def test_failure_while_writing_leaves_nothing(make_hf_model, tmp_path, monkeypatch):
    def broken_save(path, params):
        path.mkdir()
        (path / "half-written").write_text("x")
        raise OSError("disk full")

    monkeypatch.setattr(model_dir, "_save_params", broken_save)
    with pytest.raises(OSError, match="disk full"):
        convert(make_hf_model(), tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_refuses_a_non_empty_out_dir(make_hf_model, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(UserError, match="not empty"):
        convert(make_hf_model(), out)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_read_model_rejects_other_dirs(tmp_path):
    with pytest.raises(UserError, match="neither a jaxcls model dir"):
        read_model(tmp_path)
    with pytest.raises(UserError, match="no such model dir"):
        read_model(tmp_path / "absent")


def test_read_model_checks_param_shapes(make_hf_model, tmp_path):
    out = convert(make_hf_model(), tmp_path / "m")
    meta = json.loads((out / model_dir.META_FILE).read_text())
    meta["qwen3"]["intermediate_size"] = 89
    (out / model_dir.META_FILE).write_text(json.dumps(meta))
    with pytest.raises(UserError, match="gate_proj/kernel has shape"):
        read_model(out)


def test_cli_error_exits_2_without_traceback(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", JAX_PLATFORMS="cpu")
    cmd = [sys.executable, "-m", "jaxcls.convert", "--hf", str(tmp_path / "nope"), "--out"]
    proc = subprocess.run([*cmd, str(tmp_path / "out")], capture_output=True, text=True, env=env)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and "no config.json" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()
