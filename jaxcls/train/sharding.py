"""The device mesh over the listed devices, and where arrays live on it.

The mesh has axes ``("data", "fsdp")``. Batches are split along their batch axis over both
axes (every device sees different rows). Parameters follow ``FSDP_RULES``: with
``mesh.fsdp > 1`` the large base kernels and the embedding are split over ``fsdp`` (XLA
all-gathers each one where a layer uses it); everything else (LoRA factors, heads, scalars)
is replicated. Host values are placed with ``jax.make_array_from_callback``, so each device,
and each process of a multi-host job, only ever receives its own slice.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxcls.errors import UserError

BATCH_AXES = ("data", "fsdp")
PyTree = Any

# (regex searched in a leaf's path, dimensions to try in order): the first dimension that the
# fsdp size divides is split over ``fsdp``; a leaf that matches no rule, or whose candidate
# dimensions do not divide, is replicated. Paths end the same way in the frozen base, a trained
# base and its optimizer moments (``opt_state/.../mu/params/model/layers_0/mlp/up_proj/kernel``),
# so one table shards all three.
FSDP_RULES: tuple[tuple[str, tuple[int, ...]], ...] = (
    (r"model/embed_tokens/embedding$", (0, 1)),  # [vocab, hidden]: over the vocabulary first
    # [in, out]: over the input features first (kernel/q: an int8 kernel, quant.Int8Kernel;
    # its per-output-channel scale is replicated)
    (r"model/layers_\d+/.+/kernel(/q)?$", (0, 1)),
    (
        r"model/layers/.+/kernel(/q)?$",
        (1, 2),
    ),  # stacked [layer, in, out] (layerstack): never the layer
)


def select_devices(spec: str) -> list[jax.Device]:
    """Devices named by ``devices``: "all" or comma-separated ids such as "0,1,2,3"."""
    available = jax.devices()
    if spec.strip() in ("", "all"):
        return available
    by_id = {d.id: d for d in available}
    try:
        ids = [int(part) for part in spec.split(",") if part.strip()]
    except ValueError:
        ids = []
    missing = [i for i in ids if i not in by_id]
    if not ids or missing or len(set(ids)) != len(ids):
        raise UserError(
            f"config key 'devices' is {spec!r}; use 'all' or distinct ids among the devices "
            f"that exist: {', '.join(f'{d.id} ({d.platform})' for d in available)}"
        )
    return [by_id[i] for i in ids]


def make_mesh(devices_spec: str, fsdp: int = 1) -> Mesh:
    """A ``("data", "fsdp")`` mesh over exactly the listed devices."""
    devices = select_devices(devices_spec)
    if fsdp < 1 or len(devices) % fsdp:
        raise UserError(
            f"config key 'mesh.fsdp' is {fsdp} but {len(devices)} devices are listed; "
            "pick an fsdp size that divides the device count"
        )
    # Every process runs the same steps, so each must own part of the mesh (and all of them
    # reach this same verdict, so none is left waiting for the others).
    idle = sorted(set(range(jax.process_count())) - {d.process_index for d in devices})
    if idle:
        raise UserError(
            f"config key 'devices' is {devices_spec!r}, which lists no device of process(es) "
            f"{', '.join(map(str, idle))}; list devices of every process, or 'all'"
        )
    grid = np.array(devices, dtype=object).reshape(len(devices) // fsdp, fsdp)
    return Mesh(grid, BATCH_AXES)


def data_size(mesh: Mesh) -> int:
    """How many ways a batch is split."""
    return mesh.devices.size


def check_batch_size(batch_size: int, mesh: Mesh, key: str) -> None:
    """A global batch must split evenly over the devices."""
    n = data_size(mesh)
    if batch_size % n:
        lower = batch_size - batch_size % n
        options = " or ".join(str(s) for s in (lower, lower + n) if s > 0)
        raise UserError(
            f"config key '{key}' is {batch_size}, which does not divide over {n} devices; "
            f"use a multiple of {n} such as {options}"
        )


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def leaf_spec(path: str, shape: Sequence[int], fsdp: int, rules=FSDP_RULES) -> P:
    """The partition spec of one parameter-like leaf (see ``FSDP_RULES``)."""
    if fsdp > 1:
        for regex, dims in rules:
            if re.search(regex, path):
                for dim in dims:
                    if dim < len(shape) and shape[dim] % fsdp == 0:
                        spec = [None] * len(shape)
                        spec[dim] = "fsdp"
                        return P(*spec)
                break
    return P()


def tree_shardings(tree: PyTree, mesh: Mesh, rules=FSDP_RULES) -> PyTree:
    """A ``NamedSharding`` per leaf of ``tree`` (arrays or ``jax.ShapeDtypeStruct``)."""
    fsdp = mesh.shape["fsdp"]

    def one(path: tuple, leaf: Any) -> NamedSharding:
        name = jax.tree_util.keystr(path, simple=True, separator="/")
        return NamedSharding(mesh, leaf_spec(name, np.shape(leaf), fsdp, rules))

    return jax.tree_util.tree_map_with_path(one, tree)


def place(tree: PyTree, shardings: PyTree) -> PyTree:
    """Put host or device values on the mesh; each device receives only its own slice."""
    return jax.tree_util.tree_map(_put, tree, shardings)


def put_params(tree: PyTree, mesh: Mesh, rules=FSDP_RULES) -> PyTree:
    """Place a parameter-like tree by ``rules`` (host leaves are sliced, never copied whole)."""
    return place(tree, tree_shardings(tree, mesh, rules))


def move_params(tree: dict, mesh: Mesh, rules=FSDP_RULES) -> PyTree:
    """``put_params`` that empties ``tree``'s dicts as it goes: each host leaf is released
    once placed, so the two never both hold the whole tree. On CPU a placed array is a copy,
    unless the host array is aligned (``layerstack.aligned_empty``: jax then aliases it)."""
    return _move(tree, tree_shardings(tree, mesh, rules))


def _move(tree: Any, shardings: Any) -> Any:
    if not isinstance(tree, dict):  # an array, or a node of arrays (quant.Int8Kernel)
        return jax.tree_util.tree_map(_put, tree, shardings)
    return {k: _move(tree.pop(k), shardings[k]) for k in list(tree)}


def init_sharded(fn: Callable, *args: Any, mesh: Mesh, rules=FSDP_RULES) -> tuple[Any, PyTree]:
    """``fn(*args)`` computed straight into its shardings, and those shardings.

    ``jax.eval_shape`` gives the result's structure without computing it; ``jax.jit`` with
    those ``out_shardings`` then writes each device's part in place, so the result never
    exists whole on one device.
    """
    shardings = tree_shardings(jax.eval_shape(fn, *args), mesh, rules)
    return jax.jit(fn, out_shardings=shardings)(*args), shardings


def _put(x: Any, sharding: NamedSharding) -> jax.Array:
    if isinstance(x, jax.Array) and (jax.process_count() == 1 or not x.is_fully_addressable):
        return jax.device_put(x, sharding)
    # A host value (or one process's local array): slice it per addressable device, so that
    # no device, and no process, receives more than its own part.
    host = np.asarray(x)
    placed = jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])
    # The copy is asynchronous and keeps ``host`` alive until it is done: waiting releases
    # each leaf's host copy before the next is placed (else at 1.7B about half the base was
    # held twice until the first execution: +2 GB at eval.py's compile).
    return placed.block_until_ready()


def batch_sharding(mesh: Mesh, ndim: int, batch_axis: int) -> NamedSharding:
    """Split dimension ``batch_axis`` of an ``ndim`` array over every device."""
    spec = [None] * ndim
    spec[batch_axis] = BATCH_AXES
    return NamedSharding(mesh, P(*spec))


def put_batch(batch: dict[str, np.ndarray], mesh: Mesh, batch_axis: int = 0) -> dict[str, Any]:
    """Place a global host batch, split along ``batch_axis``; each process reads its rows."""
    return {k: _put(v, batch_sharding(mesh, np.ndim(v), batch_axis)) for k, v in batch.items()}
