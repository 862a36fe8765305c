"""Vectors as numpy matrices: unit length, exact top-k by blocks, list columns to matrices.

No Spark, no TensorFlow, no FAISS: the evaluation baselines and the tests use these
where an index would be overkill or where its answer is to be checked.
"""
from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from deepcrate.errors import WarehouseError


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


def normalise(vectors: np.ndarray, *, overwrite: bool = False) -> np.ndarray:
    """Unit-length float32 copies (cosine = inner product), or ``vectors`` themselves made unit
    length when ``overwrite`` and they are float32; a zero vector stays zero."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    if overwrite and vectors.dtype == np.float32:
        return np.divide(vectors, norms, out=vectors, where=norms > 0)
    return np.divide(vectors, norms, out=np.zeros_like(vectors, dtype=np.float32), where=norms > 0)



def exact_top_k(
    vectors: np.ndarray, queries: np.ndarray, k: int, *, query_block: int = 256, vector_block: int = 1024
) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force (similarities, positions) of the ``k`` nearest unit vectors, numpy only.

    Blocks over queries and over the catalogue keep the score matrix at
    ``query_block x vector_block`` (1 MiB of float32, 3x that with the positions
    ``argpartition`` returns), however large the catalogue: the validation ranking of the
    head's training grew with the songs up to a block of 16,384 (~67 MB). Below the driver's
    mmap threshold (:mod:`deepcrate.cli.allocator`): blocks of 4,096 made it map and zero
    12 MB per block, and the head's training ~14% slower.
    """
    all_sims, all_idx = [], []
    for q_start in range(0, len(queries), query_block):
        block = queries[q_start:q_start + query_block]
        best_sims = np.zeros((len(block), 0), np.float32)
        best_idx = np.zeros((len(block), 0), np.int64)
        for v_start in range(0, len(vectors), vector_block):
            scores = block @ vectors[v_start:v_start + vector_block].T
            kk = min(k, scores.shape[1])
            np.negative(scores, out=scores)  # in place: the smallest of the negated are the best
            top = np.argpartition(scores, kk - 1, axis=1)[:, :kk]
            best_sims, best_idx = merge_top_k(best_sims, best_idx, -np.take_along_axis(scores, top, axis=1),
                                              top + v_start, k=k)
        all_sims.append(best_sims)
        all_idx.append(best_idx)
    return np.concatenate(all_sims), np.concatenate(all_idx)


def top_k_of_blocks(blocks: Iterable[tuple[np.ndarray, np.ndarray]], queries: np.ndarray, k: int
                    ) -> tuple[np.ndarray, np.ndarray]:
    """:func:`exact_top_k` over vectors that come a block at a time, each block as (the positions of
    its rows, its unit vectors) (rows read from a table): the ``k`` best (similarities, positions)
    of each query, best first. Memory: the queries, their best ``k`` so far and one block."""
    best_sims = np.zeros((len(queries), 0), np.float32)
    best_positions = np.zeros((len(queries), 0), np.int64)
    for positions, vectors in blocks:
        if not len(vectors):
            continue
        sims, found = exact_top_k(vectors, queries, min(k, len(vectors)))
        best_sims, best_positions = merge_top_k(best_sims, best_positions, sims, np.asarray(positions)[found], k=k)
    return best_sims, best_positions


def merge_top_k(sims: np.ndarray, positions: np.ndarray, more_sims: np.ndarray, more_positions: np.ndarray, *,
                k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` best (similarities, positions) per row of two candidate lists, best first."""
    sims = np.concatenate([sims, more_sims], axis=1)
    positions = np.concatenate([positions, more_positions], axis=1)
    keep = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(sims, keep, axis=1), np.take_along_axis(positions, keep, axis=1)
