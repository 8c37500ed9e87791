"""Interruptions through ``train.py``: SIGTERM, a full disk during a save, and SIGKILL at random
moments (one of them during a checkpoint write).

One run dir is interrupted in every one of those ways, re-running the same command each time.
Every re-run must resume from the latest complete checkpoint, and the finished run must equal
the session's uninterrupted reference run with the same seed bit for bit: the final state
(adapters, heads, optimizer state, RNG) and every metrics.jsonl event but the wall-clock
throughput. Kill moments are drawn from a seed that the failure message shows.
"""

from __future__ import annotations

import errno
import os
import random
import signal
import time
from pathlib import Path

import helpers_e2e as e2e
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from jaxcls import cli
from jaxcls.train.checkpoints import committed_steps

TIMEOUT = 300  # seconds for any one run to reach the awaited point (a loaded 2-core machine)


@pytest.fixture(scope="module")
def zygote(tmp_path_factory):
    return e2e.shared_zygote(tmp_path_factory)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, make_hf_model) -> e2e.Reference:
    return e2e.reference_run(tmp_path_factory, make_hf_model())


def partial_saves(ckpts: Path) -> list[Path]:
    return sorted(ckpts.glob("*.orbax-checkpoint-tmp*"))


def restored_state(step_dir: Path) -> dict[str, np.ndarray]:
    """A checkpoint's whole train state as {path: array}."""
    tree = ocp.PyTreeCheckpointer().restore(step_dir / "state")
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {jax.tree_util.keystr(path): np.asarray(v) for path, v in leaves}


class Interrupted:
    """The run dir under test and the command that (re)starts it."""

    def __init__(self, zygote: e2e.Zygote, reference: e2e.Reference, workdir: Path, seed: int):
        self.zygote, self.workdir, self.seed = zygote, workdir, seed
        self.ckpts = workdir / "checkpoints"
        self.args = reference.train_args(workdir)
        self.rng = random.Random(seed)
        self.resume_from: int | None = None  # the latest complete checkpoint before a start

    def latest(self) -> int:
        steps = committed_steps(self.ckpts)
        return steps[-1] if steps else 0

    def start(self, fsize: int = 0) -> e2e.Run:
        self.resume_from = self.latest() or None
        return self.zygote.spawn("train.py", *self.args, fsize=fsize)

    def check_resumed(self, stderr: str) -> None:
        """The run started from the latest complete checkpoint (or from scratch)."""
        if self.resume_from is None:
            assert "resumed from" not in stderr, self.note(stderr)
        else:
            expected = f"resumed from {self.ckpts.absolute() / str(self.resume_from)}\n"
            assert expected in stderr, self.note(stderr)

    def wait_for_step(self, step: int, run: e2e.Run) -> None:
        reached = e2e.wait_for(lambda: self.latest() >= step, TIMEOUT)
        assert reached, self.note(run.err.read_text())

    def note(self, stderr: str = "") -> str:
        return f"kill seed {self.seed}; stderr:\n{stderr[-3000:]}"


def test_interrupted_run_ends_bit_for_bit_as_the_uninterrupted_one(zygote, reference, tmp_path):
    seed = random.randrange(2**32)
    t = Interrupted(zygote, reference, tmp_path / "run", seed)

    # SIGTERM: the step finishes, a checkpoint is written, exit 0 (SIGINT takes the same path:
    # test_numerics sends it in process).
    run = t.start()
    t.wait_for_step(1, run)
    run.signal(signal.SIGTERM)
    result = run.wait()
    t.check_resumed(result.stderr)
    assert result.returncode == 0, t.note(result.stderr)
    stopped = t.latest()
    expected = f"stopped by SIGTERM after step {stopped}; checkpoint saved in {t.ckpts.absolute()}"
    assert expected in result.stderr, t.note(result.stderr)
    assert "re-run the same command to resume" in result.stderr

    # A full disk: every write beyond 32 KB fails (EFBIG), as a checkpoint's does; earlier
    # checkpoints stay as they were (a partial save may stay too, until the next run starts).
    before = {s: e2e.tree_digest(t.ckpts / str(s)) for s in committed_steps(t.ckpts)}
    result = t.start(fsize=32_000).wait(TIMEOUT)
    t.check_resumed(result.stderr)
    e2e.assert_user_error(
        result, f"could not write checkpoint {stopped + 1}", "File too large",
        f"last complete checkpoint ({stopped})",
    )  # fmt: skip
    assert {s: e2e.tree_digest(t.ckpts / str(s)) for s in committed_steps(t.ckpts)} == before

    # SIGKILL twice at a random moment of a random step (training, validation, saving or
    # pruning).
    for _ in range(2):
        run = t.start()
        t.wait_for_step(t.latest() + t.rng.randint(1, 2), run)
        time.sleep(t.rng.uniform(0.0, 0.5))
        run.signal(signal.SIGKILL)
        assert run.wait().returncode == -signal.SIGKILL
        t.check_resumed(run.err.read_text())

    # SIGKILL during a checkpoint write: as soon as a save's temporary dir appears.
    for _attempt in range(5):
        seen = set(partial_saves(t.ckpts))  # left by the last kill (removed at start)

        def new_save(seen=seen) -> set[Path]:
            return set(partial_saves(t.ckpts)) - seen

        run = t.start()
        assert e2e.wait_for(new_save, TIMEOUT, poll=0.001), t.note(run.err.read_text())
        run.signal(signal.SIGKILL)
        run.wait()
        t.check_resumed(run.err.read_text())
        if new_save():  # killed before Orbax renamed it into place: a write was cut
            break
    else:
        pytest.fail(f"no kill landed inside a checkpoint write in 5 tries; {t.note()}")

    # The last re-run finishes, exactly as the uninterrupted run did.
    result = t.start().wait()
    t.check_resumed(result.stderr)
    assert result.returncode == 0, t.note(result.stderr)
    assert not partial_saves(t.ckpts) and not (t.ckpts / "trash").exists()
    steps = committed_steps(t.ckpts)
    assert steps == committed_steps(reference.workdir / "checkpoints"), t.note()
    got = restored_state(t.ckpts / str(steps[-1]))
    want = restored_state(reference.workdir / "checkpoints" / str(steps[-1]))
    assert got.keys() == want.keys()
    for key, value in want.items():
        assert got[key].dtype == value.dtype and np.array_equal(got[key], value), (key, t.note())
    events = e2e.read_metrics(t.workdir / "metrics.jsonl")
    assert events == e2e.read_metrics(reference.workdir / "metrics.jsonl"), t.note()


def test_a_full_disk_anywhere_is_a_one_line_error(capsys):
    """Writes outside checkpoints (metrics.jsonl, eval outputs) fail as clearly; other OS
    errors are bugs and keep their traceback."""

    def full(errno_: int):
        def main():
            raise OSError(errno_, os.strerror(errno_), "/runs/x/metrics.jsonl")

        return main

    with pytest.raises(SystemExit) as exit_:
        cli.run(full(errno.ENOSPC), argv=["train.py"])
    assert exit_.value.code == cli.EXIT_USER_ERROR
    assert capsys.readouterr().err == (
        "error: /runs/x/metrics.jsonl: No space left on device; free disk space or fix "
        "permissions, then re-run the same command (training resumes from its last complete "
        "checkpoint)\n"
    )
    with pytest.raises(FileNotFoundError):
        cli.run(full(errno.ENOENT), argv=["train.py"])
