"""Mesh, partition rules and placement on this process's one CPU device; multi-host settings."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from jaxcls.config import load_config
from jaxcls.errors import UserError
from jaxcls.train import distributed, sharding


@pytest.mark.parametrize(
    "path, shape, fsdp, spec",
    [
        ("model/embed_tokens/embedding", (100, 64), 4, P("fsdp", None)),
        # A vocabulary the fsdp size does not divide: the hidden dimension is split instead.
        ("model/embed_tokens/embedding", (331, 64), 4, P(None, "fsdp")),
        ("model/layers_0/mlp/down_proj/kernel", (88, 64), 8, P("fsdp", None)),
        ("model/layers_3/self_attn/q_proj/kernel", (64, 96), 2, P("fsdp", None)),
        ("model/layers_3/self_attn/q_proj/kernel", (6, 7), 4, P()),  # nothing divides
        ("model/layers_0/input_layernorm/weight", (64,), 4, P()),
        ("model/layers_0/self_attn/q_norm/weight", (16,), 4, P()),
        ("adapters/model/layers_0/self_attn/q_proj/lora_a", (64, 4), 4, P()),
        ("score/kernel", (64, 3), 4, P()),
        # A trained base's Adam moments follow its kernels.
        ("opt_state/1/0/mu/params/model/layers_2/mlp/up_proj/kernel", (64, 88), 4, P("fsdp", None)),
        ("model/layers_0/mlp/up_proj/kernel", (64, 88), 1, P()),  # fsdp=1: replicated
    ],
)
def test_fsdp_rules(path, shape, fsdp, spec):
    assert sharding.leaf_spec(path, shape, fsdp) == spec


def test_tree_shardings_cover_every_leaf_of_a_train_state():
    import optax

    params = {"model": {"layers_0": {"mlp": {"up_proj": {"kernel": jnp.zeros((4, 6))}}}}}
    state = {"trainable": params, "opt_state": optax.adam(1e-3).init(params)}
    abstract = jax.eval_shape(lambda s: s, state)
    shardings = sharding.tree_shardings(abstract, sharding.make_mesh("all"))
    assert jax.tree.structure(shardings) == jax.tree.structure(abstract)
    assert all(s.spec == P() for s in jax.tree.leaves(shardings))  # one device: fsdp = 1


def test_place_and_put_batch_keep_values_and_shapes():
    mesh = sharding.make_mesh("all")
    host = {"a": np.arange(12, dtype=np.float32).reshape(3, 4), "b": np.float32(2.5)}
    placed = sharding.put_params(host, mesh)
    assert isinstance(placed["a"], jax.Array)
    np.testing.assert_array_equal(np.asarray(placed["a"]), host["a"])
    assert float(placed["b"]) == 2.5
    batch = {"input_ids": np.arange(24, dtype=np.int32).reshape(2, 3, 4)}
    out = sharding.put_batch(batch, mesh, batch_axis=1)
    assert out["input_ids"].sharding.spec == P(None, ("data", "fsdp"), None)
    np.testing.assert_array_equal(np.asarray(out["input_ids"]), batch["input_ids"])


def test_init_sharded_computes_in_place():
    mesh = sharding.make_mesh("all")
    value, shardings = sharding.init_sharded(lambda x: {"y": x * 2}, jnp.ones(3), mesh=mesh)
    np.testing.assert_array_equal(np.asarray(value["y"]), 2 * np.ones(3))
    assert value["y"].sharding == shardings["y"]


@pytest.mark.parametrize("spec", ["5", "0,0", "a,b", "0,-1"])
def test_unknown_devices_are_a_user_error_listing_those_that_exist(spec):
    with pytest.raises(UserError, match=r"devices.*0 \(cpu\)"):
        sharding.select_devices(spec)


def test_device_selection():
    assert sharding.select_devices("all") == jax.devices()
    assert sharding.select_devices("0") == [jax.devices()[0]]
    mesh = sharding.make_mesh("0")
    assert mesh.axis_names == ("data", "fsdp") and mesh.devices.shape == (1, 1)
    with pytest.raises(UserError, match="mesh.fsdp"):
        sharding.make_mesh("all", fsdp=2)
    sharding.check_batch_size(7, mesh, "train.batch_size")  # one device: anything splits


def test_distributed_settings_from_config_and_environment(monkeypatch):
    for var in distributed.ENV.values():
        monkeypatch.delenv(var, raising=False)
    cfg = load_config("configs/tiny.py")
    assert distributed.settings(cfg) == {}
    distributed.maybe_initialize(cfg)  # single process: nothing to join
    assert jax.process_count() == 1

    monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "10.0.0.1:1234")
    monkeypatch.setenv("JAX_NUM_PROCESSES", "4")
    monkeypatch.setenv("JAX_PROCESS_ID", "2")
    assert distributed.settings(cfg) == {
        "coordinator_address": "10.0.0.1:1234",
        "num_processes": 4,
        "process_id": 2,
    }
    # Config keys win over the environment.
    cfg.distributed.coordinator = "host0:5678"
    cfg.distributed.num_processes = 2
    cfg.distributed.process_id = 0
    assert distributed.settings(cfg) == {
        "coordinator_address": "host0:5678",
        "num_processes": 2,
        "process_id": 0,
    }
    cfg.distributed.process_id = -1
    monkeypatch.setenv("JAX_PROCESS_ID", "one")
    with pytest.raises(UserError, match="JAX_PROCESS_ID"):
        distributed.settings(cfg)
