"""End-to-end test helpers: small labelled spreadsheets, and the entry points run as processes.

``run_entry`` runs ``python train.py ...`` as a plain subprocess. ``Zygote`` runs the same
scripts much faster: one process imports jaxcls's heavy dependencies once (train.py spends
7 s importing on this 2-core machine), without initialising any JAX backend, and forks a child
per run; the child sets its argv, env, cwd and stdio and runs the real script as
``__main__``, exits with the script's exit code, and can be signalled or killed like any
process. Env variables that JAX reads at import (``JAX_*``) must be given to the zygote, not
to a child; ``XLA_FLAGS`` is read when a child first initialises its backend, so it may vary.
"""

from __future__ import annotations

import atexit
import dataclasses
import hashlib
import json
import os
import random
import resource
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
TINY = "configs/tiny.py"
# Words that make the classes separable, so a few steps of training already learn something;
# a text of three is at most 16 tokens long, also with conftest's small tokenizer.
CLASS_WORDS = {
    "neg": ["bad", "awful", "poor", "sad", "slow"],
    "pos": ["good", "great", "fine", "nice", "fast"],
    "mid": ["okay", "plain", "fair", "so so", "meh"],
}
FILLER = ["the", "a", "phone", "movie", "was"]


def write_table(path: str | os.PathLike, rows: Sequence[dict]) -> Path:
    """Write ``rows`` (dicts of column -> cell) as .xlsx/.csv/.tsv/.jsonl by the extension."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame(list(rows))
    ext = path.suffix.lower()
    if ext == ".xlsx":
        frame.to_excel(path, index=False)
    elif ext in (".csv", ".tsv"):
        frame.to_csv(path, index=False, sep="\t" if ext == ".tsv" else ",")
    elif ext == ".jsonl":
        frame.to_json(path, orient="records", lines=True, force_ascii=False)
    else:
        raise ValueError(f"write_table: unsupported extension {ext}")
    return path


def make_rows(n_per_class: int, classes: Iterable[str], seed: int = 0) -> list[dict]:
    """``n_per_class`` rows ``{"text", "label"}`` per class: two class words and a filler."""
    rng = random.Random(seed)
    rows = []
    for label in classes:
        words = CLASS_WORDS.get(label, [label])
        for _ in range(n_per_class):
            text = [rng.choice(words), rng.choice(words), rng.choice(FILLER)]
            rng.shuffle(text)
            rows.append({"text": " ".join(text), "label": label})
    rng.shuffle(rows)
    return rows


def write_dataset(
    directory: str | os.PathLike,
    n_per_class: int = 8,
    classes: Sequence[str] = ("neg", "pos"),
    *,
    seed: int = 0,
    extra_train_rows: Sequence[dict] = (),
) -> dict[str, Path]:
    """``train/val/test.xlsx`` in ``directory`` (val and test have half as many rows per class).

    ``extra_train_rows`` are appended to the training file (e.g. numbers or very long texts).
    """
    directory = Path(directory)
    half = max(1, n_per_class // 2)
    splits = {
        "train": make_rows(n_per_class, classes, seed) + list(extra_train_rows),
        "val": make_rows(half, classes, seed + 1),
        "test": make_rows(half, classes, seed + 2),
    }
    return {name: write_table(directory / f"{name}.xlsx", rows) for name, rows in splits.items()}


def train_args(data: dict[str, Path], workdir: str | os.PathLike, *overrides: str) -> list[str]:
    """Arguments of ``train.py`` with the tiny config on ``data`` into ``workdir``."""
    args = ["--config", TINY, f"--config.workdir={workdir}"]
    args += [f"--config.data.{k}={v}" for k, v in data.items()]
    return args + list(overrides)


def e2e_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment, offline and without JAXCLS_DEBUG, plus ``extra``."""
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1")
    env.pop("JAXCLS_DEBUG", None)
    env.update(extra or {})
    return env


