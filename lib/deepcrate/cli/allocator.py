"""The driver's memory allocator: large arrays go back to the system when they are freed.

glibc's malloc serves an allocation above its mmap threshold with a mapping of its own,
unmapped when freed, and a smaller one from an arena (one per thread), which keeps what is
freed for later. The threshold starts at 128 KB but rises to the size of every large block
freed, up to 32 MB: after the first large array is freed, arrays of a few MB (a catalogue's
song means through a layer, a block of scores) come from the arenas and stay there as they
grow with the catalogue. ``deepcrate train`` grew +96 MB from 2,000 to 10,000 songs so,
while the arrays it held (tracemalloc) did not grow; with the thresholds fixed, +11 MB. The
small arrays of a training step stay in the arenas, quick to reuse, and the rest goes back
(docs/benchmarks.md, "Training's driver").
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys

logger = logging.getLogger(__name__)

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's <malloc.h>
# Above a training step's arrays and a top-k search's blocks (256 x 1,024 scores and their
# positions: 3 MB); below a catalogue's per-song arrays from a few thousand songs on.
MMAP_THRESHOLD_BYTES = 4 * 2**20
# Fixing the mmap threshold also stops glibc raising the trim threshold with it (to twice the
# mmap threshold): an arena's free top was then given back and taken again at every step above
# 128 KB (the head trained ~15% slower). Twice, as glibc's own rule: a bound, not growth.
TRIM_THRESHOLD_BYTES = 2 * MMAP_THRESHOLD_BYTES


def return_large_arrays() -> bool:
    """Fix glibc's mmap and trim thresholds for this process; whether they were set (False off
    Linux, or with a C library without ``mallopt``, such as musl's, which ignores it)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    done = (mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1
            and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES) == 1)
    if not done:
        logger.debug("the C library did not take an mmap threshold: freed arrays may stay with the process")
    return done
