"""Training strategies do what their config keys say.

Progressive and scheduled contrastive weights, learned (Kendall) loss weighting, temperature
schedules and a learnable temperature are checked through the real jitted train step on one
tiny model; the feature layer and the projection head against Hugging Face's hidden states
and a NumPy MLP; best-metric tracking with undefined (None) values through the trainer's rule.
"""

from __future__ import annotations

import dataclasses
import math
import time
import types
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcls.config import VALIDATION_METRICS, load_config, validate_config
from jaxcls.errors import UserError
from jaxcls.model import lora
from jaxcls.model.classifier import HEADS, HeadConfig, Qwen3Classifier
from jaxcls.model.qwen3 import Qwen3Config
from jaxcls.train import losses, schedules, sharding, steps, trainer
from jaxcls.train.settings import ContrastiveSettings, OptimSettings, StepSettings

TINY = Path(__file__).resolve().parents[1] / "configs" / "tiny.py"
TOTAL = 40  # total_steps of the schedules (lr, temperature) in these tests
PROJ = 11  # projection_dim: prime, so a mixed-up axis cannot hide
# Prime-ish sizes, as in the model parity tests.
QWEN = Qwen3Config(
    vocab_size=97,
    hidden_size=48,
    intermediate_size=88,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=12,
)


def make_cfg(**contrastive):
    cfg = load_config(TINY)
    cfg.optim.warmup_steps = 0
    cfg.optim.weight_decay = 0.0  # so a parameter moves only when its gradient is non-zero
    cfg.lora.dropout = 0.0
    cfg.lora.targets = r".*(q_proj|v_proj)$"  # a smaller program to compile
    for key, value in contrastive.items():
        cfg.contrastive[key] = value
    return cfg


@pytest.fixture(scope="module")
def tiny():
    """Model with a projection head, its params split as in a pretrained run, and one batch."""
    model = Qwen3Classifier(QWEN, HeadConfig(num_labels=3, projection_dim=PROJ))
    rs = np.random.RandomState(0)
    ids = rs.randint(1, QWEN.vocab_size, (1, 12, 10)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[0, 3, 6:] = 0  # a padded row: pooling must pick its last real token
    labels = np.array([[0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2]], np.int32)
    batch = {
        "input_ids": jnp.asarray(ids),
        "attention_mask": jnp.asarray(mask),
        "labels": jnp.asarray(labels),
        "valid": jnp.ones((1, 12), jnp.float32),
    }
    params = jax.jit(model.init)(
        jax.random.PRNGKey(0), batch["input_ids"][0], batch["attention_mask"][0]
    )
    heads, frozen = lora.partition(params["params"], HEADS)
    return types.SimpleNamespace(model=model, heads=heads, frozen=frozen, batch=batch)


def init_state(tiny, cfg, step: int = 0) -> steps.TrainState:
    opt = steps.make_optimizer(OptimSettings.from_config(cfg.optim), TOTAL)
    adapters = lora.init(tiny.frozen, lora.LoRAConfig.from_config(cfg.lora), jax.random.PRNGKey(1))
    extra = steps.init_extra(ContrastiveSettings.from_config(cfg.contrastive))
    trainable = {"adapters": adapters, "params": tiny.heads, "extra": extra}
    return steps.TrainState(
        step=jnp.int32(step),
        trainable=trainable,
        opt_state=opt.init(trainable),
        rng=jax.random.PRNGKey(2),
        bad_steps=jnp.int32(0),
    )


_STEPS: dict[str, object] = {}  # jitted train steps by config: XLA compiles dominate


def train(tiny, cfg, n: int, step: int = 0) -> tuple[list[steps.TrainState], list[dict]]:
    """States before each of ``n`` steps (and after the last), and each step's metrics."""
    key = cfg.to_json()
    if key not in _STEPS:
        opt = steps.make_optimizer(OptimSettings.from_config(cfg.optim), TOTAL)
        settings = StepSettings.from_config(cfg, TOTAL)
        one_device = sharding.make_mesh("0")
        _STEPS[key] = jax.jit(steps.make_train_step(tiny.model, settings, opt, one_device))
    fn = _STEPS[key]
    states, metrics = [init_state(tiny, cfg, step)], []
    for _ in range(n):
        state, m = fn(states[-1], tiny.frozen, tiny.batch)
        states.append(state)
        metrics.append(jax.device_get(m))
    return states, metrics


def close_trees(a, b) -> bool:
    leaves = zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True)
    return all(np.allclose(x, y, rtol=1e-6, atol=1e-8) for x, y in leaves)