def run_entry(
    script: str,
    *args: str,
    env: dict[str, str] | None = None,
    timeout: float = 600,
    fsize: int = 0,
) -> subprocess.CompletedProcess:
    """``python <script> <args>`` from the repository root (stdout/stderr captured as text);
    ``script`` may be ``-m module``.

    ``fsize`` > 0 limits the size of every file the run writes (RLIMIT_FSIZE, as ``ulimit -f``):
    a write beyond it fails with EFBIG, as a write to a full disk fails with ENOSPC.
    """

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, resource.RLIM_INFINITY))

    command = script.split(" ", 1) if script.startswith("-m ") else [script]
    return subprocess.run(
        [sys.executable, *command, *map(str, args)],
        cwd=REPO,
        env=e2e_env(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        preexec_fn=limit if fsize else None,
    )


def tree_digest(root: str | os.PathLike) -> dict[str, str]:
    """SHA-256 of every file under ``root`` by relative path (to prove nothing changed)."""
    root = Path(root)
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def read_metrics(path: str | os.PathLike, drop: Sequence[str] = ("tokens_per_s",)) -> list[dict]:
    """The events of a ``metrics.jsonl`` without the timing-dependent keys."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return [{k: v for k, v in json.loads(x).items() if k not in drop} for x in lines]


def assert_user_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    """Exit code 2, one ``error: ...`` line naming every fragment, and no traceback."""
    err = result.stderr
    assert result.returncode == 2, f"exit {result.returncode}, stderr:\n{err[-3000:]}"
    assert "Traceback" not in err, err[-3000:]
    lines = [x for x in err.splitlines() if x.startswith("error: ")]
    assert len(lines) == 1, err[-3000:]
    for fragment in fragments:
        assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"


_ZYGOTE = r"""
import atexit, json, logging, os, resource, runpy, signal, sys, time, traceback
sys.path.insert(0, os.getcwd())
import jaxcls.train.trainer, jaxcls.evaluate_run, jaxcls.convert  # noqa: F401  (the slow imports)
import absl.flags, ml_collections.config_flags  # noqa: F401

def child(req):
    code = 1
    try:
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        for fd, name in ((1, "out"), (2, "err")):
            os.dup2(os.open(req[name], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), fd)
        os.chdir(req["cwd"])
        os.environ.update(req["env"])
        if req["fsize"]:
            resource.setrlimit(resource.RLIMIT_FSIZE, (req["fsize"], resource.RLIM_INFINITY))
        for handler in logging.root.handlers[:]:  # as in a fresh interpreter
            logging.root.removeHandler(handler)
        script = req["script"]
        sys.argv = [script, *req["args"]]
        try:
            if script.startswith("-m "):  # python -m package.module
                runpy.run_module(script[3:], run_name="__main__", alter_sys=True)
            else:
                sys.path[0] = os.path.dirname(os.path.abspath(script))
                runpy.run_path(script, run_name="__main__")
            code = 0
        except SystemExit as e:
            if e.code is None or isinstance(e.code, int):
                code = e.code or 0
            else:
                print(e.code, file=sys.stderr)
        except BaseException:
            traceback.print_exc()
        atexit._run_exitfuncs()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)

def wait(pid, timeout):
    end = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return {"rc": os.waitstatus_to_exitcode(status), "timed_out": False}
        if time.monotonic() > end:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return {"rc": -9, "timed_out": True}
        time.sleep(0.02)

print(json.dumps({"ready": True}), flush=True)
for line in sys.stdin:
    req = json.loads(line)
    if req["op"] == "spawn":
        pid = os.fork()
        if pid == 0:
            child(req)
        reply = {"pid": pid}
    else:
        reply = wait(req["pid"], req["timeout"])
    print(json.dumps(reply), flush=True)
