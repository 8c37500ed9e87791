"""Two processes on localhost (jax.distributed, gloo CPU collectives) train like one process.

Three subprocesses run the real Trainer on the same data and frozen base at once: processes
0 and 1 of a 2-process job (2 CPU devices each, the base FSDP-sharded over each process's
pair), and a single process that trains on devices "0,2" of its 4. Their logged losses and
validation metrics agree; process 0 alone writes the run files; both processes save and
restore the Orbax checkpoints.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).with_name("_multihost_worker.py")
TIMEOUT_S = 420
WORDS = {
    "pos": ["great", "wonderful", "love", "很好", "满意"],
    "neg": ["terrible", "boring", "broken", "太差", "失望"],
    "mid": ["okay", "fine", "average", "一般", "还行"],
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def write_csv(path: Path, n_per_class: int, seed: int) -> Path:
    """Texts of 12 words: all longer than max_length=32 tokens, so every batch has the same
    shape and each process compiles one train and one eval step (buckets: test_multidevice)."""
    rng = np.random.default_rng(seed)
    rows = [
        {"text": " ".join(rng.choice(words, size=12)), "label": label}
        for label, words in WORDS.items()
        for _ in range(n_per_class)
    ]
    pd.DataFrame(rows).sample(frac=1.0, random_state=seed).to_csv(path, index=False)
    return path


def make_model_dir(out: Path, tokenizer_dir: Path) -> Path:
    """A tiny random-init jaxcls model dir: the frozen base LoRA trains on."""
    import dataclasses

    from _multidevice_worker import QWEN  # every sharded dimension divides by 4
    from transformers import AutoTokenizer

    from jaxcls.formats import model_dir
    from jaxcls.train import base_model

    vocab = len(AutoTokenizer.from_pretrained(tokenizer_dir))
    config = dataclasses.replace(QWEN, vocab_size=vocab)
    params = base_model.init_random(config, seed=0, param_dtype="float32")
    return model_dir.write_model(
        out, config, params, None, tokenizer_dir=tokenizer_dir, source="test"
    )


def launch(overrides: dict, out: Path, devices: int, env: dict) -> subprocess.Popen:
    env = {
        **os.environ,
        **env,
        "PYTHONPATH": str(ROOT),
        "HF_HUB_OFFLINE": "1",
        "JAX_PLATFORMS": "cpu",
        "JAX_CPU_COLLECTIVES_IMPLEMENTATION": "gloo",
        # conftest's flags (optimisation level 0) and the host device count.
        "XLA_FLAGS": f"{os.environ['XLA_FLAGS']} --xla_force_host_platform_device_count={devices}",
    }
    args = json.dumps({k: str(v) for k, v in overrides.items()})
    return subprocess.Popen(
        [sys.executable, str(WORKER), args, str(out)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def wait_all(procs: dict[str, subprocess.Popen]) -> dict[str, str]:
    """Wait for every process; on a timeout or any failure kill the rest (never hang)."""
    deadline = time.monotonic() + TIMEOUT_S
    logs = {}
    for name, proc in procs.items():
        try:
            logs[name] = proc.communicate(timeout=max(deadline - time.monotonic(), 1))[0]
        except subprocess.TimeoutExpired:
            for other in procs.values():
                other.kill()
            pytest.fail(f"{name} did not finish in {TIMEOUT_S} s")
        if proc.returncode != 0:
            for other in procs.values():
                other.kill()
            pytest.fail(f"{name} exited {proc.returncode}:\n{logs[name][-4000:]}")
    return logs


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tokenizer_dir):
    tmp = tmp_path_factory.mktemp("multihost")
    base = {
        "model.path": make_model_dir(tmp / "model", tokenizer_dir),
        "data.train": write_csv(tmp / "train.csv", 16, seed=0),
        # 15 rows: the last validation batch of 8 is partly padding.
        "data.val": write_csv(tmp / "val.csv", 5, seed=1),
        "train.max_steps": 4,
        "train.eval_every": 2,
    }
    coordinator = f"localhost:{free_port()}"
    procs = {
        f"process {i}": launch(
            {**base, "workdir": tmp / "multi", "mesh.fsdp": 2},
            tmp / f"multi{i}.json",
            devices=2,
            env={
                "JAX_COORDINATOR_ADDRESS": coordinator,
                "JAX_NUM_PROCESSES": "2",
                "JAX_PROCESS_ID": str(i),
            },
        )
        for i in (0, 1)
    }
    procs["single"] = launch(
        {**base, "workdir": tmp / "single", "devices": "0,2"}, tmp / "single.json", 4, {}
    )
    wait_all(procs)
    reports = {
        name: json.loads((tmp / f"{name}.json").read_text()) for name in ("multi0", "multi1")
    }
    reports["single"] = json.loads((tmp / "single.json").read_text())
    return tmp, reports


def events(workdir: Path) -> list[dict]:
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def test_two_processes_train_like_one(runs):
    tmp, reports = runs
    first, second = reports["multi0"], reports["multi1"]
    assert (first["process"], second["process"], first["processes"]) == (0, 1, 2)
    assert len(first["global_devices"]) == 4
    assert sorted(first["local_devices"] + second["local_devices"]) == first["global_devices"]
    # Each process holds only its own half of each global batch.
    assert (first["local_rows"], second["local_rows"]) == ([0, 1, 2, 3], [4, 5, 6, 7])
    multi, single = events(tmp / "multi"), events(tmp / "single")
    # Written once (by process 0), not once per process.
    assert [(e["step"], e["split"]) for e in multi] == [(e["step"], e["split"]) for e in single]
    assert [e["step"] for e in multi if e["split"] == "train"] == [1, 2, 3, 4]
    for m, s in zip(multi, single, strict=True):
        for key in ("loss", "cls_loss", "con_loss", "grad_norm", "accuracy", "macro_f1"):
            if key in s:
                assert m[key] == pytest.approx(s[key], abs=1e-5), (m["step"], m["split"], key)
    # The losses moved: the comparison is not between two untrained models.
    losses = [e["loss"] for e in single if e["split"] == "train"]
    assert max(losses) - min(losses) > 1e-3


def test_checkpoints_saved_and_restored_across_processes(runs):
    tmp, reports = runs
    saved = sorted(p.name for p in (tmp / "multi" / "checkpoints").iterdir())
    assert saved == sorted(p.name for p in (tmp / "single" / "checkpoints").iterdir())
    assert "4" in saved
    for report in (reports["multi0"], reports["multi1"]):
        assert report["status"] == "finished"
        assert report["restored_step"] == 4
        assert report["restore_diff"] == 0.0
        # The base is FSDP-sharded and the state replicated over all 4 devices of both.
        assert report["state_devices"] == report["frozen_devices"] == report["global_devices"]


def test_single_process_uses_exactly_the_listed_devices(runs):
    _, reports = runs
    single = reports["single"]
    assert single["global_devices"] == [0, 1, 2, 3]
    assert single["state_devices"] == single["frozen_devices"] == [0, 2]
    assert single["local_rows"] == list(range(8))