# Closed forms, written out independently of jaxcls.train.schedules.


def weight_closed_form(schedule: str, step: int, weight: float, warmup: int, ramp: int) -> float:
    if step < warmup:
        return 0.0
    p = min((step - warmup) / ramp, 1.0) if ramp else 1.0
    return {
        "constant": weight,
        "linear": weight * p,
        "cosine": weight * (1 - math.cos(math.pi * p)) / 2,
        "uncertainty": 1.0,
    }[schedule]


def cosine_temperature(step: int, t0: float, t1: float, total: int) -> float:
    return t1 + (t0 - t1) * (1 + math.cos(math.pi * min(step / total, 1.0))) / 2


@pytest.mark.parametrize("schedule", ["constant", "linear", "cosine", "uncertainty"])
def test_weight_schedule_matches_the_closed_form(schedule):
    cfg = make_cfg(schedule=schedule, weight=0.7, warmup_steps=5, ramp_steps=8)
    con = ContrastiveSettings.from_config(cfg.contrastive)
    got = [float(schedules.contrastive_weight(con, s)) for s in range(20)]
    want = [weight_closed_form(schedule, s, 0.7, 5, 8) for s in range(20)]
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    assert got[:5] == [0.0] * 5 and got[-1] > 0  # warmup is exactly zero, then it is on
    con = dataclasses.replace(con, loss="none")
    assert float(schedules.contrastive_weight(con, 15)) == 0.0


def test_temperature_schedules():
    cfg = make_cfg(temperature=0.2, temperature_end=0.05, temperature_schedule="cosine")
    con = ContrastiveSettings.from_config(cfg.contrastive)
    got = [float(schedules.temperature(con, s, 30, None)) for s in (0, 10, 15, 30, 45)]
    want = [cosine_temperature(s, 0.2, 0.05, 30) for s in (0, 10, 15, 30, 45)]
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert got[0] == pytest.approx(0.2) and got[3] == pytest.approx(0.05)
    con = dataclasses.replace(con, temperature_schedule="constant")
    assert float(schedules.temperature(con, 17, 30, None)) == pytest.approx(0.2)
    con = dataclasses.replace(
        con, temperature_schedule="learnable", temperature_min=0.05, temperature_max=0.5
    )
    for log_t, want_t in ((math.log(0.3), 0.3), (math.log(0.01), 0.05), (math.log(2.0), 0.5)):
        learned = jnp.float32(log_t)
        assert float(schedules.temperature(con, 0, 30, learned)) == pytest.approx(want_t)
        # The clip passes the gradient through: a bound never freezes the parameter.
        grad = jax.grad(lambda x: schedules.temperature(con, 0, 30, x))(learned)
        assert float(grad) == pytest.approx(math.exp(log_t), rel=1e-5)


