"""Multi-host start-up: ``jax.distributed.initialize`` when the config or environment asks."""

from __future__ import annotations

import logging
import os
from typing import Any

import jax

log = logging.getLogger("jaxcls")

# Variables through which cluster launchers (and our own tests) describe a multi-process job.
ENV_COORDINATOR = "JAX_COORDINATOR_ADDRESS"


def maybe_initialize(cfg: Any) -> None:
    """Join a multi-process job if ``distributed.coordinator`` or the environment names one."""
    dist = cfg.distributed
    coordinator = dist.coordinator or os.environ.get(ENV_COORDINATOR, "")
    if not coordinator:
        return
    kwargs = {"coordinator_address": coordinator}
    if dist.num_processes > 0:
        kwargs["num_processes"] = int(dist.num_processes)
    if dist.process_id >= 0:
        kwargs["process_id"] = int(dist.process_id)
    jax.distributed.initialize(**kwargs)
    log.info("process %d of %d joined %s", jax.process_index(), jax.process_count(), coordinator)
