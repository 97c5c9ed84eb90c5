"""Make freed buffers of 1 MiB or more go back to the operating system (glibc only; a no-op
elsewhere).

glibc serves an allocation of at least M_MMAP_THRESHOLD bytes with its own mmap and unmaps it on
free, but by default it raises that threshold to the size of every such block freed (up to
32 MiB). After the first photo, Pillow's 16 MiB image blocks and the models' activations were
then carved from the heap of the thread that asked, and stayed resident there: with 2 threads
per worker, each thread's heap kept its largest photo, and a worker held more than its megapixel
budget allows (550 MB for a 40 MP budget of 458 MB).

Fixing the threshold turns the raise off. The price: a model run page-faults its activations
afresh each time (~7 % on the real-size cloth model, 7.2 s instead of 6.7 s; the tiny test
models, whose compute is almost nothing, take twice as long). Measured alternatives: 32 MiB
kept 13 bytes a pixel for a 6 MP photo and 1.3 GB per worker after warm-up instead of 0.67 GB.
Set MALLOC_MMAP_THRESHOLD_ in the environment to choose another value; it is then left alone.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging

M_MMAP_THRESHOLD = -3
DEFAULT_THRESHOLD = 1 << 20

log = logging.getLogger("fashion.startup")


def return_large_blocks(threshold: int = DEFAULT_THRESHOLD, *, preset: int | None = None) -> bool:
    """Fix glibc's mmap threshold at `threshold` bytes for this process; False where unavailable
    or where `preset` (MALLOC_MMAP_THRESHOLD_, ServerSettings.malloc_mmap_threshold) already set
    it: glibc reads that variable itself at start."""
    if preset is not None:
        return False
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
