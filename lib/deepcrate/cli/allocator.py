"""The driver's memory allocator: large arrays go back to the system when they are freed.

glibc's malloc serves an allocation above its mmap threshold with a mapping of its own,
unmapped when freed, and a smaller one from an arena (one per thread), which keeps what is
freed for later. The threshold starts at 128 KB but rises to the size of every large block
freed, up to 32 MB: after the first large array is freed, arrays of a few MB (a catalogue's
song means through a layer, a block of scores) come from the arenas and stay there as they
grow with the catalogue. ``deepcrate train`` grew +96 MB from 2,000 to 10,000 songs so,
while the arrays it held (tracemalloc) did not grow. A fixed threshold keeps the small
arrays of a training step in the arenas, quick to reuse, and returns the rest
(docs/benchmarks.md, "Training's driver").
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys

logger = logging.getLogger(__name__)

M_MMAP_THRESHOLD = -3  # glibc's <malloc.h>
MMAP_THRESHOLD_BYTES = 4 * 2**20  # a training step's arrays are below it (128 x 400 floats: 200 KB)


def return_large_arrays() -> bool:
    """Fix glibc's mmap threshold at :data:`MMAP_THRESHOLD_BYTES` for this process; whether it was
    set (False off Linux, or with a C library without ``mallopt``, such as musl's, which ignores it)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    done = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1
    if not done:
        logger.debug("the C library did not take an mmap threshold: freed arrays may stay with the process")
    return done
