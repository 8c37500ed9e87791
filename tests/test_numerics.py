"""Numerical faults and signals in the training loop, in process with the real Trainer.

A non-finite loss or gradient skips the update: the optimizer state, the parameters and the
RNG stay exactly as they were, only the step and the bad-step counters move, and the next good
step computes what it would have computed without the bad one. After ``train.max_bad_steps``
consecutive bad steps the run stops naming the step and the last good checkpoint. SIGINT
finishes the step, saves and stops. NaNs are injected through the frozen base (a poisoned
embedding makes the loss and every gradient NaN), so the code under test is unchanged.
"""

from __future__ import annotations

import json
import logging
import os
import signal

import helpers_e2e as e2e
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental.compilation_cache import compilation_cache as cc

from jaxcls.config import load_config
from jaxcls.data import batches
from jaxcls.errors import UserError
from jaxcls.train import sharding
from jaxcls.train.checkpoints import committed_steps
from jaxcls.train.trainer import Trainer


@pytest.fixture(scope="module")
def compilation_cache(tmp_path_factory):
    """The session's persistent compilation cache for this module's compiles: the reference
    run of test_bad_input/test_interrupt, when they ran first, compiled the same steps."""
    keys = {
        "jax_compilation_cache_dir": str(
            e2e.cache_env(tmp_path_factory)["JAX_COMPILATION_CACHE_DIR"]
        ),
        "jax_persistent_cache_min_compile_time_secs": 0.0,
        "jax_persistent_cache_min_entry_size_bytes": 0,
    }
    old = {key: getattr(jax.config, key) for key in keys}
    for key, value in keys.items():
        jax.config.update(key, value)
    cc.reset_cache()
    yield
    for key, value in old.items():
        jax.config.update(key, value)
    cc.reset_cache()


def reference_trainer(root, model_path, *overrides: str) -> Trainer:
    """A Trainer with the reference run's config (so the same executables) and ``overrides``."""
    data = e2e.write_dataset(root / "data", 8)
    keys = [f"data.train={data['train']}", f"data.val={data['val']}"]
    keys += [*e2e.REFERENCE_OVERRIDES, f"model.path={model_path}", *overrides]
    return Trainer(load_config(e2e.REPO / e2e.TINY, keys), root / "run")


@pytest.fixture(scope="module")
def trainer(tmp_path_factory, make_hf_model, compilation_cache) -> Trainer:
    """The reference run with max_bad_steps=2."""
    root = tmp_path_factory.mktemp("numerics")
    return reference_trainer(root, make_hf_model(), "train.max_bad_steps=2")


def copy(tree):
    """A device copy (the train step donates its state)."""
    return jax.tree_util.tree_map(lambda x: x.copy(), tree)


def poisoned(frozen):
    """All NaN, placed as ``frozen`` is (so the step is not compiled again)."""
    return jax.tree_util.tree_map(lambda x: x * jnp.nan, frozen)


def batch(trainer: Trainer, step: int):
    micro = batches.micro_batches(trainer.batches, step, 1, trainer.run.pad_id)
    return sharding.put_batch(micro, trainer.mesh, batch_axis=1)


def assert_same(a, b) -> None:
    paths_a, tree_a = jax.tree_util.tree_flatten_with_path(a)
    paths_b, tree_b = jax.tree_util.tree_flatten_with_path(b)
    assert tree_a == tree_b
    for (path, x), (_, y) in zip(paths_a, paths_b, strict=True):
        x, y = np.asarray(x), np.asarray(y)
        assert x.dtype == y.dtype and np.array_equal(x, y), jax.tree_util.keystr(path)


