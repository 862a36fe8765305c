"""The ``pretrained_features`` table read in this process, per split, for the head's training.

The table holds no split or genre (they belong to songs, and a repair of the split
would otherwise leave it stale): they come from the ``slices`` table's small columns,
joined on (song_id, slice_idx). Rows come back sorted by song and slice, so a
training run sees the same order whichever files the table's rows sit in.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from deepcrate.errors import TrainingError
from deepcrate.models.pretrained_runtime import from_bytes


@dataclass
class SliceFeatures:
    """A split's pretrained features (n, d), label indices (n,) and song ids (n,)."""

    features: np.ndarray
    labels: np.ndarray
    song_ids: np.ndarray


class FeatureTable:
    """The stored features of every slice, with each slice's split and genre.

    Parameters
    ----------
    features, slices : pyarrow.dataset.Dataset
        The ``pretrained_features`` and ``slices`` tables' files.
    width : int
        Features per slice (the table's metadata).
    uri : str
        Where the features table is, for messages.
    """

    def __init__(self, features: ds.Dataset, slices: ds.Dataset, *, width: int, uri: str) -> None:
        self._features = features
        self._slices = slices
        self.width = width
        self.uri = uri
        self._rows: pa.Table | None = None

    def split(self, split: str, *, labels: Sequence[str] | None) -> SliceFeatures:
        """The slices of ``split`` whose genre is one of ``labels`` (labelled by position), or every
        slice of it when ``labels`` is None (labels -1).

        Raises
        ------
        TrainingError
            Slices of the split have no stored features (the table is older than the slices).
        """
        condition = ds.field("split") == split
        if labels is not None:
            condition = condition & ds.field("genre").isin(list(labels))
        keys = self._slices.to_table(columns=["song_id", "slice_idx", "genre"], filter=condition)
        joined = keys.join(self._stored(), keys=["song_id", "slice_idx"], join_type="left outer")
        missing = joined.column("features").null_count
        if missing:
            raise TrainingError(f"{self.uri}: {missing} {split} slices have no pretrained features (the table is "
                                f"older than the slices): run deepcrate features, or rebuild")
        joined = joined.sort_by([("song_id", "ascending"), ("slice_idx", "ascending")])
        if labels is None:
            label_idx = np.full(joined.num_rows, -1, dtype=np.int32)
        else:
            label_idx = pc.index_in(joined.column("genre"), value_set=pa.array(list(labels), pa.string()))
            label_idx = label_idx.to_numpy(zero_copy_only=False).astype(np.int32)
        return SliceFeatures(
            features=from_bytes(joined.column("features").to_pylist(), width=self.width, where=self.uri),
            labels=label_idx,
            song_ids=joined.column("song_id").to_numpy(zero_copy_only=False),
        )

    def _stored(self) -> pa.Table:
        if self._rows is None:  # read once: three splits join against it
            self._rows = self._features.to_table(columns=["song_id", "slice_idx", "features"])
        return self._rows
