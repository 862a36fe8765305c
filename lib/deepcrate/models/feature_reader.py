"""The ``pretrained_features`` table read in this process, per split, for the head's training.

The table holds no split or genre (they belong to songs, and a repair of the split
would otherwise leave it stale): they come from the ``songs`` table. A split is read with a
budget of slices, spread evenly over its songs, and the features table is streamed batch by
batch keeping only those rows, so the memory training needs stays flat however large the
catalogue grows. Rows come back sorted by song and slice, so a training run sees the same
order whichever files the table's rows sit in.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from deepcrate.errors import TrainingError
from deepcrate.models.pretrained_runtime import from_arrow
from deepcrate.row_groups import row_group_batches
from deepcrate.vectors.scratch import scratch_array

logger = logging.getLogger(__name__)

_BATCH_ROWS = 8192  # features rows decoded at once while streaming the table (~13 MB at 400 floats)


@dataclass
class SliceFeatures:
    """A split's pretrained features (n, d), label indices (n,) and song ids (n,)."""

    features: np.ndarray
    labels: np.ndarray
    song_ids: np.ndarray


class FeatureTable:
    """The stored features of every slice, read a split at a time with each slice's genre.

    Parameters
    ----------
    features, songs : pyarrow.dataset.Dataset
        The ``pretrained_features`` and ``songs`` tables' files.
    width : int
        Features per slice (the table's metadata).
    uri : str
        Where the features table is, for messages.
    max_slices : int
        At most this many slices of a split are read (more only where a split has more
        songs: one slice each).
    """

    def __init__(self, features: ds.Dataset, songs: ds.Dataset, *, width: int, uri: str, max_slices: int) -> None:
        self._features = features
        self._songs = songs
        self.width = width
        self.uri = uri
        self.max_slices = max_slices

    def split(self, split: str, *, labels: Sequence[str] | None) -> SliceFeatures:
        """The slices of ``split`` whose genre is one of ``labels`` (labelled by position), or every
        slice of it when ``labels`` is None (labels -1); at most :attr:`max_slices` of them, evenly
        spread over each song.

        Raises
        ------
        TrainingError
            Slices of the split have no stored features (the table is older than the slices).
        """
        condition = ds.field("split") == split
        if labels is not None:
            condition = condition & ds.field("genre").isin(list(labels))
        songs = self._songs.to_table(columns=["song_id", "genre", "n_slices"], filter=condition)
        keys = chosen_slices(songs, budget=self.max_slices)
        total = int(pc.sum(songs.column("n_slices")).as_py() or 0)
        if keys.num_rows < total:
            logger.info("%s split: %d of its %d slices read (train.head_max_slices), evenly over its %d songs",
                        split, keys.num_rows, total, songs.num_rows)
        keys = keys.take(pc.sort_indices(keys, sort_keys=[("song_id", "ascending"), ("slice_idx", "ascending")]))
        pa.default_memory_pool().release_unused()  # the unsorted keys: Arrow's allocator keeps them otherwise
        features, found = self._rows_of(keys)
        if found < keys.num_rows:
            raise TrainingError(f"{self.uri}: {keys.num_rows - found} {split} slices have no pretrained "
                                f"features (the table is older than the slices): run deepcrate features, or rebuild")
        if labels is None:
            label_idx = np.full(keys.num_rows, -1, dtype=np.int32)
        else:
            label_idx = pc.index_in(keys.column("genre"), value_set=pa.array(list(labels), pa.string()))
            label_idx = label_idx.to_numpy(zero_copy_only=False).astype(np.int32)
        return SliceFeatures(features=features, labels=label_idx, song_ids=_one_string_per_song(keys.column("song_id")))

    def _rows_of(self, keys: pa.Table) -> tuple[np.ndarray, int]:
        """The features of the slices ``keys`` (sorted by song and slice) names, streamed into one
        array in the keys' order (no list of parts, no sorted copy: the features are held once,
        in a scratch file, :func:`deepcrate.vectors.scratch.scratch_array`: the page cache holds
        them while memory allows, not the process); and how many were found."""
        features = scratch_array((keys.num_rows, self.width), np.float32)
        found = np.zeros(keys.num_rows, dtype=bool)
        if not keys.num_rows:
            return features, 0
        songs = pc.unique(keys.column("song_id"))  # in the keys' order: sorted
        wanted = _slice_codes(keys, songs)
        # One row group at a time: a dataset scanner reads ahead through a file (its memory grew
        # with the table: +272 MB at 10,000 songs against +132 at 2,000, bench/catalogue_memory.py)
        for batch in row_group_batches(self._features, ["song_id", "slice_idx", "features"], batch_rows=_BATCH_ROWS):
            if not batch.num_rows:
                continue
            codes = _slice_codes(batch, songs)
            rows = np.minimum(np.searchsorted(wanted, codes), len(wanted) - 1)
            kept = wanted[rows] == codes
            if kept.any():
                rows = rows[kept]
                features[rows] = from_arrow(batch.column("features").filter(pa.array(kept)), width=self.width,
                                            where=self.uri)
                found[rows] = True
        return features, int(found.sum())


