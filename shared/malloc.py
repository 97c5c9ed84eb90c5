"""Make freed large allocations go back to the operating system (glibc only; a no-op elsewhere).

glibc serves an allocation of at least M_MMAP_THRESHOLD with its own mmap and unmaps it on free,
but it raises that threshold to the size of every such block freed (up to 32 MiB). After the
first photo, Pillow's 16 MiB image blocks and numpy's planes are then carved from the heap of the
thread that asked, and stay resident there: with 2 threads per worker, each thread's heap keeps
its largest photo, and a worker holds twice what its megapixel budget allows (measured 550 MB
for a 40 MP budget of 458 MB). A fixed threshold turns the dynamic raise off, so every block of
1 MiB or more is returned the moment it is freed.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging

M_MMAP_THRESHOLD = -3
DEFAULT_THRESHOLD = 1 << 20

log = logging.getLogger("fashion.startup")


def return_large_blocks(threshold: int = DEFAULT_THRESHOLD) -> bool:
    """Fix glibc's mmap threshold at `threshold` bytes for this process; False where unavailable."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    ok = bool(mallopt(M_MMAP_THRESHOLD, threshold))
    if not ok:
        log.warning("mallopt(M_MMAP_THRESHOLD) failed: freed photos may stay resident")
    return ok
