"""Cached contrastive gradients (``contrastive.cached``): accumulate = 4 x 8 rows equals one
batch of 32, on one device and on 4 (data parallel, and a 2 x 2 data x fsdp mesh).

One subprocess (``_cached_contrastive_worker.py``, 4 host devices set before jax is imported)
measures every difference; the tests judge them. The references: a plain ``jax.grad`` of one
forward of the 32 rows (no ``shard_map``), and the step with ``accumulate = 1`` on 32 rows.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from jaxcls.train import cached_contrastive

ROOT = Path(__file__).resolve().parents[1]
TOL = 1e-5


@pytest.fixture(scope="module")
def report() -> dict:
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": f"{os.environ['XLA_FLAGS']} --xla_force_host_platform_device_count=4",
    }
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).with_name("_cached_contrastive_worker.py"))],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout)


def close(diff: dict) -> bool:
    """Loss and every gradient within TOL (gradients relative to their largest entry)."""
    return diff["loss"] < TOL and diff["grads"] < TOL * max(1.0, diff["size"])


@pytest.mark.parametrize(
    "mesh, case",
    [
        ("one", "simple_global"),
        ("one", "margin_global"),
        ("data4", "simple_global"),
        ("data4", "margin_global"),
        ("data4", "simple_local"),
        ("fsdp2x2", "simple_local"),  # each fsdp device's rows grouped (device_rows)
    ],
)
def test_cached_equals_the_full_batch_reference(report, mesh, case):
    r = report[mesh][case]
    assert r["vs_reference"]["size"] > 1e-2  # gradients that could differ
    assert close(r["vs_reference"]), r


@pytest.mark.parametrize("mesh", ["one", "data4"])
def test_cached_equals_one_batch_of_32_through_the_step(report, mesh):
    assert close(report[mesh]["simple_global"]["vs_one_batch"])


def test_local_scope_differs_from_global_on_four_devices(report):
    # The local reference (the mean of 4 per-device losses) is not the global one.
    r = report["data4"]
    assert abs(r["simple_local"]["con_loss"] - r["simple_global"]["con_loss"]) > 0.1


def test_learned_temperature_and_weighting_get_their_gradient(report):
    r = report["extra"]
    assert r["extra_grads"] > 1e-2
    assert close(r)


def test_both_passes_draw_the_same_dropout_masks(report):
    r = report["dropout"]
    assert close(r["same_keys"])
    assert r["no_dropout"]["grads"] > 1e-3  # dropout changed the gradient: not vacuous


def test_uncached_is_the_mean_of_per_micro_batch_steps(report):
    r = report["uncached"]
    assert close(r)
    # Each micro-batch's contrastive loss differs from the one over all 32 rows.
    assert abs(r["con_loss"] - report["one"]["simple_global"]["con_loss"]) > 0.1


def test_device_rows_groups_each_fsdp_devices_rows():
    # [A=2, b=4] rows split over 2 fsdp devices: device 0 holds columns 0-1, device 1 2-3.
    x = np.arange(8).reshape(2, 4)
    assert cached_contrastive.device_rows(x, 2).tolist() == [0, 1, 4, 5, 2, 3, 6, 7]
    assert cached_contrastive.device_rows(x, 1).tolist() == list(range(8))
