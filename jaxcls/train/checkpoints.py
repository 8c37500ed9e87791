"""Training checkpoints: Orbax, best k by a validation metric plus the latest.

A checkpoint ``checkpoints/<step>/`` holds the trainable state only (adapters, heads,
optimizer state, step, RNG) and a JSON ``meta`` item (validation metrics, best-so-far,
patience counter); the frozen base is referenced by the run's config. Orbax writes each
step into a temporary dir and renames it when complete, so a kill during a save never
leaves a checkpoint that resume would pick up; a pruned step is renamed into ``trash/``
before it is deleted, so a kill during pruning never leaves a half-deleted step either.
Leftovers of both are removed when the next run opens the directory.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import math
import os
import re
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from jaxcls.errors import UserError

PyTree = Any
CHECKPOINTS = "checkpoints"
TRASH = "trash"
# Config keys that fix the trainable state's structure or the function it parametrises: a run
# resumes only with the values it was started with.
MODEL_KEYS = (
    "model.path model.param_dtype model.pooling model.feature_layer model.projection_dim "
    "model.problem "
    "lora.rank lora.alpha lora.targets lora.rslora contrastive.schedule "
    "contrastive.temperature_schedule optim.ema"
).split()
# ... and, when the base is random-init (model.path empty), the keys that shape it.
RANDOM_INIT_KEYS = (
    "model.preset model.hidden_size model.num_layers model.num_heads model.num_kv_heads "
    "model.head_dim model.intermediate_size model.train_base"
).split()


class Checkpoints:
    """Save, restore and prune the run's checkpoints (one manager for the whole run)."""

    def __init__(
        self,
        directory: str | os.PathLike,
        best_metric: str,
        best_mode: str,
        keep: int,
        *,
        writer: bool = False,
    ):
        """``writer``: the training run that owns the directory; it removes the leftovers of
        a killed save or prune (a reader must not: they may be a live run's save). Every
        process of a multi-host run passes the same value (Orbax synchronises them all);
        only process 0 touches the files."""
        self.directory = Path(directory).absolute()
        self.best_metric, self.best_mode, self.keep = best_metric, best_mode, keep
        self.primary = jax.process_index() == 0
        if writer and self.primary:
            shutil.rmtree(self.directory / TRASH, ignore_errors=True)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=None, create=writer, enable_async_checkpointing=False,
            cleanup_tmp_directories=writer, todelete_subdir=TRASH,
        )  # fmt: skip
        self.manager = ocp.CheckpointManager(self.directory, options=options)
        self._metas: dict[int, dict] = {}

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def meta(self, step: int) -> dict:
        if step not in self._metas:
            args = ocp.args.Composite(meta=ocp.args.JsonRestore())
            self._metas[step] = dict(self.manager.restore(step, args=args)["meta"])
        return self._metas[step]

    def best_step(self) -> int | None:
        """The step whose ``meta["metrics"][best_metric]`` is best; None if none was scored."""
        scored = [(s, self._score(s)) for s in self.steps()]
        scored = [(s, v) for s, v in scored if v is not None]
        if not scored:
            return None
        pick = max if self.best_mode == "max" else min
        return pick(scored, key=lambda sv: (sv[1], sv[0]))[0]

    def _score(self, step: int) -> float | None:
        value = self.meta(step).get("metrics", {}).get(self.best_metric)
        if value is None or not math.isfinite(value):
            return None
        return float(value)

    def save(self, step: int, state: PyTree, meta: dict) -> None:
        """Write ``state`` and ``meta`` for ``step`` (replacing it), then prune."""
        if step in self.manager.all_steps():
            self._delete(step)
        args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
        threads = set(threading.enumerate())
        try:
            with _errors_told_once():
                self.manager.save(step, args=args, force=True)
                self.manager.wait_until_finished()
        except (OSError, ValueError, RuntimeError) as e:  # tensorstore reports I/O as ValueError
            # The save's other writer threads may still be running: let them end before their
            # files are removed (else they fail again, reading what was removed). Orbax's
            # threads re-raise their own error from join(): it is this one again.
            deadline = time.monotonic() + 30
            for thread in set(threading.enumerate()) - threads:
                with contextlib.suppress(Exception):
                    thread.join(max(0.0, deadline - time.monotonic()))
            self._clean_partial()
            good = self.latest_step()
            raise UserError(
                f"could not write checkpoint {step} in {self.directory} ({_io_cause(e)}); "
                "free disk space or fix permissions, then re-run the same command to resume "
                f"from the last complete checkpoint ({'none' if good is None else good})"
            ) from e
        self._metas[step] = meta
        self._prune()

    def _clean_partial(self) -> None:
        """Remove partial saves (what remains is removed by the next run, a ``writer``, before
        it starts; no reader takes a partial save for a step)."""
        for tmp in self.directory.glob("*.orbax-checkpoint-tmp*"):
            shutil.rmtree(tmp, ignore_errors=True)

    def _delete(self, step: int) -> None:
        """Rename ``step`` into trash/ (atomic), then delete it."""
        self.manager.delete(step)
        self._metas.pop(step, None)
        if self.primary:
            shutil.rmtree(self.directory / TRASH, ignore_errors=True)

    def _prune(self) -> None:
        """Keep the latest step and the ``keep`` best-scored steps; delete the rest."""
        steps = self.steps()
        scored = [(s, self._score(s)) for s in steps]
        ranked = sorted(
            (sv for sv in scored if sv[1] is not None),
            key=lambda sv: (sv[1] if self.best_mode == "max" else -sv[1], sv[0]),
            reverse=True,
        )
        keep = {steps[-1]} | {s for s, _ in ranked[: self.keep]}
        for s in steps:
            if s not in keep:
                self._delete(s)

    def restore(self, step: int, abstract_state: PyTree) -> tuple[PyTree, dict]:
        """The state (laid out like ``abstract_state``) and meta saved at ``step``."""
        args = ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()
        )
        try:
            with _errors_told_once():
                out = self.manager.restore(step, args=args)
        except (ValueError, KeyError, TypeError) as e:
            cause = str(e).splitlines()[0].split(". ")[0][:200]
            raise UserError(
                f"checkpoint {self.directory / str(step)} does not fit this config and "
                f"labels.json ({cause}); use the config and labels the run was trained with, "
                "or a new workdir"
            ) from e
        return out["state"], dict(out["meta"])

    def restore_as_saved(self, step: int) -> PyTree:
        """The state saved at ``step`` as nested dicts of host arrays (no template needed)."""
        args = ocp.args.Composite(state=ocp.args.StandardRestore())
        with _errors_told_once():
            return self.manager.restore(step, args=args)["state"]

    def resolve(self, ckpt: str) -> int:
        """A step from ``best``, ``latest`` or a step number (UserError when absent)."""
        steps = self.steps()
        if not steps:
            raise UserError(f"no checkpoints in {self.directory}; train first")
        if ckpt == "latest":
            return steps[-1]
        if ckpt == "best":
            best = self.best_step()
            return steps[-1] if best is None else best
        if ckpt.isdigit() and int(ckpt) in steps:
            return int(ckpt)
        raise UserError(
            f"--ckpt {ckpt!r} names no checkpoint in {self.directory}; use best, latest "
            f"or one of the steps {steps}"
        )

    def close(self) -> None:
        self.manager.close()