"""


class Run:
    """A running entry point forked by the zygote; its output goes to files."""

    def __init__(self, zygote: Zygote, pid: int, out: Path, err: Path, args: list[str]):
        self.zygote, self.pid, self.out, self.err, self.args = zygote, pid, out, err, args

    def signal(self, signum: int) -> None:
        os.kill(self.pid, signum)

    def wait(self, timeout: float = 600) -> subprocess.CompletedProcess:
        reply = self.zygote._request({"op": "wait", "pid": self.pid, "timeout": timeout})
        result = subprocess.CompletedProcess(
            self.args, reply["rc"], self.out.read_text(errors="replace"),
            self.err.read_text(errors="replace"),
        )  # fmt: skip
        if reply["timed_out"]:
            raise subprocess.TimeoutExpired(self.args, timeout, result.stdout, result.stderr)
        return result


class Zygote:
    """Forks entry-point runs from one process that has done the slow imports (see module doc)."""

    def __init__(self, logs: str | os.PathLike, env: dict[str, str] | None = None):
        self.logs = Path(logs)
        self.logs.mkdir(parents=True, exist_ok=True)
        self.count = 0
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _ZYGOTE],
            cwd=REPO,
            env=e2e_env(env),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self._read() == {"ready": True}

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the zygote exited with {self.proc.wait()}")
        return json.loads(line)

    def _request(self, req: dict) -> dict:
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def spawn(
        self, script: str, *args: str, env: dict[str, str] | None = None, fsize: int = 0
    ) -> Run:
        """Start ``python <script> <args>`` (cwd = repo root; ``script`` may be ``-m module``).

        ``fsize`` > 0 limits the size of every file the run writes (RLIMIT_FSIZE, as ``ulimit
        -f``): a write beyond it fails with EFBIG, as a write to a full disk fails with ENOSPC.
        """
        self.count += 1
        out, err = (self.logs / f"{self.count:03d}.{s}" for s in ("out", "err"))
        args = [str(a) for a in args]
        req = {"op": "spawn", "script": script, "args": args, "env": env or {}, "cwd": str(REPO)}
        reply = self._request({**req, "out": str(out), "err": str(err), "fsize": fsize})
        return Run(self, reply["pid"], out, err, [script, *args])

    def run(
        self, script: str, *args: str, env: dict[str, str] | None = None, timeout: float = 600
    ) -> subprocess.CompletedProcess:
        """Run to completion, like ``run_entry``."""
        return self.spawn(script, *args, env=env).wait(timeout)

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)

    def __enter__(self) -> Zygote:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def wait_for(predicate, timeout: float, poll: float = 0.005) -> bool:
    """Poll ``predicate`` until it is true (True) or ``timeout`` seconds pass (False)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(poll)
    return False


# Shared by the test modules of one pytest process: one zygote, and one reference run: a tiny
# run on conftest's small random Hugging Face Qwen3 (so LoRA trains on a frozen base, as in the
# real recipe, and the runs need no 150k-token tokenizer), with numbers and an over-long text
# among its training cells, saving at every step.
_SHARED: dict[str, object] = {}
REFERENCE_OVERRIDES = (
    "--config.train.max_steps=16",  # room for every interruption of test_interrupt
    "--config.train.eval_every=4",
    "--config.train.save_every=1",
    "--config.train.log_every=2",
    "--config.data.max_length=16",  # one length bucket: one compile of each step
)
LONG_TEXT = "this sentence is far longer than data.max_length allows " * 40
ODD_CELLS = (
    {"text": 12345, "label": "pos"},
    {"text": 3.25, "label": "neg"},
    {"text": LONG_TEXT, "label": "pos"},
)


@dataclasses.dataclass(frozen=True)
class Reference:
    data: dict[str, Path]  # train and val files
    workdir: Path
    overrides: tuple[str, ...]  # REFERENCE_OVERRIDES and the model path
    result: subprocess.CompletedProcess  # of its train.py

    def train_args(self, workdir: Path | None = None, *extra: str, **data: Path) -> list[str]:
        """The reference command, into ``workdir``, with ``extra`` overrides or other files."""
        return train_args({**self.data, **data}, workdir or self.workdir, *self.overrides, *extra)


def cache_env(tmp_path_factory) -> dict[str, str]:
    """A persistent XLA compilation cache shared by the session's runs (compiles once)."""
    return {
        "JAX_COMPILATION_CACHE_DIR": str(tmp_path_factory.getbasetemp() / "jax-cache"),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
    }


def shared_zygote(tmp_path_factory) -> Zygote:
    """The session's zygote; its runs share ``cache_env``."""
    if "zygote" not in _SHARED:
        logs = tmp_path_factory.getbasetemp() / "entry-logs"
        _SHARED["zygote"] = zygote = Zygote(logs, cache_env(tmp_path_factory))
        atexit.register(zygote.close)
    return _SHARED["zygote"]


def reference_run(tmp_path_factory, model_dir: Path) -> Reference:
    """The session's finished reference run (trained on first use)."""
    if "reference" not in _SHARED:
        root = tmp_path_factory.mktemp("reference")
        data = write_dataset(root / "data", 8, extra_train_rows=ODD_CELLS)
        del data["test"]  # no final evaluation: it is not what these runs are about
        overrides = (*REFERENCE_OVERRIDES, f"--config.model.path={model_dir}")
        args = train_args(data, root / "run", *overrides)
        result = shared_zygote(tmp_path_factory).run("train.py", *args)
        assert result.returncode == 0, result.stderr[-3000:]
        _SHARED["reference"] = Reference(data, root / "run", overrides, result)
    return _SHARED["reference"]
