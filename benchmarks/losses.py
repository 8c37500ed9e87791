"""Milliseconds per call of the contrastive losses and their value_and_grad.

    python benchmarks/losses.py                      # batch 64, 256, 1024; feature dim 2048
    python benchmarks/losses.py --batch 128 --dim 1024 --repeats 20

Each function is jitted and warmed up (compiled) first; a row reports the median of
``--repeats`` timed calls, each ending in ``block_until_ready``. Prints a markdown table.
"""

import argparse
import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxcls.train import losses


def median_ms(fn, *args, repeats: int) -> float:
    """Median wall time of ``fn(*args)`` in ms, after one untimed (compiling) call."""
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[64, 256, 1024])
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()

    device = jax.devices()[0]
    print(
        f"jax {jax.__version__}, {device.platform} ({device.device_kind}), "
        f"{os.cpu_count()} CPU cores, {platform.processor() or platform.machine()}; "
        f"features float32 [B, {args.dim}], {args.classes} classes, "
        f"median of {args.repeats} calls\n"
    )
    print("| loss | batch | forward ms | value_and_grad ms |")
    print("|---|---:|---:|---:|")
    rng = np.random.default_rng(0)
    for name, fn in losses.CONTRASTIVE_LOSSES.items():
        for batch in args.batch:
            features = jnp.asarray(rng.normal(size=(batch, args.dim)), jnp.float32)
            labels = jnp.asarray(rng.integers(0, args.classes, batch))
            valid = jnp.ones((batch,), bool)
            forward = jax.jit(lambda f, y, v, fn=fn: fn(f, y, valid=v))
            both = jax.jit(jax.value_and_grad(lambda f, y, v, fn=fn: fn(f, y, valid=v)))
            fwd_ms = median_ms(forward, features, labels, valid, repeats=args.repeats)
            vg_ms = median_ms(both, features, labels, valid, repeats=args.repeats)
            print(f"| {name} | {batch} | {fwd_ms:.2f} | {vg_ms:.2f} |", flush=True)


if __name__ == "__main__":
    main()