def test_a_nonfinite_step_changes_nothing_but_the_counters(trainer):
    before = copy(trainer.state)
    assert int(before.step) == 0
    bad, bad_metrics = trainer.train_step(copy(before), poisoned(trainer.frozen), batch(trainer, 0))
    assert int(bad_metrics["skipped"]) == 1 and not np.isfinite(bad_metrics["loss"])
    assert int(bad.step) == 1 and int(bad.bad_steps) == 1
    assert_same(bad.trainable, before.trainable)
    assert_same(bad.opt_state, before.opt_state)  # Adam's moments and count too
    assert_same(bad.rng, before.rng)

    # The next good step equals that step taken straight from the state before the bad one.
    step1 = copy(bad.step)
    after, metrics = trainer.train_step(bad, trainer.frozen, batch(trainer, 1))
    direct, direct_metrics = trainer.train_step(
        copy(before).replace(step=step1), trainer.frozen, batch(trainer, 1)
    )
    assert int(metrics["skipped"]) == 0 and int(after.bad_steps) == 0
    assert_same(after, direct)
    assert_same(metrics, direct_metrics)
    changed = jax.tree_util.tree_map(lambda x, y: bool(jnp.any(x != y)), after, before)
    assert any(jax.tree_util.tree_leaves(changed.trainable))
    assert trainer.train_step._cache_size() == 1  # the same executable for every call


def test_bad_steps_are_logged_and_stop_the_run_then_sigint_stops_it_cleanly(trainer, caplog):
    """Steps 2 and 3 are bad: both are logged as skipped (the mean loss of a logging window with
    a skipped step is null), and the run stops at step 3 naming checkpoint 2, which holds step
    1's parameters. Re-running from there, a SIGINT during step 4 lets it finish (with its
    validation), save checkpoint 4 and stop."""
    step_fn, ckpts = trainer.train_step, trainer.ckpts.directory

    def poison_steps_2_and_3(state, frozen, placed):
        return step_fn(state, poisoned(frozen) if int(state.step) in (1, 2) else frozen, placed)

    poison_steps_2_and_3.lower = step_fn.lower  # fit compiles its first step ahead
    trainer.train_step = poison_steps_2_and_3
    with pytest.raises(UserError) as stop:
        trainer.fit()
    message = str(stop.value)
    assert message.startswith("step 3: 2 consecutive steps with a non-finite loss or gradient")
    assert f"last good checkpoint: {ckpts / '2'};" in message
    events = [json.loads(x) for x in (trainer.workdir / "metrics.jsonl").read_text().splitlines()]
    assert [(e["step"], e["skipped"], e["loss"]) for e in events] == [(2, 1, None), (3, 1, None)]
    assert committed_steps(ckpts) == [2]  # save_every=1 keeps only the latest unscored one
    assert int(trainer.state.step) == 3 and int(trainer.state.bad_steps) == 2

    def interrupt_step_4(state, frozen, placed):
        if int(state.step) == 3:
            os.kill(os.getpid(), signal.SIGINT)
        return step_fn(state, frozen, placed)

    interrupt_step_4.lower = step_fn.lower
    trainer.train_step = interrupt_step_4
    with caplog.at_level(logging.WARNING, logger="jaxcls"):
        result = trainer.fit()
    assert result["status"] == "interrupted"
    assert committed_steps(ckpts) == [4]
    assert int(trainer.state.bad_steps) == 0
    assert f"stopped by SIGINT after step 4; checkpoint saved in {ckpts / '4'}" in caplog.text


def test_the_training_step_compiles_once(tmp_path, make_hf_model, compilation_cache, caplog):
    """The first step is compiled ahead, so that the compiler's memory is freed before the
    step's scratch is allocated; the jitted call then reuses that executable."""
    trainer = reference_trainer(tmp_path, make_hf_model(), "train.max_steps=3")
    with jax.log_compiles(True), caplog.at_level(logging.WARNING):
        trainer.fit()
    compiles = [r for r in caplog.records if r.getMessage().startswith("Compiling jit(train_step)")]
    assert int(trainer.state.step) == 3
    assert len(compiles) == 1, [r.getMessage()[:80] for r in compiles]
