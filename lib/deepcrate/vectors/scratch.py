"""Arrays kept in a temporary file instead of the process's own memory.

What the head's training holds per slice (the features it learns from, their activations)
grows with the slices it reads. Held in a mapped temporary file, those pages are the
kernel's page cache: kept in memory while there is room, so the training runs as fast as
from ordinary arrays, written to disk and dropped when memory runs short, instead of
raising the process's own (anonymous) memory with every slice. The file has no name
(``tempfile.TemporaryFile``: ``O_TMPFILE`` on Linux), so nothing is left behind, even by a
process that is killed; it lies in the temporary directory (``TMPDIR``).
"""
from __future__ import annotations

import mmap
import tempfile

import numpy as np


def scratch_array(shape: tuple[int, ...], dtype: np.dtype | type = np.float32) -> np.ndarray:
    """A zero-filled writable array of ``shape`` backed by an unnamed temporary file.

    The mapping lives as long as the array (and any view of it) does. An empty shape gives an
    ordinary empty array (a mapping cannot be empty).
    """
    size = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
    if not size:
        return np.zeros(shape, dtype)
    with tempfile.TemporaryFile(prefix="deepcrate-scratch-") as file:
        file.truncate(size)  # a sparse file: reads as zeros, takes disk only where written
        mapped = mmap.mmap(file.fileno(), size)  # the mapping holds its own reference to the file
    return np.frombuffer(mapped, dtype=dtype).reshape(shape)
