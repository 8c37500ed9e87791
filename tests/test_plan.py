"""The run plan: "auto" epochs, learning rate, validation cadence and warm-up from the data."""

from __future__ import annotations

import pytest

from jaxcls.config import load_config
from jaxcls.train import plan
from jaxcls.train.trainer import total_steps


def resolved(overrides=(), n_train=1000):
    cfg = load_config("configs/margin.py", list(overrides))
    return plan.resolve(cfg, n_train)


@pytest.mark.parametrize(
    "n_train, epochs", [(13890, 1), (8000, 2), (1700, 8), (100, 20), (10**6, 1)]
)
def test_random_init_epochs_give_small_sets_enough_updates(n_train, epochs):
    cfg, notes = resolved(n_train=n_train)
    per_epoch = -(-n_train // 32)
    assert cfg.train.epochs == epochs
    assert epochs == min(max(-(-400 // per_epoch), 1), 20)  # about 400 updates, 1-20 epochs
    assert cfg.optim.lr == 1e-3 and any("random-init" in n for n in notes)
    total = total_steps(cfg, per_epoch)
    assert cfg.optim.warmup_steps == round(0.05 * total)
    assert cfg.train.eval_every == -(-per_epoch // 4)


def test_a_pretrained_model_gets_the_lora_recipe():
    cfg, notes = resolved(["model.path=models/some-qwen3"], n_train=8000)
    assert cfg.optim.lr == 2e-4 and cfg.train.epochs == 3  # 250 updates an epoch, ~600 wanted
    assert any("LoRA" in n for n in notes)
    assert plan.recipe_of(cfg) is plan.LORA


def test_given_values_are_kept_and_nothing_is_reported():
    overrides = ["optim.lr=5e-4", "train.epochs=2", "train.eval_every=7", "optim.warmup_steps=3"]
    cfg, notes = resolved(overrides)
    assert (cfg.optim.lr, cfg.train.epochs, cfg.train.eval_every) == (5e-4, 2, 7)
    assert cfg.optim.warmup_steps == 3 and notes == []


def test_max_steps_wins_over_epochs_and_sizes_the_warmup():
    cfg, _ = resolved(["train.max_steps=40", "optim.warmup_ratio=0.1"])
    assert cfg.train.epochs == 0 and cfg.optim.warmup_steps == 4


def test_resolving_twice_is_stable_and_the_result_is_locked():
    cfg, _ = resolved(n_train=5000)
    again, notes = plan.resolve(cfg, 5000)
    assert again.to_dict() == cfg.to_dict() and notes == []
    with pytest.raises(AttributeError):
        cfg.train.new_key = 1


def test_a_run_shorter_than_its_warmup_is_warned_about():
    cfg, _ = resolved(["optim.warmup_steps=50", "train.max_steps=20"])
    assert "never decays" in plan.warmup_warning(cfg, 20)
    assert plan.warmup_warning(cfg, 200) is None
