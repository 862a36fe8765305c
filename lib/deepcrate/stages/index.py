"""The index stage: the FAISS index over ``song_embeddings`` and the ``recommendations`` table.

Song vectors are L2-normalised, so inner product is cosine similarity
(:mod:`deepcrate.vectors.faiss_index` builds and opens the index). The recommendations are
searched block by block and written block by block (each a row group), so memory stays at
the index plus one block. ``WH/index/`` is published together with ``recommendations``.
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from deepcrate.config import Settings
from deepcrate.config.sections import IndexSettings
from deepcrate.errors import WarehouseError
from deepcrate.stages.pipeline import Outcome, RebuildContext, Stage, without
from deepcrate.storage.arrow_tables import ArrowTables
from deepcrate.storage.schemas import RECOMMENDATIONS, Table
from deepcrate.storage.table_metadata import RecommendationsMetadata
from deepcrate.storage.warehouse import Warehouse
from deepcrate.storage.writer_lock import holds_writer_lock
from deepcrate.vectors.faiss_index import INDEX, build_index, measure_recall, neighbours, save_index
from deepcrate.vectors.similarity import normalise

logger = logging.getLogger(__name__)

FILE_ROWS = 2_000_000  # recommendations per Parquet file (200,000 songs at k = 10), a block per row group


@dataclass
class IndexSummary:
    songs: int
    kind: str
    recall_at_k: float | None
    build_s: float
    recommend_s: float
    k: int
    fewest: int = 0  # recommendations kept for the song that has the fewest
    most: int = 0

    def lines(self) -> list[str]:
        recall = "exact" if self.recall_at_k is None else f"recall@{self.k} {self.recall_at_k:.3f} on a sample"
        if self.fewest == self.k:
            kept = f"top {self.k} for every song"
        else:  # a catalogue smaller than k + 1, or near-duplicates left out
            span = f"{self.fewest}" if self.fewest == self.most else f"{self.fewest} to {self.most}"
            why = (f"the catalogue has {self.songs} songs" if self.songs <= self.k
                   else "near-duplicates of a song are never recommended")
            kept = f"{span} per song, not index.k = {self.k}: {why}"
        return [
            f"index of {self.songs} songs: {self.kind} ({recall}), built in {self.build_s:.1f} s",
            f"recommendations: {kept}, in {self.recommend_s:.1f} s",
            "tables: recommendations; index folder: WH/index",
        ]


def read_song_vectors(tables: ArrowTables) -> tuple[pa.Array, np.ndarray]:
    """(song ids, float32 vectors) of the ``song_embeddings`` table, sorted by song id (the vectors
    streamed into one matrix: the table is not held besides; the ids an Arrow array, not a Python
    string per song)."""
    ids = pc.unique(tables.read(Table.SONG_EMBEDDINGS, columns=["song_id"]).column("song_id"))
    ids = ids.take(pc.sort_indices(ids))
    return ids, tables.matrix(Table.SONG_EMBEDDINGS, "embedding", keys=ids)


def recommendation_blocks(
    index: faiss.Index, ids: pa.Array, vectors: np.ndarray, settings: IndexSettings
) -> Iterator[pa.Table]:
    """The recommendations table, ``block_size`` songs at a time (``ids``: the songs' ids, string)."""
    for start in range(0, len(ids), settings.block_size):
        stop = min(start + settings.block_size, len(ids))
        found = neighbours(index, vectors[start:stop], k=settings.k,
                           exclude=[{i} for i in range(start, stop)],
                           duplicate_similarity=settings.duplicate_similarity)
        song, rank, neighbour, similarity = [], [], [], []
        for offset, kept in enumerate(found):
            for r, (position, sim) in enumerate(kept, start=1):
                song.append(start + offset)
                rank.append(r)
                neighbour.append(position)
                similarity.append(sim)
        yield pa.table([ids.take(pa.array(song, pa.int64())), pa.array(rank, pa.int32()),
                        ids.take(pa.array(neighbour, pa.int64())), pa.array(similarity, pa.float64())],
                       schema=RECOMMENDATIONS)


class _PartFiles:
    """Blocks of rows written as the row groups of Parquet files of at most :data:`FILE_ROWS` rows:
    small blocks keep memory low without a file per block."""

    def __init__(self, folder: str, *, schema: pa.Schema) -> None:
        self.folder, self.schema = folder, schema
        self.writer: pq.ParquetWriter | None = None
        self.files = self.rows = 0

    def write(self, block: pa.Table) -> None:
        if self.writer is None or self.rows >= FILE_ROWS:
            self.close()
            self.writer = pq.ParquetWriter(os.path.join(self.folder, f"part-{self.files:05d}.parquet"), self.schema)
            self.files, self.rows = self.files + 1, 0
        self.writer.write_table(block)
        self.rows += block.num_rows

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


@holds_writer_lock()
def index_songs(spark, *, warehouse: str, settings: Settings) -> IndexSummary:
    """Index ``song_embeddings``, write ``recommendations``, publish both."""
    options = settings.index
    store = Warehouse(spark, warehouse)
    if not store.exists(Table.SONG_EMBEDDINGS):
        raise WarehouseError(f"warehouse {store.root}: no song_embeddings table; run deepcrate embed first")
    meta = store.metadata(Table.SONG_EMBEDDINGS)
    ids, vectors = read_song_vectors(store.arrow)
    if len(ids) < 2:
        raise WarehouseError(f"warehouse {store.root}: {len(ids)} song(s) embedded; recommendations need at least 2")
    vectors = normalise(vectors, overwrite=True)
    started = time.monotonic()
    index, params = build_index(vectors, options)
    build_s = time.monotonic() - started
    if index.ntotal != len(ids):
        raise WarehouseError(f"the index holds {index.ntotal} vectors but song_embeddings has {len(ids)} songs")
    recall = None if params["kind"] == "flat" else measure_recall(index, vectors, k=options.k,
                                                                   sample=options.recall_sample)
    logger.info("index of %d songs: %s built in %.1f s%s", len(ids), params["kind"], build_s,
                "" if recall is None else f", recall@{options.k} {recall:.3f}")

    scratch = tempfile.mkdtemp(prefix="deepcrate-index-")
    table_dir = os.path.join(scratch, Table.RECOMMENDATIONS)
    files = _PartFiles(table_dir, schema=RECOMMENDATIONS)  # opens nothing until the first block
    try:
        started = time.monotonic()
        os.makedirs(table_dir)
        last = time.monotonic()
        fewest, most = options.k, 0
        for number, block in enumerate(recommendation_blocks(index, ids, vectors, options)):
            files.write(block)
            songs_in_block = min(options.block_size, len(ids) - number * options.block_size)
            per_song = np.unique(block.column("song_id").to_numpy(zero_copy_only=False), return_counts=True)[1]
            fewest = min(fewest, int(per_song.min()) if len(per_song) == songs_in_block else 0)
            most = max(most, int(per_song.max()) if len(per_song) else 0)
            if time.monotonic() - last >= options.progress_interval_s:
                last = time.monotonic()
                done = min((number + 1) * options.block_size, len(ids))
                logger.info("recommendations: %d/%d songs", done, len(ids))
        files.close()
        recommend_s = time.monotonic() - started

        index_dir = os.path.join(scratch, INDEX)
        description = {**params, "songs": len(ids), "dim": int(vectors.shape[1]), "k": options.k,
                       "recall_at_k": recall, "build_s": round(build_s, 3),
                       "model_version": meta.model_version, "settings": asdict(options)}
        save_index(index_dir, index=index, ids=ids, description=description)

        run = store.begin_run()
        store.write_table_files(run, Table.RECOMMENDATIONS, table_dir,
                                metadata=RecommendationsMetadata(model_version=meta.model_version, index=description))
        store.stage_folder(run, index_dir, INDEX)
        store.publish(run, [Table.RECOMMENDATIONS, INDEX])
    finally:
        files.close()
        shutil.rmtree(scratch, ignore_errors=True)
    return IndexSummary(songs=len(ids), kind=params["kind"], recall_at_k=recall, build_s=build_s,
                        recommend_s=recommend_s, k=options.k, fewest=fewest, most=most)


class IndexStage(Stage):
    """Rebuild stage: the index and the recommendations, over the whole catalogue."""

    name = "index"
    after = ("embed",)
    writes = (Table.RECOMMENDATIONS,)  # WH/index is published in the same run

    def settings(self, settings: Settings) -> Any:
        return without(settings.index, ("progress_interval_s", "block_size", "recall_sample"))

    def run(self, context: RebuildContext, *, fingerprint: str) -> Outcome:
        summary = index_songs(context.spark, warehouse=context.warehouse, settings=context.settings)
        return Outcome(f"{summary.kind} index of {summary.songs} songs")


STAGE = IndexStage()