def test_progressive_training_through_the_train_step(tiny):
    """Warmup: cls loss alone (equal to a cls-only step); then the linear ramp, as logged."""
    kw = dict(loss="simple", schedule="linear", weight=0.6, warmup_steps=3, ramp_steps=4)
    kw.update(temperature=0.2, temperature_end=0.05, temperature_schedule="cosine")
    cfg = make_cfg(**kw)
    states, metrics = train(tiny, cfg, 9)
    for s, m in enumerate(metrics):
        assert m["con_weight"] == pytest.approx(weight_closed_form("linear", s, 0.6, 3, 4))
        assert m["temperature"] == pytest.approx(cosine_temperature(s, 0.2, 0.05, TOTAL), rel=1e-6)
        assert m["con_loss"] > 0  # computed (and logged) in warmup too
    # The projection head only feeds the contrastive loss: frozen while its weight is 0
    # (steps 0..3), trained once the ramp starts.
    proj = [st.trainable["params"]["projection"] for st in states]
    assert all(close_trees(proj[0], p) for p in proj[1:5])
    assert not close_trees(proj[4], proj[5])

    cls_only = make_cfg(**{**kw, "loss": "none"})
    (_, after_cls), m_cls = train(tiny, cls_only, 1)
    assert m_cls[0]["con_loss"] == 0.0 and metrics[0]["cls_loss"] == pytest.approx(
        m_cls[0]["cls_loss"]
    )
    # A warmup step is exactly a classification-only step ...
    assert close_trees(states[1].trainable, after_cls.trainable)
    # ... and a step with the contrastive loss on is not (the comparison can fail).
    (_, on), _ = train(tiny, cfg, 1, step=6)
    (_, off), _ = train(tiny, cls_only, 1, step=6)
    assert not close_trees(on.trainable["adapters"], off.trainable["adapters"])


def test_uncertainty_weighting_and_learnable_temperature(tiny):
    lo, hi = 0.085, 0.12
    cfg = make_cfg(
        loss="simple",
        schedule="uncertainty",
        temperature=0.1,
        temperature_schedule="learnable",
        temperature_min=lo,
        temperature_max=hi,
    )
    cfg.optim.lr = 0.05  # Adam moves log-temperature by about lr per step
    states, metrics = train(tiny, cfg, 12)
    # Kendall weighting: both log-variances train, and the logged effective weight of the
    # contrastive loss relative to classification is exp(s_cls - s_con) of the step's values.
    log_vars = np.stack([np.asarray(st.trainable["extra"]["log_vars"]) for st in states])
    assert np.all(np.abs(log_vars[-1]) > 0.05)
    want = np.exp(log_vars[:-1, 0] - log_vars[:-1, 1])
    np.testing.assert_allclose([m["con_weight"] for m in metrics], want, rtol=1e-5)
    assert np.ptp(want) > 0.05

    log_t = np.array([float(st.trainable["extra"]["log_temperature"]) for st in states])
    temps = np.array([m["temperature"] for m in metrics])
    np.testing.assert_allclose(temps, np.exp(log_t[:-1]), rtol=1e-6)
    assert np.ptp(temps) > 0.01  # it learns
    # The parameter itself stays in range (projected), and it reached a bound in 12 steps.
    assert np.all((log_t >= math.log(lo) - 1e-6) & (log_t <= math.log(hi) + 1e-6))
    assert np.isclose(temps, lo, rtol=1e-5).any() or np.isclose(temps, hi, rtol=1e-5).any()
    # The projection head gets gradients.
    proj = [st.trainable["params"]["projection"] for st in (states[0], states[-1])]
    assert not close_trees(*proj)


def test_feature_layer_is_the_pooled_hf_hidden_state(make_hf_model, padded_batch, torch_forward):
    from jaxcls.formats.hf_dir import load_hf

    hf_dir = make_hf_model()
    ids, mask = padded_batch
    _, hidden = torch_forward(hf_dir, ids, mask)  # HF hidden_states, embeddings first
    config, params, _ = load_hf(hf_dir, "float32")
    last = mask.sum(axis=1) - 1
    labels = jnp.array([0, 0, 1, 1])
    outputs = {}
    for k in (0, 1, -1, -2):  # embeddings, a layer, final (normed), HF-style negative
        model = Qwen3Classifier(config, HeadConfig(num_labels=3, feature_layer=k))
        logits, features = jax.jit(model.apply)({"params": params}, ids, mask)
        want = hidden[k][np.arange(len(ids)), last]
        np.testing.assert_allclose(features, want, atol=1e-5, rtol=1e-5)
        outputs[k] = logits, losses.simple_contrastive(features, labels)
    logits_final, loss_final = outputs[-1]
    for k, (logits, loss) in outputs.items():
        # The feature layer changes what the contrastive loss sees, never the logits.
        np.testing.assert_array_equal(logits, logits_final)
        if k != -1:
            assert abs(float(loss) - float(loss_final)) > 1e-3


