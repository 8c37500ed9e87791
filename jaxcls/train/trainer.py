"""The training loop: validation, best/latest checkpoints, early stopping, exact resume.

``Trainer`` reads top to bottom in sections: mesh, input, model and optimizer,
checkpoints and resume, update step, evaluation, loop.
"""

from __future__ import annotations

import contextlib
import logging
import math
import signal
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np
from tqdm.auto import tqdm

from jaxcls import config as config_lib
from jaxcls import runtime
from jaxcls.data import batches, splits, tokenizer
from jaxcls.errors import UserError
from jaxcls.eval import scoring
from jaxcls.interrupts import StopFlag
from jaxcls.model import lora
from jaxcls.train import (
    checkpoints,
    loggers,
    losses,
    plan,
    restore,
    run_files,
    run_model,
    schedules,
    sharding,
    steps,
    weight_average,
)
from jaxcls.train.checkpoints import abstract
from jaxcls.train.settings import OptimSettings, StepSettings

log = logging.getLogger("jaxcls")


# Step metrics logged as of the last step of each logging window instead of its mean.
SCHEDULED = ("con_weight", "temperature")


def total_steps(cfg: Any, micro_per_epoch: int) -> int:
    """Optimizer updates in the run: ``train.max_steps``, else epochs of micro-batches."""
    if cfg.train.max_steps > 0:
        return int(cfg.train.max_steps)
    return int(cfg.train.epochs) * -(-micro_per_epoch // int(cfg.optim.accumulate))


def leave_out_of_bar(bar: tqdm, seconds: float) -> None:
    """Leave ``seconds`` (a validation, a save) out of the bar's elapsed time, rate and ETA.

    tqdm's own ``unpause`` leaves out all the time since the bar last printed, which also drops
    the steps it did not print (it prints at most every 0.1 s): with fast steps its rate was
    too high by up to 60 times.
    """
    if bar.disable:  # processes other than 0: a disabled bar keeps no clock
        return
    bar.start_t += seconds
    bar.last_print_t += seconds


def count_texts(dataset: batches.Dataset) -> str:
    """The number of texts, and of their windows when long texts were split ("1700 (15418
    windows)")."""
    if dataset.row_index is None or len(dataset) == dataset.n_rows:
        return str(len(dataset))
    return f"{dataset.n_rows} ({len(dataset)} windows)"


class Trainer:
    """One training run of ``cfg`` in ``workdir`` (resumed when it has checkpoints)."""

    def __init__(
        self,
        cfg: Any,
        workdir: str | Path | None = None,
        inputs: splits.Inputs | None = None,
    ):
        """``inputs``: ``splits.read_inputs`` of ``cfg`` when the caller has read them already."""
        config_lib.validate_config(cfg)
        self.cfg = cfg
        self.workdir = Path(workdir or config_lib.resolve_workdir(cfg))
        self.main = jax.process_index() == 0

        # Mesh.
        self.mesh = sharding.make_mesh(cfg.devices, cfg.mesh.fsdp)
        sharding.check_batch_size(cfg.train.batch_size, self.mesh, "train.batch_size")
        sharding.check_batch_size(cfg.train.eval_batch_size, self.mesh, "train.eval_batch_size")

        # Input, checked against the run dir before any slow work.
        inputs = inputs or splits.read_inputs(cfg.data, cfg.seed)
        train_table, val_table, self.label_names = inputs.train, inputs.val, inputs.label_names
        self.workdir.mkdir(parents=True, exist_ok=True)
        run_files.check_run_dir(cfg, self.workdir, self.label_names)
        # The loggers of train.loggers (a missing wandb fails here); nothing is written yet, and
        # wandb reads the run's config (filled in below, once resolved) at the first write.
        run_config: dict = {}
        self.metrics_log = loggers.Loggers(
            self.workdir, cfg.train.loggers, run_config, enabled=self.main
        )

        # Model and optimizer.
        self.run = run_model.build(
            cfg, self.workdir, self.label_names, write_base=self.main, train_texts=train_table.texts
        )
        # The "auto" keys, resolved from the training texts' token counts (data.long_text), then
        # from the number of training sequences (rows, or their windows); the run and its
        # config.json use these, and the run model (which reads every split and restores the
        # best checkpoint) has them too.
        choices = []
        if cfg.data.long_text == "auto":
            lengths = [len(x) for x in tokenizer.tokenize(
                train_table.texts, self.run.tokenizer, 2**62, cfg.data.template
            )]  # fmt: skip
            cfg, choices = plan.resolve_long_text(cfg, lengths)
            self.run.cfg = cfg
        self.train_set, self.val_set = self.run.dataset(train_table), self.run.dataset(val_table)
        cfg, more = plan.resolve(cfg, len(self.train_set))
        self.cfg = self.run.cfg = cfg
        choices += more
        run_config.update(cfg.to_dict())
        log.info("recipe: %s", plan.recipe_of(cfg).name)
        for choice in choices:
            log.info("auto: %s", choice)
        self.batches = batches.TrainBatches(
            self.train_set, cfg.train.batch_size, cfg.seed, cfg.data.sampler, self.run.pad_id,
            cfg.data.max_length, cfg.data.min_bucket_batches, cfg.data.token_dropout,
        )  # fmt: skip
        self.n_steps = total_steps(cfg, self.batches.steps_per_epoch)
        if warning := plan.warmup_warning(cfg, self.n_steps):
            log.warning(warning)
        optim = OptimSettings.from_config(cfg.optim)
        self.optimizer = steps.make_optimizer(optim, self.n_steps)
        if self.run.train_base:
            log.info("random-init base: the base weights train too (model.train_base)")
        if optim.ema:
            log.info("validation, the best checkpoint, evaluation and export use the weights' "
                     "moving average (optim.ema=%g)", optim.ema)  # fmt: skip
        log.info(lora.summary(self.run.trainable, self.run.frozen))
        log.info(
            "%s training / %s validation texts, %d classes, %d steps on %d device(s)",
            count_texts(self.train_set), count_texts(self.val_set), len(self.label_names),
            self.n_steps, self.mesh.devices.size,
        )  # fmt: skip

        # Sharding: the frozen base and the state are placed by sharding.FSDP_RULES (replicated
        # unless mesh.fsdp > 1) and the state is initialised in place, so no device ever holds
        # more than its share of either; the base's host copy is released as it moves.
        self.frozen = self.run.place_base(self.mesh)
        trainable = sharding.put_params(self.run.trainable, self.mesh)
        state, self.state_shardings = sharding.init_sharded(
            lambda t: restore.new_state(t, self.optimizer, cfg.seed), trainable, mesh=self.mesh
        )

        # Checkpoints and resume (restored straight into the state's shardings). Every process
        # opens them as the writer: Orbax synchronises them all.
        self.ckpts = checkpoints.open_checkpoints(self.workdir, cfg, writer=True)
        self.meta = {"best_value": None, "best_step": None, "bad_evals": 0, "finished": False}
        latest = self.ckpts.latest_step()
        if latest is not None:
            state, self.meta = self.ckpts.restore(latest, abstract(state))
            log.info("resumed from %s", self.ckpts.directory / str(latest))
        # The run dir's files are written only now that the run is known to fit it, so a
        # failing command never overwrites a good run's config, labels or metrics.
        self.metrics_log.truncate_after(-1 if latest is None else latest)
        if self.main:
            run_files.write_run_files(cfg, self.workdir, inputs)

        # Update step.
        replicated = sharding.replicated(self.mesh)
        self.state = state
        settings = StepSettings.from_config(cfg, self.n_steps, self._class_alpha())
        self.train_step = jax.jit(
            steps.make_train_step(self.run.model, settings, self.optimizer, self.mesh),
            donate_argnums=(0,),
            out_shardings=(self.state_shardings, replicated),
        )
        self.eval_step = self.run.eval_step(self.mesh)
        self.lr_at = schedules.learning_rate(optim, self.n_steps)

    def _class_alpha(self) -> tuple[float, ...] | None:
        """``loss.focal_alpha`` as class weights: none, "balanced" (``losses.balanced_alpha``
        of the training label counts) or the listed floats."""
        labels = self.train_set.labels
        if labels.ndim == 2:  # multi-label indicators: rows per label
            counts = labels.sum(axis=0)
        else:
            counts = np.bincount(labels, minlength=len(self.label_names))
        if self.cfg.loss.focal_alpha.strip() == "balanced":
            return tuple(float(w) for w in losses.balanced_alpha(counts))
        alpha = config_lib.parse_focal_alpha(self.cfg.loss.focal_alpha, counts.tolist())
        return None if alpha is None else tuple(alpha)

    # Evaluation.

    def evaluate(self, dataset: batches.Dataset) -> tuple[dict, dict]:
        """``scoring.evaluate`` of the current state on a labelled dataset."""
        cfg, frozen, mesh = self.cfg, self.frozen, self.mesh
        trainable = weight_average.averaged(
            self.state.trainable, self.state.opt_state, cfg.optim.ema
        )
        return scoring.evaluate(
            lambda batch: self.eval_step(trainable, frozen, sharding.put_batch(batch, mesh)),
            dataset, cfg.train.eval_batch_size, self.run.pad_id, cfg.data.max_length,
            self.label_names,
        )  # fmt: skip

    def validate(self, step: int) -> dict[str, float]:
        """Validation metrics (``val/...``), logged to metrics.jsonl."""
        result = scoring.scalars(self.evaluate(self.val_set)[0])
        self.metrics_log.write(step, "val", result)
        return {f"val/{k}": v for k, v in result.items()}

    def _track_best(self, step: int, scores: dict[str, float]) -> bool:
        """Update best-so-far and the patience counter; True when ``step`` is the new best.

        A metric undefined at this validation (absent, e.g. the silhouette of a one-class
        split, or not finite) is no improvement: it counts towards ``train.patience``.
        """
        train = self.cfg.train
        value = scores.get(train.best_metric)
        best = self.meta["best_value"]
        if value is None or not math.isfinite(value):
            better = False
        else:
            better = best is None or (value > best if train.best_mode == "max" else value < best)
        if better:
            self.meta.update(best_value=value, best_step=step, bad_evals=0)
        else:
            self.meta["bad_evals"] += 1
        return better

    def save(self, step: int, scores: dict[str, float]) -> None:
        # The open logging window goes with the checkpoint, so that a run resumed between two
        # logged steps writes the same means as an uninterrupted one.
        meta = {**self.meta, "step": step, "metrics": scores, "window": self.window}
        self.ckpts.save(step, self.state, meta)

    def _save_due(self, done: int) -> bool:
        every = self.cfg.train.save_every
        return bool(every) and done % every == 0

    def _eval_due(self, done: int) -> bool:
        every = self.cfg.train.eval_every
        if done == self.n_steps:
            return True
        return done % every == 0 if every else done % self.batches.steps_per_epoch == 0

    def _check_bad_steps(self, done: int, bad: int) -> None:
        if bad >= self.cfg.train.max_bad_steps:
            good = self.ckpts.latest_step()
            where = "none" if good is None else self.ckpts.directory / str(good)
            raise UserError(
                f"step {done}: {bad} consecutive steps with a non-finite loss or gradient "
                f"(train.max_bad_steps); last good checkpoint: {where}; lower optim.lr or "
                "check the data, then re-run to resume"
            )

    # Loop.

    def fit(self) -> dict[str, Any]:
        """Train to the end (or early stop / signal); returns the best validation result."""
        cfg, start = self.cfg, int(self.state.step)
        self.window = self.meta.pop("window", None) or {"sums": {}, "seen": 0}
        tokens, t0 = 0, None
        status = "finished"
        # The bar starts after the first step, which compiles, so that its rate and ETA count
        # steps only (validations and saves are left out too: ``leave_out_of_bar``). Closing it
        # on any exit ends its line, so an error message starts a line of its own.
        bar, stop = None, StopFlag()
        if self.main and start < self.n_steps:
            log.info("compiling the training step (step %d)...", start + 1)
        with stop, contextlib.ExitStack() as closing:
            for step in range(start, self.n_steps):
                if self.meta["finished"]:
                    break
                batch = batches.micro_batches(
                    self.batches, step, int(cfg.optim.accumulate), self.run.pad_id
                )
                placed = sharding.put_batch(batch, self.mesh, batch_axis=1)
                if bar is None:  # compile first, then free the compiler's memory (0.5 GB at
                    # 1.7B) before the step's scratch is allocated; the call below reuses it
                    self.train_step.lower(self.state, self.frozen, placed).compile()
                    runtime.release_freed_memory()
                self.state, metrics = self.train_step(self.state, self.frozen, placed)
                metrics = jax.device_get(metrics)
                done = step + 1
                if bar is None:
                    stop.ready()  # from now on a signal stops the loop after its step
                    bar = tqdm(total=self.n_steps, initial=done, unit="step", disable=not self.main)
                    closing.enter_context(contextlib.closing(bar))
                else:
                    bar.update(1)
                if t0 is None:  # the first step compiles: time from its end
                    t0 = time.perf_counter()
                else:
                    tokens += int(batch["attention_mask"].sum())
                sums, seen = self.window["sums"], self.window["seen"] + 1
                for k, v in metrics.items():
                    sums[k] = sums.get(k, 0.0) + float(v)
                self.window["seen"] = seen
                bad = int(self.state.bad_steps)
                if bad or done % cfg.train.log_every == 0 or done == self.n_steps:
                    record = self._train_record(sums, seen, step, tokens, t0, metrics)
                    self.metrics_log.write(done, "train", record)
                    bar.set_postfix(
                        loss=f"{record['loss']:.4f}", tok_s=f"{record['tokens_per_s']:.0f}"
                    )
                    self.window, tokens, t0 = {"sums": {}, "seen": 0}, 0, time.perf_counter()
                self._check_bad_steps(done, bad)
                paused = time.perf_counter()
                if self._eval_due(done):
                    status = self._evaluate_and_save(done)
                elif stop.signum is not None or self._save_due(done):
                    self.save(done, {})
                pause = time.perf_counter() - paused
                t0 += pause  # tokens/s, and the bar's rate and ETA: validating and saving excluded
                leave_out_of_bar(bar, pause)
                if stop.signum is not None and not self.meta["finished"]:
                    status = "interrupted"
                    break
        self.ckpts.close()
        self.metrics_log.close()
        self._report(status, stop.signum)
        return {
            "workdir": str(self.workdir),
            "status": status,
            "best_step": self.meta.get("best_step"),
            "best_value": self.meta.get("best_value"),
            "best_metric": cfg.train.best_metric,
        }

    def _train_record(
        self, sums: dict, seen: int, step: int, tokens: int, t0: float, last: dict
    ) -> dict:
        """Means of the step metrics since the last log, the learning rate and throughput.

        Scheduled values (contrastive weight, temperature) are those of the last step, as
        the learning rate is, so the curves show the schedule itself rather than its mean.
        """
        record = {k: v / seen for k, v in sums.items() if k != "skipped"}
        record.update({k: float(last[k]) for k in SCHEDULED if k in last})
        record["skipped"] = int(sums.get("skipped", 0))
        record["lr"] = float(self.lr_at(step))
        record["tokens_per_s"] = tokens / max(time.perf_counter() - t0, 1e-9)
        return record

    def _evaluate_and_save(self, done: int) -> str:
        scores = self.validate(done)
        better = self._track_best(done, scores)
        if self.main:
            tqdm.write(
                f"step {done}: "
                + ", ".join(f"{k}={v:.4f}" for k, v in scores.items())
                + (" (best)" if better else "")
            )
        status = "finished"
        patience = self.cfg.train.patience
        if patience and self.meta["bad_evals"] >= patience:
            self.meta["finished"] = True
            status = "early_stopped"
        if done == self.n_steps:
            self.meta["finished"] = True
        self.save(done, scores)
        return status

    def _report(self, status: str, signum: int | None) -> None:
        if status == "interrupted":
            log.warning(
                "stopped by %s after step %d; checkpoint saved in %s; re-run the same "
                "command to resume", signal.Signals(signum).name, int(self.state.step),
                self.ckpts.directory / str(int(self.state.step)),
            )  # fmt: skip
        elif status == "early_stopped":
            log.info(
                "early stop: no better %s in %d validations; best %s at step %s",
                self.cfg.train.best_metric, self.cfg.train.patience, self.meta["best_value"],
                self.meta["best_step"],
            )  # fmt: skip


def train_and_evaluate(
    cfg: Any,
    workdir: str | Path | None = None,
    inputs: splits.Inputs | None = None,
) -> dict[str, Any]:
    """Train from a config; returns the best validation metric and where the run is."""
    return Trainer(cfg, workdir, inputs).fit()
