"""Scratch arrays: the head's training data in a temporary file's pages, not the driver's own memory."""
from __future__ import annotations

import re
import tempfile
from pathlib import Path

import numpy as np
import pytest

from deepcrate.vectors.scratch import scratch_array

from helpers import file_backed

pytestmark = pytest.mark.unit


def anonymous_mb() -> float:
    """This process's anonymous resident memory: what it holds itself, not file pages it maps."""
    return int(re.search(r"^RssAnon:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.MULTILINE).group(1)) / 1024


def test_a_scratch_array_is_a_zeroed_writable_array_that_holds_what_is_written():
    array = scratch_array((1000, 7), np.float32)
    assert array.shape == (1000, 7) and array.dtype == np.float32 and array.flags.writeable
    assert not array.any()
    values = np.random.default_rng(0).normal(size=(1000, 7)).astype(np.float32)
    array[:] = values
    np.testing.assert_array_equal(array[np.array([999, 3, 3])], values[[999, 3, 3]])
    assert type(array[::2] * 2) is np.ndarray and file_backed(array)
    assert scratch_array((0, 7)).shape == (0, 7) and not file_backed(scratch_array((0, 7)))


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads Linux's /proc")
def test_writing_a_scratch_array_does_not_grow_the_process_own_memory():
    size = (64 * 2**20 // 4 // 256, 256)  # 64 MB of float32
    before = anonymous_mb()
    array = scratch_array(size)
    array[:] = 1.0
    written = anonymous_mb() - before
    assert float(array[::1024].sum()) == size[0] // 1024 * 256
    del array
    # the same written to an ordinary array: the measure does see 64 MB of anonymous memory
    before = anonymous_mb()
    ordinary = np.ones(size, np.float32)
    held = anonymous_mb() - before
    assert held > 60 and written < 8, (held, written)
    del ordinary


def test_the_scratch_file_has_no_name_in_the_temporary_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    array = scratch_array((100, 4))
    array[:] = 2.0
    assert list(tmp_path.iterdir()) == []  # nothing to clean up, even after a crash
    assert float(array.sum()) == 800.0
