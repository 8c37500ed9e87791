"""The training loop: validation, best/latest checkpoints, early stopping, exact resume."""

from __future__ import annotations

import dataclasses
import logging
import signal
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from sklearn.model_selection import train_test_split
from tqdm.auto import tqdm

from jaxcls import batching, data, evaluate, lora, rundir, schedules, session, sharding, steps
from jaxcls import config as config_lib
from jaxcls.checkpoint import Checkpoints, abstract
from jaxcls.errors import UserError

log = logging.getLogger("jaxcls")


def data_paths(cfg: Any) -> dict[str, str]:
    """``data.train/val/test``; with no training file, the embedded demo's three splits."""
    paths = {"train": cfg.data.train, "val": cfg.data.val, "test": cfg.data.test}
    if not paths["train"]:
        from jaxcls.demo import ensure_demo_data

        demo = ensure_demo_data()
        paths = {k: v or str(demo[k]) for k, v in paths.items()}
    return paths


def split_table(table: data.Table, n: int, seed: int) -> tuple[data.Table, data.Table]:
    """A seeded, stratified split into ``n`` rows and the rest."""
    index = np.arange(len(table.texts))
    _, counts = np.unique(table.labels, return_counts=True)
    stratify = table.labels if counts.min() >= 2 else None
    first, rest = train_test_split(index, train_size=n, stratify=stratify, random_state=seed)
    return _rows(table, np.sort(first)), _rows(table, np.sort(rest))


def _rows(table: data.Table, keep: np.ndarray) -> data.Table:
    return dataclasses.replace(
        table,
        texts=[table.texts[i] for i in keep],
        labels=[table.labels[i] for i in keep],
        rows=table.rows[keep],
    )


