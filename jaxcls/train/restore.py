"""A run's training state: built fresh (training) or restored from a checkpoint (every reader).

``new_state`` is the one place a ``TrainState`` is assembled; ``load_run`` rebuilds a trained
run from its directory (``config.json``, ``labels.json``, ``checkpoints/``) for evaluation,
prediction and export.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import optax

from jaxcls.formats import run_dir
from jaxcls.train import checkpoints, run_model, steps, weight_average
from jaxcls.train.settings import OptimSettings

log = logging.getLogger("jaxcls")


def new_state(trainable: Any, optimizer: optax.GradientTransformation, seed: int) -> Any:
    """Step 0 of training: ``trainable`` with a fresh optimizer state and RNG."""
    return steps.TrainState(
        step=jnp.zeros((), jnp.int32),
        trainable=trainable,
        opt_state=optimizer.init(trainable),
        rng=jax.random.PRNGKey(seed),
        bad_steps=jnp.zeros((), jnp.int32),
    )


def load_run(
    workdir: Path, ckpt: str = "best", quantize: bool = True
) -> tuple[run_model.RunModel, int]:
    """The run's model with the trainable state of checkpoint ``ckpt``, and its step.

    ``quantize=False``: the base in full precision even if the run trained on int8.
    """
    cfg = run_dir.read_config(workdir)
    label_names = run_dir.load_labels(workdir / run_dir.LABELS)
    ckpts = checkpoints.open_checkpoints(workdir, cfg)
    step = ckpts.resolve(ckpt)  # before the slow model build: a wrong --ckpt fails at once
    run = run_model.build(
        cfg, workdir, label_names, write_base=False, warm_start=False, quantize=quantize
    )
    restore_trainable(run, workdir, ckpt, ckpts)
    log.info("loaded %s at step %d", workdir, step)
    return run, step


def restore_trainable(
    run: run_model.RunModel,
    workdir: Path,
    ckpt: str = "best",
    ckpts: checkpoints.Checkpoints | None = None,
) -> int:
    """Give ``run`` the trainable state of checkpoint ``ckpt`` of ``workdir``; its step.

    ``ckpts``: the run's checkpoints already open (closed here)."""
    ckpts = ckpts or checkpoints.open_checkpoints(workdir, run.cfg)
    step = ckpts.resolve(ckpt)
    optimizer = steps.make_optimizer(OptimSettings.from_config(run.cfg.optim), 1)
    template = jax.eval_shape(lambda t: new_state(t, optimizer, 0), run.trainable)
    state, _ = ckpts.restore(step, template)
    ckpts.close()
    run.trainable = weight_average.averaged(state.trainable, state.opt_state, run.cfg.optim.ema)
    return step
