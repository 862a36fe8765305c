"""Stream the ``slices`` table from Parquet in batches, in a fixed amount of memory.

Training reads the table directly with pyarrow (no Spark, no copy of the table): the
row groups of the requested split are read a few at a time, interleaved, and pass
through a shuffle buffer of fixed size. pyarrow decodes a row group at once, and the
warehouse writes the slices in row groups of a fixed size
(:data:`deepcrate.storage.warehouse.ROW_GROUP_BYTES`), so memory depends on ``shuffle_buffer``
and ``interleave`` only, never on the size of the catalogue.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.fs

from deepcrate.errors import WarehouseError

logger = logging.getLogger(__name__)


@dataclass
class Batch:
    """Slices as numpy arrays: ``images`` (n, rows, frames) uint8, labels int32, song ids."""

    images: np.ndarray
    labels: np.ndarray
    song_ids: np.ndarray
    slice_idx: np.ndarray


class SliceTable:
    """The Parquet files of one ``slices`` table.

    Parameters
    ----------
    dataset : pyarrow.dataset.Dataset
        The table's files (``Warehouse.arrow.dataset(Table.SLICES)``).
    image_shape : (rows, frames)
        Every spectrogram must have ``rows * frames`` bytes.
    uri : str
        Where the table is, for messages and records.
    """

    def __init__(self, dataset: ds.Dataset, *, image_shape: tuple[int, int], uri: str) -> None:
        self.dataset = dataset
        self.uri = uri
        self.image_shape = image_shape

    def genre_counts(self) -> dict[str, dict[str | None, int]]:
        """Slices per split and genre (None: unlabelled), reading two small columns only."""
        table = self.dataset.to_table(columns=["split", "genre"])
        counts: dict[str, dict[str | None, int]] = {}
        grouped = table.group_by(["split", "genre"]).aggregate([([], "count_all")])
        for split, genre, count in zip(*(grouped.column(c).to_pylist() for c in ("split", "genre", "count_all"))):
            counts.setdefault(split, {})[genre] = count
        return counts

    def row_groups(self, *, split: str) -> list[ds.Fragment]:
        """The row groups that may hold rows of ``split`` (pruned by Parquet statistics)."""
        condition = ds.field("split") == split
        return [group for fragment in self.dataset.get_fragments(filter=condition)
                for group in fragment.split_by_row_group(filter=condition)]

    def batches(
        self, *, split: str, labels: Sequence[str] | None, batch_size: int
    ) -> Iterator[Batch]:
        """The rows of ``split`` in table order, ``batch_size`` at a time.

        With ``labels`` only rows whose genre is one of them are kept, labelled by
        their position in it; with ``None`` every row is kept (labels -1).
        """
        pending: list[Batch] = []
        held = 0
        for group in self.row_groups(split=split):
            for chunk in self._read(group, split=split, labels=labels, chunk_rows=batch_size):
                pending.append(chunk)
                held += len(chunk.labels)
                while held >= batch_size:
                    merged = _concat(pending)
                    yield _take(merged, slice(0, batch_size))
                    pending, held = [_take(merged, slice(batch_size, None))], held - batch_size
        if held:
            yield _concat(pending)

    def shuffled_batches(
        self,
        *,
        split: str,
        labels: Sequence[str],
        batch_size: int,
        buffer_size: int,
        interleave: int,
        seed: int,
    ) -> Iterator[Batch]:
        """Every labelled row of ``split`` once, in a random order drawn from ``seed``.

        Row groups are visited in a random order, ``interleave`` at a time, taking
        ``chunk`` rows from each in turn, so slices of one song spread over many
        batches; a buffer of ``buffer_size`` slices mixes them further. Memory is
        bounded by the buffer plus ``interleave`` chunks.
        """
        rng = np.random.default_rng(seed)
        buffer = ShuffleBuffer(capacity=buffer_size, image_shape=self.image_shape, rng=rng)
        for chunk in self._interleaved(split=split, labels=labels, buffer_size=buffer_size, interleave=interleave,
                                       rng=rng):
            yield from buffer.add(chunk, batch_size=batch_size)
        yield from buffer.drain(batch_size=batch_size)

    def paired_batches(
        self, *, split: str, batch_size: int, buffer_size: int, interleave: int, seed: int
    ) -> Iterator[Batch]:
        """Batches of pairs for a label-free objective: rows 2i and 2i+1 are two slices of one song.

        Every row of ``split`` is read, labelled or not, in the random order of
        :meth:`shuffled_batches`; a song appears in a batch at most once (its other
        slices would be false negatives), so a batch holds at most as many pairs as
        there are songs in the buffer. A slice is used at most once per pass; a song's
        odd slice out is left over. Memory is bounded by ``buffer_size`` slices.
        """
        rng = np.random.default_rng(seed)
        buffer = ShuffleBuffer(capacity=buffer_size, image_shape=self.image_shape, rng=rng)
        for chunk in self._interleaved(split=split, labels=None, buffer_size=buffer_size, interleave=interleave,
                                       rng=rng):
            yield from buffer.add_for_pairs(chunk, pairs=batch_size // 2)
        yield from buffer.pairs(pairs=batch_size // 2, until_empty=True)

    def _interleaved(self, *, split: str, labels: Sequence[str] | None, buffer_size: int, interleave: int,
                     rng: np.random.Generator) -> Iterator[Batch]:
        """Chunks of the row groups of ``split`` in a random order, ``interleave`` groups in turn."""
        groups = self.row_groups(split=split)
        order = rng.permutation(len(groups))
        chunk_rows = max(16, min(256, buffer_size // max(interleave, 1) // 4))
        streams = (self._read(groups[i], split=split, labels=labels, chunk_rows=chunk_rows) for i in order)
        return _round_robin(streams, width=interleave)

    def _read(
        self, group: ds.Fragment, *, split: str, labels: Sequence[str] | None, chunk_rows: int
    ) -> Iterator[Batch]:
        condition = ds.field("split") == split
        if labels is not None:
            condition = condition & ds.field("genre").isin(list(labels))
        columns = ["song_id", "slice_idx", "genre", "spectrogram"]
        value_set = pa.array(list(labels) if labels is not None else [], pa.string())
        for record_batch in group.to_batches(columns=columns, filter=condition, batch_size=chunk_rows):
            if record_batch.num_rows == 0:
                continue
            if labels is None:
                label_idx = np.full(record_batch.num_rows, -1, dtype=np.int32)
            else:
                label_idx = pc.index_in(record_batch.column("genre"), value_set=value_set)
                label_idx = label_idx.to_numpy(zero_copy_only=False).astype(np.int32)
            yield Batch(
                images=_images(record_batch.column("spectrogram"), self.image_shape, where=self.uri),
                labels=label_idx,
                song_ids=record_batch.column("song_id").to_numpy(zero_copy_only=False),
                slice_idx=record_batch.column("slice_idx").to_numpy().astype(np.int32),
            )


class ShuffleBuffer:
    """A fixed-size pool of slices; emits random batches, refilled as it drains.

    When full, the pool is permuted and its first half is emitted as batches; the
    rest waits for new rows. Each row is emitted exactly once.
    """

    def __init__(self, *, capacity: int, image_shape: tuple[int, int], rng: np.random.Generator) -> None:
        if capacity < 1:
            raise ValueError("shuffle buffer capacity must be >= 1")
        self.capacity = capacity
        self.images = np.empty((capacity, *image_shape), dtype=np.uint8)
        self.labels = np.empty(capacity, dtype=np.int32)
        self.song_ids = np.empty(capacity, dtype=object)
        self.slice_idx = np.empty(capacity, dtype=np.int32)
        self.count = 0
        self.rng = rng

    def add(self, batch: Batch, *, batch_size: int) -> Iterator[Batch]:
        half = max(batch_size, (self.capacity // 2) // batch_size * batch_size)
        yield from self._fill(batch, when_full=lambda: self._emit(half, batch_size=batch_size))

    def add_for_pairs(self, batch: Batch, *, pairs: int) -> Iterator[Batch]:
        """Like :meth:`add`, emitting batches of pairs (see :meth:`pairs`) whenever the pool is full."""
        def when_full() -> Iterator[Batch]:
            emitted = list(self.pairs(pairs=pairs, until_empty=False))
            if not emitted:  # one song fills the pool (a tiny buffer): let the next ones in
                self._keep(self.rng.permutation(self.count)[self.count // 2:])
            yield from emitted

        yield from self._fill(batch, when_full=when_full)

    def _fill(self, batch: Batch, *, when_full: Callable[[], Iterator[Batch]]) -> Iterator[Batch]:
        """Copy ``batch`` into the pool, running ``when_full`` each time the pool fills up."""
        start, n = 0, len(batch.labels)
        while start < n:
            take = min(n - start, self.capacity - self.count)
            end = self.count + take
            for name in ("images", "labels", "song_ids", "slice_idx"):
                getattr(self, name)[self.count:end] = getattr(batch, name)[start:start + take]
            self.count, start = end, start + take
            if self.count == self.capacity:
                yield from when_full()

    def pairs(self, *, pairs: int, until_empty: bool) -> Iterator[Batch]:
        """Batches of up to ``pairs`` pairs of distinct songs from the pool's slices.

        A batch is smaller when the pool holds fewer songs. Without ``until_empty`` at
        most half the pool is emitted, so that later rows still mix with the ones waiting.
        """
        by_song: dict[Any, list[int]] = {}
        for position in self.rng.permutation(self.count):
            by_song.setdefault(self.song_ids[position], []).append(int(position))
        queue = [rows[i:i + 2] for rows in by_song.values() for i in range(0, len(rows) - 1, 2)]
        queue = [queue[i] for i in self.rng.permutation(len(queue))]
        used: list[int] = []
        budget = self.count if until_empty else self.count // 2
        while queue and len(used) < budget:
            batch, songs, rest = [], set(), []
            for pair in queue:
                song = self.song_ids[pair[0]]
                if len(batch) < pairs and song not in songs:
                    batch.append(pair)
                    songs.add(song)
                else:
                    rest.append(pair)
            if len(batch) < 2:  # one song left: no negatives to contrast with
                break
            idx = np.array([row for pair in batch for row in pair])
            yield Batch(self.images[idx], self.labels[idx], self.song_ids[idx], self.slice_idx[idx])
            used.extend(idx.tolist())
            queue = rest
        if until_empty:
            self.count = 0
        else:
            self._keep(np.setdiff1d(np.arange(self.count), np.array(used, dtype=np.int64)))

    def _keep(self, rows: np.ndarray) -> None:
        for name in ("images", "labels", "song_ids", "slice_idx"):
            array = getattr(self, name)
            array[: len(rows)] = array[rows]
        self.count = len(rows)

    def drain(self, *, batch_size: int) -> Iterator[Batch]:
        yield from self._emit(self.count, batch_size=batch_size)

    def _emit(self, n_out: int, *, batch_size: int) -> Iterator[Batch]:
        n_out = min(n_out, self.count)
        order = self.rng.permutation(self.count)
        out, rest = order[:n_out], order[n_out:]
        for start in range(0, n_out, batch_size):
            idx = out[start:start + batch_size]
            yield Batch(self.images[idx], self.labels[idx], self.song_ids[idx], self.slice_idx[idx])
        self._keep(rest)  # the rows not emitted, to the front (fancy indexing copies: no overlap)


def _images(column: pa.Array, shape: tuple[int, int], *, where: str) -> np.ndarray:
    """A binary column of equal-sized images as one (n, rows, frames) uint8 array, zero-copy."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    size = shape[0] * shape[1]
    offsets = np.frombuffer(column.buffers()[1], dtype=np.int32, count=len(column) + 1, offset=column.offset * 4)
    if column.null_count or not np.all(np.diff(offsets) == size):
        raise WarehouseError(f"slices table {where}: a spectrogram is not {shape[0]}x{shape[1]} bytes")
    data = np.frombuffer(column.buffers()[2], dtype=np.uint8)
    return data[offsets[0]:offsets[-1]].reshape(len(column), *shape)


def _round_robin(streams: Iterator[Iterator[Batch]], *, width: int) -> Iterator[Batch]:
    """Chunks from up to ``width`` streams at once, one from each in turn."""
    active: list[Iterator[Batch]] = []
    streams = iter(streams)
    exhausted = False
    while True:
        while not exhausted and len(active) < width:
            stream = next(streams, None)
            if stream is None:
                exhausted = True
            else:
                active.append(stream)
        if not active:
            return
        for stream in list(active):
            chunk = next(stream, None)
            if chunk is None:
                active.remove(stream)
            else:
                yield chunk


def _concat(batches: list[Batch]) -> Batch:
    if len(batches) == 1:
        return batches[0]
    return Batch(*(np.concatenate([getattr(b, name) for b in batches])
                   for name in ("images", "labels", "song_ids", "slice_idx")))


def _take(batch: Batch, index: slice) -> Batch:
    return Batch(batch.images[index], batch.labels[index], batch.song_ids[index], batch.slice_idx[index])
