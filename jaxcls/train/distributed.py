"""Multi-host start-up: ``jax.distributed.initialize`` when the config or environment asks.

Every process runs the same command. The coordinator (process 0's ``host:port``), the number
of processes and this process's index come from ``distributed.*`` or from the variables
``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID``; what neither gives
is left to JAX's cluster detection (SLURM, Open MPI, Kubernetes, Cloud TPU).
"""

from __future__ import annotations

import logging
import os
from typing import Any

import jax

from jaxcls.errors import UserError

log = logging.getLogger("jaxcls")

ENV = {
    "coordinator": "JAX_COORDINATOR_ADDRESS",
    "num_processes": "JAX_NUM_PROCESSES",
    "process_id": "JAX_PROCESS_ID",
}


def settings(cfg: Any) -> dict[str, Any]:
    """Arguments for ``jax.distributed.initialize``; empty for a single-process run."""
    dist = cfg.distributed
    coordinator = dist.coordinator or os.environ.get(ENV["coordinator"], "")
    if not coordinator:
        return {}
    kwargs: dict[str, Any] = {"coordinator_address": coordinator}
    for key, unset in (("num_processes", 0), ("process_id", -1)):
        value = dist[key] if dist[key] != unset else os.environ.get(ENV[key], "")
        if value == "":
            continue
        try:
            kwargs[key] = int(value)
        except ValueError:
            raise UserError(
                f"environment variable {ENV[key]} is {value!r}; set it to an integer"
            ) from None
    return kwargs


def maybe_initialize(cfg: Any) -> None:
    """Join a multi-process job if ``distributed.coordinator`` or the environment names one.

    Only process 0 logs below warnings (and writes files, see ``Trainer.main``).
    """
    kwargs = settings(cfg)
    if not kwargs:
        return
    jax.distributed.initialize(**kwargs)
    if jax.process_index() != 0:
        log.setLevel(logging.WARNING)
    log.info(
        "process %d of %d joined %s: %d local / %d global devices",
        jax.process_index(), jax.process_count(), kwargs["coordinator_address"],
        jax.local_device_count(), jax.device_count(),
    )  # fmt: skip