def test_projection_head_is_an_mlp_on_the_pooled_features(tiny):
    ids, mask = tiny.batch["input_ids"][0], tiny.batch["attention_mask"][0]
    params = lora.combine(tiny.frozen, tiny.heads)
    _, features = jax.jit(tiny.model.apply)({"params": params}, ids, mask)
    assert features.shape == (12, PROJ)
    plain = Qwen3Classifier(QWEN, HeadConfig(num_labels=3))
    _, pooled = jax.jit(plain.apply)({"params": params}, ids, mask)
    p = jax.tree_util.tree_map(np.asarray, params["projection"])
    h = np.asarray(pooled) @ p["hidden"]["kernel"] + p["hidden"]["bias"]
    h = 0.5 * h * (1 + np.tanh(np.sqrt(2 / np.pi) * (h + 0.044715 * h**3)))  # tanh GELU
    want = h @ p["out"]["kernel"] + p["out"]["bias"]
    np.testing.assert_allclose(features, want, atol=1e-5, rtol=1e-5)


def tracker(best_metric: str, best_mode: str, patience: int):
    """The trainer's best/patience rule on a stand-in object (no model, no data)."""
    cfg = load_config(TINY)
    cfg.train.update(best_metric=best_metric, best_mode=best_mode, patience=patience)
    fake = types.SimpleNamespace(
        cfg=cfg, meta={"best_value": None, "best_step": None, "bad_evals": 0}
    )
    return lambda step, scores: trainer.Trainer._track_best(fake, step, scores), fake.meta


@pytest.mark.parametrize(
    ("metric", "mode", "values", "best_step", "bad"),
    [
        ("val/silhouette", "max", [None, 0.1, None, 0.3, 0.2], 4, 1),
        ("val/sim_gap", "max", [0.2, 0.1, 0.05, float("nan")], 1, 3),
        ("val/loss", "min", [0.9, 0.7, 0.8, 0.6], 4, 0),
        ("val/silhouette", "max", [None, None], None, 2),
    ],
)
def test_best_metric_with_undefined_values(metric, mode, values, best_step, bad):
    assert metric.removeprefix("val/") in VALIDATION_METRICS  # a logged validation scalar
    track, meta = tracker(metric, mode, patience=2)
    flags = []
    for step, value in enumerate(values, start=1):
        scores = {"val/accuracy": 0.5} if value is None else {"val/accuracy": 0.5, metric: value}
        flags.append(track(step, scores))
    assert meta["best_step"] == best_step and meta["bad_evals"] == bad
    assert flags == [is_new_best(values, mode, step) for step in range(1, len(values) + 1)]


def is_new_best(values, mode, step) -> bool:
    """Was ``values[step-1]`` a new best (None and NaN never are)?"""
    seen = [v for v in values[: step - 1] if v is not None and v == v]
    v = values[step - 1]
    if v is None or v != v:
        return False
    return not seen or (v > max(seen) if mode == "max" else v < min(seen))


def test_unknown_best_metric_is_a_user_error():
    cfg = load_config("configs/tiny.py", ["train.best_metric=val/silhoutte"])
    with pytest.raises(UserError, match="train.best_metric.*val/silhouette"):
        validate_config(cfg)


def test_train_record_logs_the_last_scheduled_values_and_window_means():
    fake = types.SimpleNamespace(lr_at=lambda step: 0.5 * step)
    sums = {"loss": 3.0, "con_weight": 0.3, "temperature": 0.3, "skipped": 1}
    last = {"loss": 1.0, "con_weight": 0.2, "temperature": 0.1, "skipped": 0}
    record = trainer.Trainer._train_record(fake, sums, 2, 7, 100, time.perf_counter() - 1, last)
    assert record["loss"] == 1.5  # a window mean
    assert record["con_weight"] == 0.2 and record["temperature"] == 0.1  # the current values
    assert record["lr"] == 3.5 and record["skipped"] == 1 and 0 < record["tokens_per_s"] <= 100
