"""The device mesh over the listed devices, and where arrays live on it.

The mesh has axes ``("data", "fsdp")``. Batches are split along their batch axis over both
axes (every device sees different rows); trainable state is replicated; the frozen base is
replicated unless ``mesh.fsdp > 1`` shards its large kernels over ``fsdp``.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxcls.errors import UserError

BATCH_AXES = ("data", "fsdp")


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
    if len(devices) % fsdp:
        raise UserError(
            f"config key 'mesh.fsdp' is {fsdp} but {len(devices)} devices are listed; "
            "pick an fsdp size that divides the device count"
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
        options = ", ".join(str(s) for s in (lower, lower + n) if s > 0)
        raise UserError(
            f"config key '{key}' is {batch_size}, which does not divide over {n} devices; "
            f"use a multiple of {n} such as {options}"
        )


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh, ndim: int, batch_axis: int) -> NamedSharding:
    """Split dimension ``batch_axis`` of an ``ndim`` array over every device."""
    spec = [None] * ndim
    spec[batch_axis] = BATCH_AXES
    return NamedSharding(mesh, P(*spec))


def put_batch(batch: dict[str, np.ndarray], mesh: Mesh, batch_axis: int = 0) -> dict[str, Any]:
    """Place a host batch on the mesh, split along ``batch_axis``."""
    return {
        k: jax.device_put(v, batch_sharding(mesh, v.ndim, batch_axis)) for k, v in batch.items()
    }


def put_replicated(tree: Any, mesh: Mesh) -> Any:
    return jax.device_put(tree, replicated(mesh))
