"""A list column read into one matrix in a given song order, batch by batch (ArrowTables.matrix)."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from deepcrate.errors import WarehouseError
from deepcrate.storage.arrow_tables import ArrowTables

from helpers import file_backed

pytestmark = pytest.mark.unit


def _tables(tmp_path, parts: list[dict]) -> ArrowTables:
    """Table ``t`` of ``parts`` (one Parquet file each), read as a run's staged tables are."""
    folder = tmp_path / "t"
    folder.mkdir()
    for number, part in enumerate(parts):
        pq.write_table(pa.table(part), folder / f"part-{number}.parquet", row_group_size=7)
    (folder / "_SUCCESS").write_text("")
    return ArrowTables(str(tmp_path), None, folder_of=lambda name: str(tmp_path / name))


def test_a_column_is_read_into_one_matrix_in_the_order_of_the_keys(tmp_path):
    rng = np.random.default_rng(0)
    songs = [f"song-{i:03d}" for i in range(100)]
    vectors = {song: rng.normal(size=5) for song in songs}
    order = rng.permutation(100)  # the table's rows in no particular order, over 3 files
    parts = [{"song_id": [songs[i] for i in chunk], "v": pa.array([vectors[songs[i]] for i in chunk],
                                                                    pa.list_(pa.float64()))}
             for chunk in np.array_split(order, 3)]
    tables = _tables(tmp_path, parts)
    keys = [songs[i] for i in rng.permutation(100)[:40]]  # some songs, in another order

    matrix = tables.matrix("t", "v", keys=pa.array(keys))

    assert matrix.shape == (40, 5) and matrix.dtype == np.float32 and file_backed(matrix)
    np.testing.assert_array_equal(matrix, np.stack([vectors[song] for song in keys]).astype(np.float32))
    exact = tables.matrix("t", "v", keys=pa.array(keys), dtype=np.float64)
    np.testing.assert_array_equal(exact, np.stack([vectors[song] for song in keys]))
    # A row group at a time (of 7 rows here): each block's rows at their keys' positions, every key once.
    blocks = list(tables.matrix_blocks("t", "v", keys=pa.array(keys), dtype=np.float64))
    assert len(blocks) > 5 and all(len(rows) <= 7 for rows, _ in blocks)
    positions = np.concatenate([rows for rows, _ in blocks])
    assert sorted(positions) == list(range(40))
    for rows, values in blocks:
        np.testing.assert_array_equal(values, np.stack([vectors[keys[i]] for i in rows]))


def test_a_missing_song_a_null_list_or_lists_of_two_lengths_are_refused_in_one_line(tmp_path):
    vector = pa.list_(pa.float32())
    tables = _tables(tmp_path, [{"song_id": ["a", "b"], "v": pa.array([[1, 2], None], vector)},
                                {"song_id": ["c"], "v": pa.array([[1, 2, 3]], vector)}])
    with pytest.raises(WarehouseError, match=r"table t in .*: no row for 1 of 2 songs \(e.g. zz\)"):
        tables.matrix("t", "v", keys=pa.array(["a", "zz"]))
    with pytest.raises(WarehouseError, match="1 rows without v"):
        tables.matrix("t", "v", keys=pa.array(["a", "b"]))
    with pytest.raises(WarehouseError, match="v of 3 and of 2 values"):
        tables.matrix("t", "v", keys=pa.array(["a", "c"]))
    assert tables.matrix("t", "v", keys=pa.array([], pa.string())).shape == (0, 0)
