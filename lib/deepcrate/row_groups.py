"""Parquet read one row group at a time: a reader's memory is one group's, however large the table."""
from __future__ import annotations

from collections.abc import Iterator

import pyarrow as pa
import pyarrow.dataset as ds


def row_group_batches(dataset: ds.Dataset, columns: list[str], *, batch_rows: int = 8192) -> Iterator[pa.RecordBatch]:
    """The rows of ``dataset`` one Parquet row group at a time, nothing read ahead, Arrow's freed
    memory returned after each: a reader's memory is one row group's, however many the table has.

    A dataset scanner reads ahead within a file even with ``batch_readahead=1`` and
    ``fragment_readahead=1``, and Arrow's allocator keeps what it freed: reading a 134 MB
    column that way peaked at +148 MB above the process's start, one row group (27 MB) at a
    time at +106 MB, at 10,000 and at 40,000 songs alike (bench/catalogue_memory.py's tables).
    """
    pool = pa.default_memory_pool()
    for fragment in dataset.get_fragments():
        for row_group in fragment.split_by_row_group():
            yield from row_group.to_batches(columns=columns, batch_size=batch_rows, batch_readahead=0,
                                            fragment_readahead=0, use_threads=False)
            pool.release_unused()
