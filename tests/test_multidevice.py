"""Data parallel and FSDP on 4 CPU devices against one device, through the real step builders.

One subprocess (``_multidevice_worker.py``, 4 host devices set before jax is imported) runs
every check and reports the measured differences; the tests below judge them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOL = 1e-5


@pytest.fixture(scope="module")
def report() -> dict:
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "JAX_PLATFORMS": "cpu",
        # conftest's flags (optimisation level 0) and 4 host devices.
        "XLA_FLAGS": f"{os.environ['XLA_FLAGS']} --xla_force_host_platform_device_count=4",
    }
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).with_name("_multidevice_worker.py"))],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout)


def test_global_scope_four_devices_equal_one(report):
    r = report["global"]
    assert r["moved"] > 1e-3  # the adapters trained: the comparison is not vacuous
    assert r["loss_diff"] < TOL
    assert r["trainable_diff"] < TOL
    assert r["state_devices"] == [[0, 1, 2, 3]]


def test_no_recompilation_after_the_first_step_of_each_bucket(report):
    # Four steps over the buckets 12, 12, 20, 12: two traces, one per bucket.
    assert report["global"]["traces"] == [[2, 16, 12], [2, 16, 20]]


def test_local_scope_is_the_mean_of_per_device_losses(report):
    r = report["local"]
    assert r["con_loss"] == pytest.approx(r["shard_mean_con_loss"], abs=TOL)
    assert r["loss"] == pytest.approx(r["shard_mean_loss"], abs=TOL)
    # ... which is not the global-batch loss (else the test could not tell them apart).
    assert abs(r["con_loss"] - r["global_con_loss"]) > 0.1


def test_listed_devices_are_exactly_the_ones_used(report):
    r = report["pair"]
    assert r["mesh"] == [0, 2]
    assert r["state"] == r["frozen"] == r["batch"] == [[0, 2]]
    assert r["loss_diff"] < TOL and r["trainable_diff"] < TOL


def test_each_device_draws_its_own_dropout_masks(report):
    r = report["dropout"]
    # Four copies of one quarter: without dropout the same loss as one device on it; with
    # dropout devices 1-3 draw other masks than device 0 (= the one-device masks).
    assert r["copies_diff_without"] < TOL
    assert r["copies_diff_with"] > 1e-3


@pytest.mark.parametrize("name, parts", [("fsdp4", 4), ("fsdp2x2", 2)])
def test_fsdp_shards_the_base_and_matches_replicated(report, name, parts):
    r = report[name]
    assert r["loss_diff"] < TOL and r["trainable_diff"] < TOL
    # The embedding and all 7 kernels of the one layer are sharded; norms stay replicated.
    assert len(r["shards"]) == 8 and r["replicated_leaves"] == 5
    for path, (shape, shard_shapes, n_shards) in r["shards"].items():
        assert n_shards == 4, path
        assert shard_shapes == [[shape[0] // parts, shape[1]]], path


def test_sharded_evaluation_matches_one_device(report):
    assert report["eval_diff"] < TOL


def test_user_errors(report):
    errors = report["errors"]
    assert "train.batch_size" in errors["batch"] and "8 or 12" in errors["batch"]
    assert "0 (cpu), 1 (cpu), 2 (cpu), 3 (cpu)" in errors["device"]
    assert "mesh.fsdp" in errors["fsdp"]