def _one_string_per_song(song_ids: pa.ChunkedArray) -> np.ndarray:
    """The song ids as an object array whose rows of one song share one Python string (not one a slice:
    ~80 bytes each, 20 MB at 266,000 slices)."""
    encoded = pc.dictionary_encode(song_ids.combine_chunks())
    return encoded.dictionary.to_numpy(zero_copy_only=False)[encoded.indices.to_numpy(zero_copy_only=False)]


def _slice_codes(rows: pa.Table | pa.RecordBatch, songs: pa.Array) -> np.ndarray:
    """One int64 per row: its song's position in ``songs`` (-1: not there) and its slice, ordered as
    (song, slice) are."""
    song = pc.index_in(rows.column("song_id"), value_set=songs).fill_null(-1).to_numpy(zero_copy_only=False)
    return (song.astype(np.int64) << 32) | rows.column("slice_idx").to_numpy(zero_copy_only=False).astype(np.int64)


def chosen_slices(songs: pa.Table, *, budget: int) -> pa.Table:
    """(song_id, slice_idx, genre) of at most ``budget`` slices of ``songs`` (with ``n_slices``):
    every slice when they fit; else the same number from each song (fewer where a song has
    fewer), evenly spaced along it, and at least one per song."""
    counts = songs.column("n_slices").to_numpy(zero_copy_only=False).astype(np.int64)
    per_song = _per_song_quota(counts, budget=budget)
    taken = np.minimum(counts, per_song)
    song_rows = np.repeat(np.arange(len(counts)), taken)
    slice_idx = np.concatenate([_evenly(int(n), int(k)) for n, k in zip(counts, taken)]) if len(counts) else []
    return pa.table({"song_id": songs.column("song_id").take(pa.array(song_rows, pa.int64())),
                     "slice_idx": pa.array(slice_idx, pa.int32()),
                     "genre": songs.column("genre").take(pa.array(song_rows, pa.int64()))})


def _per_song_quota(counts: np.ndarray, *, budget: int) -> int:
    """The largest per-song number of slices whose total stays within ``budget`` (at least 1)."""
    if counts.sum() <= budget:
        return int(counts.max()) if len(counts) else 0
    low, high = 1, int(counts.max())
    while low < high:  # the total of min(count, q) grows with q
        middle = (low + high + 1) // 2
        if np.minimum(counts, middle).sum() <= budget:
            low = middle
        else:
            high = middle - 1
    return low


def _evenly(n: int, k: int) -> np.ndarray:
    """``k`` of the slice indices ``0 .. n-1``, one from the middle of each of ``k`` equal stretches
    of the song (all of them when ``k >= n``)."""
    if k >= n:
        return np.arange(n)
    return np.floor((np.arange(k) + 0.5) * n / k).astype(np.int64)
