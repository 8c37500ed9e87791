"""Training checkpoints: Orbax, best k by a validation metric plus the latest.

A checkpoint ``checkpoints/<step>/`` holds the trainable state only (adapters, heads,
optimizer state, step, RNG) and a JSON ``meta`` item (validation metrics, best-so-far,
patience counter); the frozen base is referenced by the run's config. Orbax writes each
step into a temporary dir and renames it when complete, so a kill during a save never
leaves a checkpoint that resume would pick up.
"""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from jaxcls.errors import UserError

PyTree = Any


class Checkpoints:
    """Save, restore and prune the run's checkpoints (one manager for the whole run)."""

    def __init__(self, directory: str | os.PathLike, best_metric: str, best_mode: str, keep: int):
        self.directory = Path(directory).absolute()
        self.best_metric, self.best_mode, self.keep = best_metric, best_mode, keep
        options = ocp.CheckpointManagerOptions(
            max_to_keep=None, create=True, enable_async_checkpointing=False
        )
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
            self.manager.delete(step)
        args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
        try:
            self.manager.save(step, args=args, force=True)
            self.manager.wait_until_finished()
        except OSError as e:
            self._clean_partial()
            raise UserError(
                f"could not write checkpoint {step} in {self.directory} ({e.strerror or e}); "
                "free disk space or fix permissions, then re-run the same command to resume "
                "from the last complete checkpoint"
            ) from None
        self._metas[step] = meta
        self._prune()

    def _clean_partial(self) -> None:
        for tmp in self.directory.glob("*.orbax-checkpoint-tmp*"):
            shutil.rmtree(tmp, ignore_errors=True)

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
                self.manager.delete(s)
                self._metas.pop(s, None)

    def restore(self, step: int, abstract_state: PyTree) -> tuple[PyTree, dict]:
        """The state (laid out like ``abstract_state``) and meta saved at ``step``."""
        args = ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()
        )
        try:
            out = self.manager.restore(step, args=args)
        except (ValueError, KeyError, TypeError) as e:
            raise UserError(
                f"checkpoint {self.directory / str(step)} does not fit this config "
                f"({str(e).splitlines()[0][:200]}); use the config the run was trained with "
                "or a new workdir"
            ) from None
        return out["state"], dict(out["meta"])

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


def abstract(tree: PyTree) -> PyTree:
    """Shape/dtype/sharding structs of a pytree (restore target without allocating)."""
    return jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, tree)
