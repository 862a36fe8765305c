"""Training's reader of stored pretrained features: a split within a budget of slices, streamed."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from deepcrate.errors import TrainingError
from deepcrate.models import feature_reader
from deepcrate.models.feature_reader import FeatureTable, chosen_slices

from helpers import file_backed

pytestmark = pytest.mark.unit
WIDTH = 4


def _songs(counts: dict[str, int], *, split: str = "train", genre: str = "rock") -> pa.Table:
    return pa.table({"song_id": list(counts), "genre": [genre] * len(counts), "split": [split] * len(counts),
                     "n_slices": pa.array(list(counts.values()), pa.int32())})


def test_every_slice_is_chosen_when_the_split_fits_the_budget():
    keys = chosen_slices(_songs({"a": 3, "b": 1}), budget=4)
    assert sorted(zip(keys.column("song_id").to_pylist(), keys.column("slice_idx").to_pylist())) == [
        ("a", 0), ("a", 1), ("a", 2), ("b", 0)]


def test_over_budget_every_song_gives_the_same_number_of_slices_spread_along_it():
    keys = chosen_slices(_songs({"long": 100, "mid": 10, "short": 2}), budget=20)
    chosen = {}
    for song, index in zip(keys.column("song_id").to_pylist(), keys.column("slice_idx").to_pylist()):
        chosen.setdefault(song, []).append(index)
    # 9 each fits (9 + 9 + 2 = 20); 10 would not: the short song keeps both of its slices
    assert {song: len(indices) for song, indices in chosen.items()} == {"long": 9, "mid": 9, "short": 2}
    assert chosen["long"] == [5, 16, 27, 38, 50, 61, 72, 83, 94]  # the middle of each ninth of the song
    assert chosen["mid"] == [0, 1, 2, 3, 5, 6, 7, 8, 9]
    assert chosen_slices(_songs({"a": 5, "b": 5, "c": 5}), budget=2).num_rows == 3  # one per song at least


def _tables(tmp_path, songs: pa.Table, *, skip: set[tuple[str, int]] = frozenset()):
    rng = np.random.default_rng(0)
    rows, expected = [], {}
    for song, n in zip(songs.column("song_id").to_pylist(), songs.column("n_slices").to_pylist()):
        for index in range(n):
            vector = rng.normal(size=WIDTH).astype("<f4")
            expected[(song, index)] = vector
            if (song, index) not in skip:
                rows.append((song, index, vector.tobytes()))
    rng.shuffle(rows)  # the table's rows in no particular order, over several files
    for part in range(3):
        chunk = rows[part::3]
        pq.write_table(pa.table({"song_id": [r[0] for r in chunk], "slice_idx": pa.array([r[1] for r in chunk], pa.int32()),
                                 "features": pa.array([r[2] for r in chunk], pa.binary())}),
                       tmp_path / f"features-{part}.parquet")
    pq.write_table(songs, tmp_path / "songs.parquet")
    files = [str(tmp_path / f"features-{part}.parquet") for part in range(3)]
    return ds.dataset(files), ds.dataset(str(tmp_path / "songs.parquet")), expected


def test_a_split_is_streamed_within_its_budget_and_sorted_by_song_and_slice(tmp_path, monkeypatch):
    monkeypatch.setattr(feature_reader, "_BATCH_ROWS", 5)  # many batches
    songs = pa.concat_tables([_songs({"s2": 12, "s1": 7}, genre="jazz"), _songs({"s3": 4}, genre="rock"),
                              _songs({"v1": 6}, split="validation")])
    features, songs_dataset, expected = _tables(tmp_path, songs)
    table = FeatureTable(features, songs_dataset, width=WIDTH, uri="t", max_slices=10)
    train = table.split("train", labels=["rock", "jazz"])
    # the most slices a song that keeps the total within 10
    quota = max(q for q in range(1, 13) if sum(min(n, q) for n in (12, 7, 4)) <= 10)
    assert quota == 3
    chosen = ([("s1", int((k + 0.5) * 7 / 3)) for k in range(3)] + [("s2", int((k + 0.5) * 12 / 3)) for k in range(3)]
              + [("s3", int((k + 0.5) * 4 / 3)) for k in range(3)])
    assert list(train.song_ids) == [song for song, _ in chosen]
    np.testing.assert_array_equal(train.features, np.stack([expected[key] for key in chosen]))
    assert file_backed(train.features)  # the page cache holds the slices, not the driver
    assert train.labels.tolist() == [1] * 6 + [0] * 3  # jazz is labels[1]
    assert table.split("train", labels=["rock"]).song_ids.tolist() == ["s3"] * 4  # alone, its 4 slices fit
    unlabelled = table.split("validation", labels=None)
    assert unlabelled.labels.tolist() == [-1] * 6 and list(unlabelled.song_ids) == ["v1"] * 6
    assert table.split("test", labels=["rock"]).features.shape == (0, WIDTH)  # a split without songs


def test_slices_without_stored_features_are_refused(tmp_path):
    features, songs, _ = _tables(tmp_path, _songs({"a": 3}), skip={("a", 1)})
    with pytest.raises(TrainingError, match="^t: 1 train slices have no pretrained features"):
        FeatureTable(features, songs, width=WIDTH, uri="t", max_slices=100).split("train", labels=None)


def test_stored_features_are_read_from_arrow_as_from_their_bytes():
    from deepcrate.errors import WarehouseError
    from deepcrate.models.pretrained_runtime import from_arrow, from_bytes

    rows = [np.random.default_rng(n).normal(size=WIDTH).astype("<f4").tobytes() for n in range(7)]
    column = pa.chunked_array([pa.array(rows[:3], pa.binary()), pa.array(rows[3:], pa.binary()).slice(1)])
    expected = from_bytes(rows[:3] + rows[4:], width=WIDTH, where="t")
    np.testing.assert_array_equal(from_arrow(column, width=WIDTH, where="t"), expected)
    assert from_arrow(pa.chunked_array([], pa.binary()), width=WIDTH, where="t").shape == (0, WIDTH)
    with pytest.raises(WarehouseError, match=f"^t: stored features are not {WIDTH} float32 values a row$"):
        from_arrow(pa.array([rows[0], rows[1][:-4]], pa.binary()), width=WIDTH, where="t")
