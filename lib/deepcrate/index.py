"""The FAISS cosine index over ``song_embeddings`` and the ``recommendations`` table.

Song vectors are L2-normalised, so inner product is cosine similarity. Up to
``index.exact_max_songs`` songs the index is exact (Flat); above it, approximate
(HNSW by default; IVF as an option), and its recall@k against exact search is measured
on a sample and reported. The recommendations are searched block by block and
written block by block, so memory stays at the index plus one block.

Layout: ``WH/index/`` holds ``songs.faiss``, ``song_ids.parquet`` (row i of the index
is song i) and ``index.json``; it is published together with ``recommendations``.
"""
from __future__ import annotations

import json
import logging
import math
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
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from deepcrate.errors import ConfigError, ModelError, WarehouseError
from deepcrate.schemas import validate
from deepcrate.slice_reader import filesystem_and_path
from deepcrate.warehouse import Warehouse, holds_writer_lock

logger = logging.getLogger(__name__)

INDEX = "index"
KINDS = ("hnsw", "ivf")
RECOMMENDATION_COLUMNS = pa.schema([
    pa.field("song_id", pa.string(), nullable=False),
    pa.field("rank", pa.int32(), nullable=False),
    pa.field("neighbor_id", pa.string(), nullable=False),
    pa.field("similarity", pa.float64(), nullable=False),
])


@dataclass(frozen=True)
class IndexSettings:
    """The ``index`` section of the config, checked."""

    k: int
    exact_max_songs: int
    approximate: str
    hnsw_m: int
    hnsw_ef_construction: int
    hnsw_ef_search: int
    ivf_nprobe: int
    duplicate_similarity: float
    block_size: int
    recall_sample: int
    progress_interval_s: float

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> IndexSettings:
        settings = cls(**config["index"])
        if settings.approximate not in KINDS:
            raise ConfigError(f"index.approximate must be one of {KINDS}, got {settings.approximate!r}")
        if min(settings.k, settings.block_size, settings.hnsw_m, settings.hnsw_ef_search, settings.ivf_nprobe) < 1:
            raise ConfigError("index: k, block_size, hnsw_m, hnsw_ef_search and ivf_nprobe must be >= 1")
        return settings


@dataclass
class IndexSummary:
    songs: int
    kind: str
    recall_at_k: float | None
    build_s: float
    recommend_s: float
    k: int

    def lines(self) -> list[str]:
        recall = "exact" if self.recall_at_k is None else f"recall@{self.k} {self.recall_at_k:.3f} on a sample"
        return [
            f"index of {self.songs} songs: {self.kind} ({recall}), built in {self.build_s:.1f} s",
            f"recommendations: top {self.k} for every song in {self.recommend_s:.1f} s",
            "tables: recommendations; index folder: WH/index",
        ]


# -- vectors ---------------------------------------------------------------------------


def read_song_vectors(uri: str) -> tuple[np.ndarray, np.ndarray]:
    """(song ids, float32 vectors) of a ``song_embeddings`` table, sorted by song id."""
    filesystem, path = filesystem_and_path(uri)
    table = ds.dataset(path, format="parquet", filesystem=filesystem).to_table(columns=["song_id", "embedding"])
    table = table.sort_by("song_id")
    ids = table.column("song_id").to_numpy(zero_copy_only=False).astype(object)
    return ids, list_column_matrix(table.column("embedding"))


def list_column_matrix(column: pa.ChunkedArray | pa.Array, *, dtype: type = np.float32) -> np.ndarray:
    """A list<float> (or list<double>) column of equal-length lists as one (n, d) matrix of ``dtype``."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if len(column) == 0:
        return np.zeros((0, 0), dtype)
    lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False)
    if lengths.min() != lengths.max():
        raise WarehouseError("embeddings of different lengths in one table")
    return column.flatten().to_numpy(zero_copy_only=False).astype(dtype).reshape(len(column), int(lengths[0]))


def normalise(vectors: np.ndarray) -> np.ndarray:
    """Unit-length copies (cosine = inner product); a zero vector stays zero."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.divide(vectors, norms, out=np.zeros_like(vectors, dtype=np.float32), where=norms > 0).astype(np.float32)


# -- the index -------------------------------------------------------------------------


