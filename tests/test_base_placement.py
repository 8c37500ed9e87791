"""Placing the frozen base: stacked without a second copy, aliased on a CPU device."""

from __future__ import annotations

import numpy as np

from jaxcls.model import layerstack
from jaxcls.train import sharding


def _layers(n: int, rng: np.random.Generator) -> dict:
    return {
        "model": {
            f"layers_{i}": {
                "mlp": {"up_proj": {"kernel": rng.standard_normal((6, 4)).astype(np.float32)}},
                "norm": {"scale": rng.standard_normal(4).astype(np.float32)},
            }
            for i in range(n)
        }
    }


def test_consuming_stack_equals_np_stack_and_empties_the_layers():
    rng = np.random.default_rng(0)
    tree = _layers(5, rng)
    expected = np.stack(
        [tree["model"][f"layers_{i}"]["mlp"]["up_proj"]["kernel"] for i in range(4)]
    )
    stacked = layerstack.stack_layers(tree, 5, consume=True)
    kernel = stacked["model"]["layers"]["mlp"]["up_proj"]["kernel"]
    np.testing.assert_array_equal(kernel, expected)
    assert kernel.ctypes.data % layerstack.XLA_CPU_ALIGNMENT == 0
    assert all(
        not tree["model"][f"layers_{i}"]["mlp"]["up_proj"] for i in range(4)
    )  # every per-layer leaf dropped from the caller's dicts
    assert "layers_4" in stacked["model"]  # the last layer stays unstacked


def test_aligned_host_array_is_placed_without_a_copy():
    host = layerstack.aligned_empty((3, 128, 64), np.uint16)
    host[...] = 7
    mesh = sharding.make_mesh("0")
    placed = sharding.move_params({"w": host}, mesh)["w"]
    pointer = placed.addressable_data(0).unsafe_buffer_pointer()
    assert pointer == host.ctypes.data  # aliased: the base is not held twice on CPU
    np.testing.assert_array_equal(np.asarray(placed), host)
