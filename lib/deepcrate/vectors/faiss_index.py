"""The FAISS inner-product index over unit song vectors: build, search, save and open.

Up to ``index.exact_max_songs`` songs the index is exact (Flat); above it, approximate
(HNSW by default; IVF as an option), with its recall@k against exact search measured on
a sample. On disk an index is a folder: ``songs.faiss``, ``song_ids.parquet`` (row i of
the index is song i) and ``index.json``.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from typing import Any

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from deepcrate.config.sections import IndexSettings
from deepcrate.errors import SearchIndexError
from deepcrate.vectors.similarity import exact_top_k

INDEX = "index"  # its folder in the warehouse


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


def save_index(folder: str, *, index: faiss.Index, ids: pa.Array, description: dict[str, Any]) -> None:
    """Write ``index`` as a new local folder that :func:`load_index` opens (``ids``: string)."""
    os.makedirs(folder)
    faiss.write_index(index, os.path.join(folder, "songs.faiss"))
    pq.write_table(pa.table({"song_id": ids}), os.path.join(folder, "song_ids.parquet"))
    with open(os.path.join(folder, "index.json"), "w", encoding="utf-8") as out:
        json.dump(description, out, indent=2)


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
        raise SearchIndexError(f"index {folder}: unreadable ({exc}); rebuild it with deepcrate index") from None
    if index.ntotal != len(ids) or len(ids) != expected_songs:
        raise SearchIndexError(f"index {folder}: holds {index.ntotal} songs but song_embeddings has {expected_songs}; "
                         f"it is stale, rebuild it with deepcrate index")
    set_search_params(index, settings)
    if isinstance(index, faiss.IndexIVF):
        index.make_direct_map()  # reconstruct() looks seed songs up by position
    return LoadedIndex(index=index, ids=ids.astype(object), description=description)