def build_index(vectors: np.ndarray, settings: IndexSettings) -> tuple[faiss.Index, dict[str, Any]]:
    """An inner-product index over unit vectors: exact up to ``exact_max_songs``, else approximate."""
    n, dim = vectors.shape
    if n <= settings.exact_max_songs:
        index = faiss.IndexFlatIP(dim)
        params: dict[str, Any] = {"kind": "flat"}
    elif settings.approximate == "hnsw":
        index = faiss.IndexHNSWFlat(dim, settings.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = settings.hnsw_ef_construction
        params = {"kind": "hnsw", "m": settings.hnsw_m, "ef_construction": settings.hnsw_ef_construction}
    else:
        nlist = max(1, min(int(math.sqrt(n)), n // 39))  # FAISS wants >= 39 training points per list
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
        sample = vectors[np.random.default_rng(0).choice(n, size=min(n, 256 * nlist), replace=False)]
        index.train(sample)
        params = {"kind": "ivf", "nlist": nlist}
    index.add(vectors)
    set_search_params(index, settings)
    return index, params


def set_search_params(index: faiss.Index, settings: IndexSettings) -> None:
    if isinstance(index, faiss.IndexHNSW):
        index.hnsw.efSearch = max(settings.hnsw_ef_search, settings.k + 1)
    elif isinstance(index, faiss.IndexIVF):
        index.nprobe = settings.ivf_nprobe


def exact_top_k(
    vectors: np.ndarray, queries: np.ndarray, k: int, *, query_block: int = 256, vector_block: int = 65536
) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force (similarities, positions) of the ``k`` nearest unit vectors, numpy only.

    Blocks over queries and over the catalogue keep the score matrix at
    ``query_block x vector_block`` (64 MiB), however large the catalogue.
    """
    all_sims, all_idx = [], []
    for q_start in range(0, len(queries), query_block):
        block = queries[q_start:q_start + query_block]
        best_sims = np.zeros((len(block), 0), np.float32)
        best_idx = np.zeros((len(block), 0), np.int64)
        for v_start in range(0, len(vectors), vector_block):
            scores = block @ vectors[v_start:v_start + vector_block].T
            kk = min(k, scores.shape[1])
            top = np.argpartition(-scores, kk - 1, axis=1)[:, :kk]
            best_sims, best_idx = merge_top_k(best_sims, best_idx, np.take_along_axis(scores, top, axis=1),
                                              top + v_start, k=k)
        all_sims.append(best_sims)
        all_idx.append(best_idx)
    return np.concatenate(all_sims), np.concatenate(all_idx)


def merge_top_k(sims: np.ndarray, positions: np.ndarray, more_sims: np.ndarray, more_positions: np.ndarray, *,
                k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` best (similarities, positions) per row of two candidate lists, best first."""
    sims = np.concatenate([sims, more_sims], axis=1)
    positions = np.concatenate([positions, more_positions], axis=1)
    keep = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(sims, keep, axis=1), np.take_along_axis(positions, keep, axis=1)


def measure_recall(index: faiss.Index, vectors: np.ndarray, *, k: int, sample: int) -> float:
    """recall@k of ``index`` against exact search, over a seeded sample of the songs as queries."""
    rng = np.random.default_rng(0)
    queries = vectors[rng.choice(len(vectors), size=min(sample, len(vectors)), replace=False)]
    _, truth = exact_top_k(vectors, queries, k)
    _, found = index.search(queries, k)
    hits = sum(len(set(t) & set(f)) for t, f in zip(truth, found))
    return hits / truth.size


# -- recommendations -------------------------------------------------------------------


def neighbours(
    index: faiss.Index, queries: np.ndarray, *, k: int, exclude: list[set[int]], duplicate_similarity: float,
    allowed: np.ndarray | None = None,
) -> list[list[tuple[int, float]]]:
    """The top ``k`` (position, similarity) per query, skipping ``exclude[i]``, near-duplicates of
    the query (similarity >= ``duplicate_similarity``) and positions not ``allowed``.

    Searches ``k`` plus a margin first and widens the search only for the queries whose
    exclusions or filters ate into it.
    """
    total = index.ntotal
    results: list[list[tuple[int, float]] | None] = [None] * len(queries)
    pending = np.arange(len(queries))
    depth = min(total, k + 1 + max(len(e) for e in exclude) + 4) if len(queries) else 0
    while len(pending):
        sims, positions = index.search(queries[pending], depth)
        still = []
        for row, query in enumerate(pending):
            kept = []
            for position, similarity in zip(positions[row], sims[row]):
                if position < 0 or position in exclude[query] or similarity >= duplicate_similarity:
                    continue
                if allowed is not None and not allowed[position]:
                    continue
                kept.append((int(position), float(similarity)))
                if len(kept) == k:
                    break
            if len(kept) < k and depth < total:
                still.append(query)
            else:
                results[query] = kept
        pending = np.array(still, dtype=np.int64)
        depth = min(total, depth * 4)
    return results  # type: ignore[return-value]


def recommendation_blocks(
    index: faiss.Index, ids: np.ndarray, vectors: np.ndarray, settings: IndexSettings
) -> Iterator[pa.Table]:
    """The recommendations table, ``block_size`` songs at a time."""
    for start in range(0, len(ids), settings.block_size):
        stop = min(start + settings.block_size, len(ids))
        found = neighbours(index, vectors[start:stop], k=settings.k,
                           exclude=[{i} for i in range(start, stop)],
                           duplicate_similarity=settings.duplicate_similarity)
        song, rank, neighbour, similarity = [], [], [], []
        for offset, kept in enumerate(found):
            for r, (position, sim) in enumerate(kept, start=1):
                song.append(ids[start + offset])
                rank.append(r)
                neighbour.append(ids[position])
                similarity.append(sim)
        yield pa.table([pa.array(song, pa.string()), pa.array(rank, pa.int32()),
                        pa.array(neighbour, pa.string()), pa.array(similarity, pa.float64())],
                       schema=RECOMMENDATION_COLUMNS)


@holds_writer_lock()
def build(spark, *, warehouse: str, config: dict[str, Any], fingerprint: str | None = None) -> IndexSummary:
    """Index ``song_embeddings``, write ``recommendations``, publish both.

    ``fingerprint`` is stored in ``index.json`` (the rebuild job's record of its inputs).
    """
    settings = IndexSettings.from_config(config)
    store = Warehouse(spark, warehouse, table_format=config["warehouse"]["table_format"])
    if not store.exists("song_embeddings"):
        raise WarehouseError(f"warehouse {store.root}: no song_embeddings table; run deepcrate embed first")
    meta = store.metadata("song_embeddings")
    ids, raw = read_song_vectors(store.table_uri("song_embeddings"))
    if len(ids) < 2:
        raise WarehouseError(f"warehouse {store.root}: {len(ids)} song(s) embedded; recommendations need at least 2")
    vectors = normalise(raw)
    started = time.monotonic()
    index, params = build_index(vectors, settings)
    build_s = time.monotonic() - started
    if index.ntotal != len(ids):
        raise WarehouseError(f"the index holds {index.ntotal} vectors but song_embeddings has {len(ids)} songs")
    recall = None if params["kind"] == "flat" else measure_recall(index, vectors, k=settings.k,
                                                                   sample=settings.recall_sample)
    logger.info("index of %d songs: %s built in %.1f s%s", len(ids), params["kind"], build_s,
                "" if recall is None else f", recall@{settings.k} {recall:.3f}")

    scratch = tempfile.mkdtemp(prefix="deepcrate-index-")
    try:
        started = time.monotonic()
        table_dir = os.path.join(scratch, "recommendations")
        os.makedirs(table_dir)
        last = time.monotonic()
        for number, block in enumerate(recommendation_blocks(index, ids, vectors, settings)):
            pq.write_table(block, os.path.join(table_dir, f"part-{number:05d}.parquet"))
            if time.monotonic() - last >= settings.progress_interval_s:
                last = time.monotonic()
                done = min((number + 1) * settings.block_size, len(ids))
                logger.info("recommendations: %d/%d songs", done, len(ids))
        recommend_s = time.monotonic() - started

        index_dir = os.path.join(scratch, INDEX)
        os.makedirs(index_dir)
        faiss.write_index(index, os.path.join(index_dir, "songs.faiss"))
        pq.write_table(pa.table({"song_id": pa.array(ids, pa.string())}), os.path.join(index_dir, "song_ids.parquet"))
        description = {**params, "songs": len(ids), "dim": int(vectors.shape[1]), "k": settings.k,
                       "recall_at_k": recall, "build_s": round(build_s, 3),
                       "model_version": meta.get("model_version"), "settings": asdict(settings),
                       "fingerprint": fingerprint}
        with open(os.path.join(index_dir, "index.json"), "w", encoding="utf-8") as out:
            json.dump(description, out, indent=2)

        run = store.begin_run()
        store.stage_folder(run, table_dir, "recommendations")
        validate(spark.read.parquet(store.staging_uri(run, "recommendations")), table="recommendations")
        store.write_metadata(store.staging_uri(run, "recommendations"),
                             {"table": "recommendations", "model_version": meta.get("model_version"),
                              "index": description})
        store.stage_folder(run, index_dir, INDEX)
        store.publish(run, ["recommendations", INDEX])
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return IndexSummary(songs=len(ids), kind=params["kind"], recall_at_k=recall, build_s=build_s,
                        recommend_s=recommend_s, k=settings.k)


@dataclass
class LoadedIndex:
    index: faiss.Index
    ids: np.ndarray
    description: dict[str, Any]


def load_index(folder: str, *, settings: IndexSettings, expected_songs: int) -> LoadedIndex:
    """Open ``WH/index`` (a local folder) and check it matches ``song_embeddings``."""
    try:
        index = faiss.read_index(os.path.join(folder, "songs.faiss"))
        ids = pq.read_table(os.path.join(folder, "song_ids.parquet")).column("song_id").to_numpy(zero_copy_only=False)
        with open(os.path.join(folder, "index.json"), encoding="utf-8") as stream:
            description = json.load(stream)
    except (OSError, RuntimeError, ValueError, pa.ArrowInvalid) as exc:
        raise ModelError(f"index {folder}: unreadable ({exc}); rebuild it with deepcrate index") from None
    if index.ntotal != len(ids) or len(ids) != expected_songs:
        raise ModelError(f"index {folder}: holds {index.ntotal} songs but song_embeddings has {expected_songs}; "
                         f"it is stale, rebuild it with deepcrate index")
    set_search_params(index, settings)
    if isinstance(index, faiss.IndexIVF):
        index.make_direct_map()  # reconstruct() looks seed songs up by position
    return LoadedIndex(index=index, ids=ids.astype(object), description=description)
