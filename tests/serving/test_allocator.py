"""cxr.serving.allocator.keep_heap: glibc takes the thresholds, and refuses (reported, not raised) what it cannot take.

Each check runs in a fresh interpreter: the thresholds are the whole process's.
"""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")


def _keep_heap(*args: int) -> str:
    code = f"from cxr.serving.allocator import keep_heap; print(keep_heap({', '.join(map(str, args))}))"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()


def test_glibc_takes_the_thresholds():
    assert _keep_heap() == "True"


FAULTS = """
import ctypes, resource, sys
from cxr.serving.allocator import keep_heap
if sys.argv[1] == "keep":
    keep_heap()
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, (ctypes.c_size_t,)
libc.free.argtypes = (ctypes.c_void_p,)
n = 8 << 20  # a decoded film's float copy
faults = []
for _ in range(3):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    p = libc.malloc(n)
    ctypes.memset(p, 1, n)
    libc.free(p)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(faults[1])
"""


def _second_request_faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", FAULTS, mode], capture_output=True, text=True, check=True).stdout
    return int(out)


def test_a_freed_buffer_is_reused_without_faulting_again():
    # glibc's default: the first 8 MiB block is mapped and unmapped, the second comes from a heap that
    # grows for it (2048 fresh pages); with keep_heap the second reuses the first's pages.
    pages = (8 << 20) // 4096
    assert _second_request_faults("default") > pages // 2
    assert _second_request_faults("keep") < pages // 20