def read_train_val(cfg: Any, paths: dict[str, str]) -> tuple[data.Table, data.Table, list[str]]:
    """Training and validation tables and the label map (from the whole training file).

    Without a validation file, 10% of the training rows are held out for validation.
    """
    train = session.read_table(cfg, paths["train"])
    label_names = data.build_label_map(train)
    if paths["val"]:
        val = session.read_table(cfg, paths["val"])
    else:
        n_val = max(len(set(train.labels)), len(train.texts) // 10)
        train, val = split_table(train, len(train.texts) - n_val, cfg.seed)
        log.info("no data.val: holding out %d training rows for validation", len(val.texts))
    n = cfg.data.max_train_samples
    if 0 < n < len(train.texts):
        train, _ = split_table(train, n, cfg.seed)
    return train, val, label_names


def check_labels(workdir: Path, label_names: list[str]) -> None:
    """A run dir keeps its label map: resuming with other labels is an error."""
    path = workdir / rundir.LABELS
    if path.is_file() and data.load_labels(path) != label_names:
        raise UserError(
            f"{path} has labels {data.load_labels(path)} but the training file gives "
            f"{label_names}; train into a new workdir (--config.workdir=...)"
        )


def total_steps(cfg: Any, micro_per_epoch: int) -> int:
    if cfg.train.max_steps > 0:
        return int(cfg.train.max_steps)
    return int(cfg.train.epochs) * -(-micro_per_epoch // int(cfg.optim.accumulate))


class _StopFlag:
    """SIGINT/SIGTERM set a flag; the loop finishes its step, saves and exits cleanly."""

    def __init__(self):
        self.signum = None
        self._old = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._set)
            except ValueError:  # not the main thread: no handlers
                pass
        return self

    def _set(self, signum, frame):
        self.signum = signum

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


def micro_batches(batches: batching.TrainBatches, step: int, n: int, pad: int) -> dict:
    """Batch ``step`` as ``n`` micro-batches [n, B, ...] padded to one length bucket."""
    parts = [batches(step * n + i) for i in range(n)]
    width = max(p["input_ids"].shape[1] for p in parts)
    for p in parts:
        extra = width - p["input_ids"].shape[1]
        if extra:
            p["input_ids"] = np.pad(p["input_ids"], ((0, 0), (0, extra)), constant_values=pad)
            p["attention_mask"] = np.pad(p["attention_mask"], ((0, 0), (0, extra)))
    return {k: np.stack([p[k] for p in parts]) for k in parts[0]}


def train_and_evaluate(cfg: Any, workdir: str | Path | None = None) -> dict[str, Any]:
    """Train from a config; returns the best validation metrics and where they are."""
    config_lib.validate_config(cfg)
    workdir = Path(workdir or config_lib.resolve_workdir(cfg))
    main = jax.process_index() == 0

    # Mesh.
    mesh = sharding.make_mesh(cfg.devices, cfg.mesh.fsdp)
    sharding.check_batch_size(cfg.train.batch_size, mesh, "train.batch_size")
    sharding.check_batch_size(cfg.train.eval_batch_size, mesh, "train.eval_batch_size")

    # Input.
    paths = data_paths(cfg)
    train_table, val_table, label_names = read_train_val(cfg, paths)
    workdir.mkdir(parents=True, exist_ok=True)
    check_labels(workdir, label_names)

    # Model, trainable state, optimizer.
    run = session.build(cfg, workdir, label_names, write_base=main)
    if main:
        rundir.write_atomic(workdir / rundir.CONFIG, config_lib.config_to_json(cfg))
        data.save_labels(workdir / rundir.LABELS, label_names)
        rundir.mark_latest(workdir)
    train_set, val_set = run.dataset(train_table), run.dataset(val_table)
    counts = np.bincount(train_set.labels, minlength=len(label_names))
    alpha = config_lib.parse_focal_alpha(cfg.loss.focal_alpha, counts.tolist())
    batches = batching.TrainBatches(
        train_set, cfg.train.batch_size, cfg.seed, cfg.data.sampler, run.pad_id,
        cfg.data.max_length,
    )  # fmt: skip
    n_steps = total_steps(cfg, batches.steps_per_epoch)
    optimizer = steps.make_optimizer(cfg.optim, n_steps)
    log.info(lora.summary(run.trainable, run.frozen))
    log.info(
        "%d training / %d validation texts, %d classes, %d steps on %d device(s)",
        len(train_set), len(val_set), len(label_names), n_steps, mesh.devices.size,
    )  # fmt: skip
    state = steps.TrainState(
        step=jnp.zeros((), jnp.int32),
        trainable=run.trainable,
        opt_state=optimizer.init(run.trainable),
        rng=jax.random.PRNGKey(cfg.seed),
        bad_steps=jnp.zeros((), jnp.int32),
    )

    # Checkpoints and resume.
    ckpts = Checkpoints(
        workdir / "checkpoints", cfg.train.best_metric, cfg.train.best_mode, cfg.train.keep_best
    )
    metrics_log = rundir.MetricsLog(workdir / rundir.METRICS, enabled=main)
    meta = {"best_value": None, "best_step": None, "bad_evals": 0, "finished": False}
    latest = ckpts.latest_step() if cfg.train.resume else None
    if latest is not None:
        state, meta = ckpts.restore(latest, abstract(state))
        metrics_log.truncate_after(latest)
        log.info("resumed from %s", ckpts.directory / str(latest))
    elif main:
        metrics_log.truncate_after(-1)

    # Update step.
    replicated = sharding.replicated(mesh)
    frozen = sharding.put_replicated(run.frozen, mesh)
    state = sharding.put_replicated(state, mesh)
    train_step = steps.make_train_step(
        run.model, cfg, optimizer, n_steps,
        class_alpha=None if alpha is None else jnp.asarray(alpha, jnp.float32),
        data_shards=sharding.data_size(mesh),
    )  # fmt: skip
    train_step = jax.jit(train_step, donate_argnums=(0,), out_shardings=(replicated, replicated))
    eval_step = jax.jit(steps.make_eval_step(run.model, cfg), out_shardings=replicated)
    lr_at = schedules.learning_rate(cfg.optim, n_steps)

    def validate(step: int) -> dict[str, float]:
        outputs = evaluate.run_dataset(
            eval_step, state.trainable, frozen, val_set, cfg.train.eval_batch_size, run.pad_id,
            cfg.data.max_length, mesh,
        )  # fmt: skip
        result = evaluate.scalars(evaluate.score(outputs, val_set.labels, label_names))
        metrics_log.write(step, "val", result)
        return {f"val/{k}": v for k, v in result.items()}

    def save(step: int, scores: dict[str, float]) -> None:
        ckpts.save(step, state, {**meta, "step": step, "metrics": scores})

    # Loop.
    start = int(state.step)
    sums: dict[str, float] = {}
    seen, tokens, t0 = 0, 0, time.perf_counter()
    reason = "finished"
    bar = tqdm(total=n_steps, initial=start, unit="step", disable=not main, dynamic_ncols=True)
    with _StopFlag() as stop:
        for step in range(start, n_steps):
            if meta["finished"]:
                break
            batch = micro_batches(batches, step, int(cfg.optim.accumulate), run.pad_id)
            tokens += int(batch["attention_mask"].sum())
            state, m = train_step(state, frozen, sharding.put_batch(batch, mesh, batch_axis=1))
            m = jax.device_get(m)
            done = step + 1
            for k, v in m.items():
                sums[k] = sums.get(k, 0.0) + float(v)
            seen += 1
            bar.update(1)
            if int(state.bad_steps) >= cfg.train.max_bad_steps:
                good = ckpts.latest_step()
                raise UserError(
                    f"step {done}: {int(state.bad_steps)} consecutive steps with a non-finite "
                    f"loss or gradient (train.max_bad_steps); last good checkpoint: "
                    f"{'none' if good is None else ckpts.directory / str(good)}; lower optim.lr "
                    "or check the data"
                )
            if done % cfg.train.log_every == 0 or done == n_steps:
                elapsed = time.perf_counter() - t0
                record = {k: v / seen for k, v in sums.items() if k != "skipped"}
                record["skipped"] = int(sums.get("skipped", 0))
                record["lr"] = float(lr_at(step))
                record["tokens_per_s"] = tokens / max(elapsed, 1e-9)
                metrics_log.write(done, "train", record)
                bar.set_postfix(loss=f"{record['loss']:.4f}", tok_s=f"{record['tokens_per_s']:.0f}")
                sums, seen, tokens, t0 = {}, 0, 0, time.perf_counter()
            epoch_end = done % batches.steps_per_epoch == 0
            due = done % cfg.train.eval_every == 0 if cfg.train.eval_every else epoch_end
            if due or done == n_steps:
                scores = validate(done)
                value = scores.get(cfg.train.best_metric)
                if value is None:
                    raise UserError(
                        f"config key 'train.best_metric' is {cfg.train.best_metric!r}; logged "
                        f"validation metrics are {', '.join(sorted(scores))}"
                    )
                better = meta["best_value"] is None or (
                    value > meta["best_value"]
                    if cfg.train.best_mode == "max"
                    else value < meta["best_value"]
                )
                if better:
                    meta.update(best_value=value, best_step=done, bad_evals=0)
                else:
                    meta["bad_evals"] += 1
                tqdm.write(
                    f"step {done}: "
                    + ", ".join(f"{k}={v:.4f}" for k, v in scores.items())
                    + (" (best)" if better else "")
                )
                if cfg.train.patience and meta["bad_evals"] >= cfg.train.patience:
                    meta["finished"] = True
                    reason = (
                        f"early stop: no better {cfg.train.best_metric} in "
                        f"{cfg.train.patience} validations"
                    )
                if done == n_steps:
                    meta["finished"] = True
                save(done, scores)
            if stop.signum is not None and not meta["finished"]:
                save(done, {})
                reason = "interrupted"
                break
    bar.close()
    ckpts.close()
    if reason == "interrupted":
        log.warning(
            "stopped by signal %d after step %d; checkpoint saved in %s; re-run the same command "
            "to resume", stop.signum, int(state.step), workdir / "checkpoints",
        )  # fmt: skip
    elif reason != "finished":
        log.info(reason)
    return {
        "workdir": str(workdir),
        "status": reason,
        "best_step": meta.get("best_step"),
        "best_value": meta.get("best_value"),
        "best_metric": cfg.train.best_metric,
    }
