"""Process settings that make the entry points faster: glibc malloc tuning for XLA:CPU."""

from __future__ import annotations

import ctypes
import os
import platform

# <malloc.h> parameter numbers (man 3 mallopt).
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8
_KEEP_FREED_BYTES = 2**31 - 1


def tune_malloc() -> bool:
    """One glibc malloc arena, no mmap for large blocks, freed memory kept for reuse.

    XLA:CPU allocates each execution's scratch buffer (1.3 GB for a step of the cpu-small
    benchmark) on a worker thread and frees it when the step ends. glibc serves a block that
    large from a fresh mmap and unmaps it on free, so every step the kernel faults in and
    zeroes every page again: a tenth of a training step's time on CPU. With these settings
    the block is reused from the heap. Effective only before JAX creates its CPU client
    (threads bind to an arena on their first allocation), so the entry points call it first.
    Returns whether the settings were applied: not where the C library is not glibc, or
    where ``JAXCLS_TUNE_MALLOC=0``.
    """
    if os.environ.get("JAXCLS_TUNE_MALLOC", "1") == "0":
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    mallopt = ctypes.CDLL(None).mallopt
    settings = ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, _KEEP_FREED_BYTES))
    return all(mallopt(param, value) == 1 for param, value in settings)
