"""Keep a Triton Python stub's heap between requests (glibc ``mallopt``).

Measured on the served cpu-demo (benchmarks/README.md, "Where the served default's
overhead came from"): the ``preprocess`` stub took ~1,500 minor page faults per request
where the same decode + letterbox in a loop takes ~100, and ran 40 % slower for it
(12.6 ms against 8.8).  Each request's multi-megabyte buffers (the decoded 16-bit film,
its float copies) were handed back to the kernel when freed and faulted in again, page
by page and zeroed, by the next request: glibc's dynamic thresholds adapt to a tight
loop but not to a stub whose allocations interleave with the IPC's.  Fixing the
thresholds keeps those pages in the process: faults fell to 0-100 per request.

Bounded: only blocks below :data:`MMAP_THRESHOLD` come from the heap (a larger film's
buffers are still mapped and unmapped), and the heap keeps at most
:data:`TRIM_THRESHOLD` of free space at its top, so a stub's resident memory stays at
its peak working set, not at the largest study it ever saw.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

# glibc's malloc.h
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc's own ceiling for its dynamic threshold on 64-bit (DEFAULT_MMAP_THRESHOLD_MAX)
TRIM_THRESHOLD = 256 * 1024 * 1024


def keep_heap(mmap_threshold: int = MMAP_THRESHOLD, trim_threshold: int = TRIM_THRESHOLD) -> bool:
    """Fix glibc's mmap and trim thresholds in this process; False where the C library is not glibc.

    Call once, at a stub's ``initialize``: it changes the whole process's allocator, which
    is the stub's own (never call it in a user's process: :class:`~cxr.serving.pipeline.Pipeline`
    does not).
    """
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        log.info("keep_heap: no glibc mallopt here (%s); the allocator keeps its defaults", name)
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    done = bool(mallopt(M_MMAP_THRESHOLD, mmap_threshold)) and bool(mallopt(M_TRIM_THRESHOLD, trim_threshold))
    if not done:
        log.warning("keep_heap: glibc refused mallopt(%d, %d); the allocator keeps its defaults", mmap_threshold,
                    trim_threshold)
    return done
