"""optim.ema: the moving average of the trained weights, against a plain NumPy loop, and what a
run's validation, checkpoints and restore read."""

from __future__ import annotations

from pathlib import Path

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers_e2e import make_rows, read_metrics, write_table

from jaxcls.train.weight_average import averaged, weight_average

ROOT = Path(__file__).resolve().parents[1]


def test_average_matches_a_numpy_loop_and_leaves_the_updates_alone():
    decay, lr = 0.8, 0.1
    rng = np.random.default_rng(0)
    params = {"w": rng.normal(size=(3, 2)).astype(np.float32), "b": np.zeros(2, np.float32)}
    plain, averaging = optax.sgd(lr), optax.chain(optax.sgd(lr), weight_average(decay))
    p_plain, p_avg = params, params
    s_plain, s_avg = plain.init(params), averaging.init(params)
    ref_sum = {k: np.zeros_like(v, np.float64) for k, v in params.items()}
    for t in range(1, 6):
        grads = {k: rng.normal(size=v.shape).astype(np.float32) for k, v in params.items()}
        u_plain, s_plain = plain.update(grads, s_plain, p_plain)
        u_avg, s_avg = averaging.update(grads, s_avg, p_avg)
        p_plain, p_avg = optax.apply_updates(p_plain, u_plain), optax.apply_updates(p_avg, u_avg)
        for k in params:
            ref_sum[k] = decay * ref_sum[k] + (1 - decay) * np.asarray(p_plain[k], np.float64)
        got = averaged(p_avg, s_avg, decay)
        for k in params:
            np.testing.assert_array_equal(p_avg[k], p_plain[k])  # the training is unchanged
            np.testing.assert_allclose(got[k], ref_sum[k] / (1 - decay**t), rtol=1e-5, atol=1e-6)
            if t > 1:  # after one update the average is those weights; then it lags
                assert not np.allclose(got[k], p_avg[k])


def test_before_any_update_and_without_averaging_the_weights_are_the_trained_ones():
    params = {"w": jnp.arange(4.0, dtype=jnp.bfloat16)}
    state = optax.chain(optax.sgd(0.1), weight_average(0.9)).init(params)
    got = averaged(params, state, 0.9)
    assert got["w"].dtype == jnp.bfloat16
    np.testing.assert_array_equal(got["w"], params["w"])
    assert averaged(params, optax.sgd(0.1).init(params), 0.0) is params


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Three tiny LoRA runs (a frozen random-init base) from one seed: 1 and 2 steps without
    averaging, 2 steps with optim.ema=0.5 (a checkpoint after each step)."""
    from jaxcls.config import load_config
    from jaxcls.train.trainer import Trainer

    folder = tmp_path_factory.mktemp("ema")
    classes = ("neg", "pos")
    train = write_table(folder / "train.xlsx", make_rows(8, classes, seed=0))
    val = write_table(folder / "val.xlsx", make_rows(4, classes, seed=1))
    common = [f"data.train={train}", f"data.val={val}", "train.loggers=jsonl"]
    common += ["train.eval_every=1", "eval.max_tsne_points=0", "lora.dropout=0"]
    common += ["model.train_base=false"]
    workdirs = {}
    for name, extra in {"1": ["train.max_steps=1", "optim.ema=0"],
                        "2": ["train.max_steps=2", "optim.ema=0"],
                        "ema": ["train.max_steps=2", "optim.ema=0.5"]}.items():  # fmt: skip
        cfg = load_config(ROOT / "configs/tiny.py", common + extra)
        workdirs[name] = folder / name
        Trainer(cfg, workdirs[name]).fit()
    return workdirs


def test_a_run_restores_the_average(runs):
    from jaxcls.train.restore import load_run

    def weights(name: str) -> list[np.ndarray]:
        run, step = load_run(runs[name], "latest")
        assert step == (1 if name == "1" else 2)
        return [np.asarray(x, np.float64) for x in jax.tree_util.tree_leaves(run.trainable)]

    w1, w2, ema = weights("1"), weights("2"), weights("ema")
    # decay 0.5 over two updates: (0.25 w1 + 0.5 w2) / (1 - 0.25)
    for a, b, got in zip(w1, w2, ema, strict=True):
        np.testing.assert_allclose(got, a / 3 + 2 * b / 3, rtol=1e-5, atol=1e-6)
    assert any(not np.allclose(a, b) for a, b in zip(w1, w2, strict=True))


def test_warm_start_from_a_run_reads_its_average(runs):
    from jaxcls.train.restore import load_run
    from jaxcls.train.warmstart import from_run

    run, _ = load_run(runs["ema"], "best")
    adapter = from_run(runs["ema"], "")
    adapters = {
        "/".join(k): v
        for k, v in flax.traverse_util.flatten_dict(run.trainable["adapters"]).items()
    }
    assert adapter.lora
    for module, (a, b, _) in adapter.lora.items():
        np.testing.assert_allclose(a, adapters[f"{module}/lora_a"], rtol=1e-6)
        np.testing.assert_allclose(b, adapters[f"{module}/lora_b"], rtol=1e-6)
    score = np.asarray(run.trainable["params"]["score"]["kernel"], np.float32)
    np.testing.assert_allclose(adapter.tensors["score/kernel"], score, rtol=1e-6)
    # ... and not the last weights the checkpoint also holds.
    from jaxcls.formats import run_dir
    from jaxcls.train import checkpoints

    ckpts = checkpoints.open_checkpoints(runs["ema"], run_dir.read_config(runs["ema"]))
    last = ckpts.restore_as_saved(ckpts.resolve("best"))["trainable"]["params"]["score"]["kernel"]
    ckpts.close()
    assert not np.allclose(adapter.tensors["score/kernel"], np.asarray(last, np.float32))


def test_validation_scores_the_average(runs):
    def val_loss(name: str) -> dict[int, float]:
        events = read_metrics(runs[name] / "metrics.jsonl")
        return {e["step"]: e["loss"] for e in events if e["split"] == "val"}

    plain1, plain2, ema = val_loss("1"), val_loss("2"), val_loss("ema")
    assert ema[1] == pytest.approx(plain1[1], rel=1e-5)  # after one update the average is w1
    assert ema[2] != pytest.approx(plain2[2], rel=1e-4)


def test_ema_is_validated_as_a_config_key():
    from jaxcls.config import load_config, validate_config
    from jaxcls.errors import UserError

    with pytest.raises(UserError, match="optim.ema"):
        validate_config(load_config(ROOT / "configs/tiny.py", ["optim.ema=1.0"]))
