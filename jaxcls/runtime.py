"""Process settings that make the entry points faster: glibc malloc tuning for XLA:CPU."""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import platform
from collections.abc import Iterator

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
    global _tuned
    mallopt = ctypes.CDLL(None).mallopt
    settings = ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, _KEEP_FREED_BYTES))
    _tuned = all(mallopt(param, value) == 1 for param, value in settings)
    return _tuned


_tuned = False
_DEFAULT_MMAP_MAX = 65536


@contextlib.contextmanager
def large_blocks_unmapped_on_free() -> Iterator[None]:
    """While loading a model, large blocks come from mmap again (freed blocks go back).

    Under ``tune_malloc`` every block comes from the heap, and a freed block stays resident
    until a later allocation fits in it. Reading a checkpoint and rearranging it allocates
    and frees gigabytes of differently sized arrays, which fragmented the heap: peak RSS of
    a Qwen3-1.7B run 9.4 GB instead of about 5 (NOTES.md, real size). The step's scratch,
    allocated after the block, still comes from the heap.
    """
    libc = ctypes.CDLL(None) if _tuned else None
    if libc is not None:
        _collect_and_trim(libc)  # whatever earlier work left free, before the peak
        libc.mallopt(_M_MMAP_MAX, _DEFAULT_MMAP_MAX)
    try:
        yield
    finally:
        if libc is not None:
            libc.mallopt(_M_MMAP_MAX, 0)
            _collect_and_trim(libc)


def _collect_and_trim(libc: ctypes.CDLL) -> None:
    """Free unreachable reference cycles (restoring a checkpoint leaves some that hold
    arrays), then return the heap's free pages to the system."""
    gc.collect()
    libc.malloc_trim(0)


def release_freed_memory() -> None:
    """Return the heap's free pages to the system (``malloc_trim``) under ``tune_malloc``.

    For after a one-off burst such as an XLA compilation, whose freed memory would otherwise
    stay resident until reused.
    """
    if _tuned:
        ctypes.CDLL(None).malloc_trim(0)
