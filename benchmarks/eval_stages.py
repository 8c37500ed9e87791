"""eval.py's stages on the cached real-size run, with the process RSS after each.

    python benchmarks/real_size.py --shape 1.7b      # once: builds the checkpoint and the run
    python benchmarks/eval_stages.py                 # load, place, lower, compile, first call

Calls the library functions in eval.py's order (malloc tuned first, as eval.py does) and prints
RSS and peak RSS (ru_maxrss) after each stage: where evaluation's memory goes
(benchmarks/NOTES.md, "eval.py at 1.7B").
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import common

from jaxcls.runtime import tune_malloc

DEFAULT_RUN = Path.home() / ".cache" / "jaxcls" / "real_size" / "work" / "run"


def current_rss_bytes() -> int:
    """The process's resident set now (VmRSS of /proc/self/status)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status (Linux only)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default=str(DEFAULT_RUN), help="a training run dir")
    parser.add_argument("--data", default="", help="labelled file (default: RUN/../data/test.csv)")
    args = parser.parse_args()
    tune_malloc()
    import jax

    from jaxcls.data import batches
    from jaxcls.train import sharding
    from jaxcls.train.restore import load_run

    start = time.perf_counter()

    def mark(stage: str) -> None:
        rss = current_rss_bytes() / 1e9
        peak = common.peak_rss_mb() * 2**20 / 1e9
        print(
            f"{stage:24s} rss {rss:5.2f} GB  peak {peak:5.2f} GB  "
            f"{time.perf_counter() - start:6.1f} s"
        )

    mark("imports")
    workdir = Path(args.run)
    run, _ = load_run(workdir, "best")
    mark("load_run")
    cfg = run.cfg
    mesh = sharding.make_mesh(cfg.devices, cfg.mesh.fsdp)
    frozen = run.place_base(mesh)
    mark("base placed")
    data = args.data or str(workdir.parent / "data" / "test.csv")
    dataset = run.dataset(run.read_table(data))
    batch = next(batches.eval_batches(dataset, cfg.train.eval_batch_size, run.pad_id,
                                      cfg.data.max_length))  # fmt: skip
    step = run.eval_step(mesh)
    arguments = (sharding.put_params(run.trainable, mesh), frozen, sharding.put_batch(batch, mesh))
    lowered = step.lower(*arguments)
    mark("lowered")
    compiled = lowered.compile()
    mark("compiled")
    print(compiled.memory_analysis())
    jax.block_until_ready(compiled(*arguments))
    mark("first call")


if __name__ == "__main__":
    main()