def open_checkpoints(workdir: Path, cfg: Any, *, writer: bool = False) -> Checkpoints:
    """The checkpoints of run ``workdir`` as its config ranks them (best metric and mode)."""
    train = cfg.train
    return Checkpoints(
        workdir / CHECKPOINTS, train.best_metric, train.best_mode, train.keep_best, writer=writer
    )


@contextlib.contextmanager
def _errors_told_once() -> Iterator[None]:
    """Keep a failed save's or restore's echoes off the console; its UserError says it once.

    Orbax's writer threads log their I/O errors, and every pending tensorstore operation of
    the failed call calls back into its closed event loop ("Event loop is closed", through
    ``sys.unraisablehook``), some after the call has returned: the filters stay after a
    failure (the run ends with it); a successful call removes them.
    """
    absl, hook, drop = logging.getLogger("absl"), sys.unraisablehook, _DropWriteErrors()
    absl.addFilter(drop)
    sys.unraisablehook = functools.partial(_drop_closed_loop, hook)
    yield  # on an exception the filters stay
    absl.removeFilter(drop)
    sys.unraisablehook = hook


class _DropWriteErrors(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "os_error_code" not in record.getMessage()


def _drop_closed_loop(hook: Callable[[Any], None], unraisable: Any) -> None:
    error = unraisable.exc_value
    if not (isinstance(error, RuntimeError) and str(error) == "Event loop is closed"):
        hook(unraisable)


def _io_cause(e: Exception) -> str:
    """The OS reason of a failed write, e.g. 'No space left on device: /path'."""
    if isinstance(e, OSError):
        return f"{e.strerror or e}: {e.filename}" if e.filename else str(e.strerror or e)
    code = re.search(r"os_error_code='?(\d+)", str(e))  # tensorstore's errno
    if code and int(code.group(1)) in errno.errorcode:
        return os.strerror(int(code.group(1)))
    return str(e).splitlines()[0][:200]


def committed_steps(directory: Path) -> list[int]:
    """The complete checkpoints in ``directory`` (Orbax names a step's dir by its number only
    once it is complete), without opening a manager."""
    if not directory.is_dir():
        return []
    return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit() and p.is_dir())


def check_same_model(saved: dict, cfg: Any, workdir: Path) -> None:
    """A run resumes only with the model and LoRA keys it was started with (``MODEL_KEYS``)."""
    changed = []
    for key in MODEL_KEYS + ([] if cfg.model.path else RANDOM_INIT_KEYS):
        group, name = key.split(".")
        old, new = saved.get(group, {}).get(name), cfg[group][name]
        if old is not None and old != new:
            changed.append(f"{key}={old!r} (now {new!r})")
    if changed:
        raise UserError(
            f"{workdir} was trained with {', '.join(changed)}; resume with the same values "
            "or train into a new workdir (--config.workdir=...)"
        )


def abstract(tree: PyTree) -> PyTree:
    """Shape/dtype/sharding structs of a pytree (restore target without allocating)."""
    return jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, tree)
