"""train.loggers: metrics.jsonl, TensorBoard event files (read back here) and wandb."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import types
from pathlib import Path

import pytest

from jaxcls.errors import UserError
from jaxcls.train import loggers

ROOT = Path(__file__).resolve().parents[1]


def read_scalars(folder: Path) -> dict[tuple[str, int], list[float]]:
    """(tag, step) -> every value logged for it, from all event files in ``folder``.

    Event files are TFRecords (length, length CRC, an ``Event`` proto, data CRC).
    """
    loggers.import_tensorboardx()
    from tensorboardX.proto import event_pb2

    scalars: dict[tuple[str, int], list[float]] = {}
    for path in sorted(folder.glob("events.out.tfevents.*")):
        data, pos = path.read_bytes(), 0
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos : pos + 8])
            event = event_pb2.Event.FromString(data[pos + 12 : pos + 12 + length])
            pos += 12 + length + 4
            for value in event.summary.value:
                scalars.setdefault((value.tag, event.step), []).append(value.simple_value)
    return scalars


def train_event(step: int, loss: float) -> dict:
    return {"loss": loss, "cls_loss": loss / 2, "lr": 1e-3 * step, "con_weight": 0.5,
            "temperature": 0.1, "skipped": 0, "tokens_per_s": 900.0}  # fmt: skip


def expected(events: list[tuple[int, str, dict]]) -> dict[tuple[str, int], list[float]]:
    out = {}
    for step, split, values in events:
        for key, value in values.items():
            if value is not None:
                out[(f"{split}/{key}", step)] = [pytest.approx(value, rel=1e-6)]
    return out


def test_scalars_reach_tensorboard_and_jsonl(tmp_path):
    events = [(step, "train", train_event(step, 1.0 / step)) for step in (1, 2, 3)]
    events.append((3, "val", {"loss": 0.7, "accuracy": 0.8, "silhouette": None}))
    log = loggers.Loggers(tmp_path, "jsonl,tensorboard", {})
    log.truncate_after(-1)  # a new run: what the trainer does first
    for step, split, values in events:
        log.write(step, split, values)
    log.close()
    scalars = read_scalars(tmp_path / "tensorboard")
    assert scalars == expected(events)
    assert ("val/silhouette", 3) not in scalars  # undefined values are not plotted
    for tag in ("train/lr", "train/con_weight", "train/temperature", "val/accuracy"):
        assert any(t == tag for t, _ in scalars)
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [(e["step"], e["split"]) for e in map(json.loads, lines)] == [e[:2] for e in events]


def test_a_resumed_run_shows_each_step_once(tmp_path):
    """A run killed after step 6 resumes from its step-3 checkpoint: steps 4-6 are logged again;
    TensorBoard must show them once, with the resumed run's values, like metrics.jsonl."""
    first = loggers.Loggers(tmp_path, "jsonl,tensorboard", {})
    first.truncate_after(-1)
    for step in range(1, 7):
        first.write(step, "train", train_event(step, 1.0))
        if step == 3:
            first.write(3, "val", {"accuracy": 0.5})
    first.close()
    resumed = loggers.Loggers(tmp_path, "jsonl,tensorboard", {})
    resumed.truncate_after(3)
    for step in range(4, 9):
        resumed.write(step, "train", train_event(step, 2.0))
    resumed.close()
    events = [(s, "train", train_event(s, 1.0)) for s in (1, 2, 3)]
    events.append((3, "val", {"accuracy": 0.5}))
    events += [(s, "train", train_event(s, 2.0)) for s in range(4, 9)]
    assert read_scalars(tmp_path / "tensorboard") == expected(events)
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [1, 2, 3, 3, 4, 5, 6, 7, 8]


def test_jsonl_only_and_disabled_processes(tmp_path):
    log = loggers.Loggers(tmp_path, "jsonl", {})
    log.write(1, "train", {"loss": 1.0})
    log.close()
    assert not (tmp_path / "tensorboard").exists()
    off = loggers.Loggers(tmp_path / "b", "jsonl,tensorboard", {}, enabled=False)
    off.write(1, "train", {"loss": 1.0})
    off.truncate_after(0)
    off.close()
    assert not (tmp_path / "b").exists()


def test_unknown_logger_and_missing_wandb_are_clear_errors(tmp_path, monkeypatch):
    with pytest.raises(UserError, match=r"'train\.loggers' names 'mlflow'.*jsonl, tensorboard"):
        loggers.Loggers(tmp_path, "jsonl,mlflow", {})
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if not installed
    with pytest.raises(UserError, match=r"wandb package is not installed; pip install wandb"):
        loggers.Loggers(tmp_path, "jsonl,wandb", {})


def test_wandb_gets_each_event_offline(tmp_path, monkeypatch):
    calls = []

    class Run:
        def log(self, values, step):
            calls.append(("log", step, values))

        def finish(self):
            calls.append(("finish",))

    def init(**kwargs):
        calls.append(("init", kwargs))
        return Run()

    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=init))
    monkeypatch.delenv("WANDB_MODE", raising=False)
    (tmp_path / "run").mkdir()
    log = loggers.Loggers(tmp_path / "run", "wandb", {"seed": 0})
    log.write(2, "train", {"loss": 1.5, "skipped": 0, "note": "x"})
    log.write(2, "val", {"accuracy": 0.5, "silhouette": None})
    log.close()
    init_kwargs = calls[0][1]
    assert init_kwargs["mode"] == "offline" and init_kwargs["config"] == {"seed": 0}
    assert init_kwargs["dir"] == str(tmp_path / "run")
    assert calls[1:] == [
        ("log", 2, {"train/loss": 1.5, "train/skipped": 0.0}),
        ("log", 2, {"val/accuracy": 0.5}),
        ("finish",),
    ]
    assert (tmp_path / "run" / "metrics.jsonl").is_file()  # jsonl is always written


def test_tensorboard_logging_does_not_import_torch(tmp_path):
    code = (
        "import sys; from pathlib import Path; from jaxcls.train import loggers; "
        f"log = loggers.Loggers(Path({str(tmp_path)!r}), 'tensorboard', {{}}); "
        "log.write(1, 'train', {'loss': 1.0}); log.close(); "
        "import tensorboardX; print('torch' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "False"
    assert read_scalars(tmp_path / "tensorboard") == {("train/loss", 1): [1.0]}
