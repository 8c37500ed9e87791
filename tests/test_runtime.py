"""jaxcls.runtime.tune_malloc: a large block freed on a worker thread is reused, not re-faulted.

XLA:CPU allocates each step's scratch on a worker thread and frees it at the end; the test
does the same with libc's malloc/free in a fresh interpreter and counts the page faults of
the second allocation (ru_minflt): every page again with glibc's defaults, none when tuned.
"""

import json
import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only"
)

SCRIPT = r"""
import ctypes, json, resource, sys, threading
from jaxcls.runtime import tune_malloc

applied = tune_malloc()
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
SIZE = 256 * 2**20
faults = []

def scratch():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    block = libc.malloc(SIZE)
    ctypes.memset(block, 1, SIZE)
    libc.free(block)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)

for _ in range(2):
    worker = threading.Thread(target=scratch)
    worker.start()
    worker.join()
print(json.dumps({"applied": applied, "faults": faults}))
"""


def run(env_value: str) -> dict:
    env = {**os.environ, "JAXCLS_TUNE_MALLOC": env_value}
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_tuned_malloc_reuses_a_freed_block_without_page_faults():
    pages = 256 * 2**20 // os.sysconf("SC_PAGE_SIZE")
    default, tuned = run("0"), run("1")
    assert default["applied"] is False and tuned["applied"] is True
    assert default["faults"][1] > pages // 2  # glibc's default: a fresh mmap every time
    assert tuned["faults"][1] < pages // 50  # tuned: the heap block is reused
