"""Retrieval quality: are a song's nearest neighbours of its own genre?

Queries are songs; the catalogue is every labelled song but the query. A neighbour
is relevant when its genre is the query's. For ``k`` neighbours in order,

- precision@k = relevant neighbours / k;
- average precision@k = sum over ranks i <= k of precision@i at each relevant rank,
  divided by min(k, R), where R is the number of songs of the query's genre in the
  catalogue (so a perfect list scores 1 even when fewer than k songs can be right);
  0 when R = 0. Mean average precision (MAP@k) is its mean over the queries.
"""
from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from deepcrate.vectors.similarity import normalise, top_k_of_blocks


def precision_at_k(relevant: np.ndarray, *, k: int) -> np.ndarray:
    """Per query: the share of the first ``k`` neighbours that are relevant.

    Parameters
    ----------
    relevant : ndarray of bool, shape (n_queries, >= k)
        ``relevant[q, i]``: the neighbour at rank ``i + 1`` of query ``q`` is relevant.
    """
    return relevant[:, :k].sum(axis=1) / k


def average_precision_at_k(relevant: np.ndarray, n_relevant: np.ndarray, *, k: int) -> np.ndarray:
    """Per query: average precision over the first ``k`` neighbours (see the module doc).

    Parameters
    ----------
    relevant : ndarray of bool, shape (n_queries, >= k)
    n_relevant : ndarray of int, shape (n_queries,)
        Relevant songs in the catalogue for each query (the query itself not counted).
    """
    hits = relevant[:, :k].astype(np.float64)
    precision_at_rank = np.cumsum(hits, axis=1) / np.arange(1, k + 1)
    denominator = np.minimum(k, np.asarray(n_relevant))
    total = (precision_at_rank * hits).sum(axis=1)
    return np.divide(total, denominator, out=np.zeros(len(hits)), where=denominator > 0)


def nearest_songs(vectors: np.ndarray, queries: np.ndarray, *, k: int) -> np.ndarray:
    """Positions of the ``k`` most cosine-similar rows of ``vectors`` for each row position
    in ``queries``, the query itself left out (exact search)."""
    copy = np.array(vectors, dtype=np.float32)  # made unit length in place
    return nearest_songs_of_blocks([(np.arange(len(copy)), copy)], copy[queries], queries, k=k)


def nearest_songs_of_blocks(blocks: Iterable[tuple[np.ndarray, np.ndarray]], query_vectors: np.ndarray,
                            queries: np.ndarray, *, k: int) -> np.ndarray:
    """:func:`nearest_songs` of vectors that come a block at a time, as (positions, vectors) (rows
    read from a table); ``query_vectors`` are those of the songs at positions ``queries``. The
    blocks and the query vectors (where float32) are made unit length in place: no copy that
    grows with the queries."""
    unit_blocks = ((positions, normalise(vectors, overwrite=True)) for positions, vectors in blocks)
    _, found = top_k_of_blocks(unit_blocks, normalise(query_vectors, overwrite=True), k + 1)
    return other_songs(found, queries, k=k)


def other_songs(found: np.ndarray, queries: np.ndarray, *, k: int) -> np.ndarray:
    """The first ``k`` positions of each row of ``found`` that are not that row's query."""
    out = np.empty((len(queries), k), dtype=np.int64)
    for row, (query, positions) in enumerate(zip(queries, found)):
        out[row] = [p for p in positions if p != query][:k]
    return out


def ideal_songs(genres: np.ndarray, queries: np.ndarray, *, k: int) -> np.ndarray:
    """The best neighbours the labels allow: the other songs of the query's genre first, then
    the rest (each group in catalogue order), ``k`` per query. What a perfect ranking scores."""
    genres = np.asarray(genres, dtype=object)
    # per genre once, so that each query costs O(k) however large the catalogue
    first_of = {g: np.flatnonzero(genres == g)[:k + 1] for g in set(genres[queries])}
    first_not_of = {g: np.flatnonzero(genres != g)[:k] for g in first_of}
    out = np.empty((len(queries), k), dtype=np.int64)
    for row, query in enumerate(queries):
        same = first_of[genres[query]]
        out[row] = np.concatenate([same[same != query], first_not_of[genres[query]]])[:k]
    return out


def random_songs(n_songs: int, queries: np.ndarray, *, k: int, rng: np.random.Generator) -> np.ndarray:
    """``k`` distinct random positions other than the query, for each query."""
    out = np.empty((len(queries), k), dtype=np.int64)
    for row, query in enumerate(queries):
        draw = rng.choice(n_songs - 1, size=k, replace=False)
        out[row] = draw + (draw >= query)  # skip the query's own position
    return out


def retrieval_scores(genres: np.ndarray, queries: np.ndarray, found: np.ndarray, *, ks: tuple[int, ...]
                     ) -> dict[str, np.ndarray]:
    """Per-query ``precision_at_{k}`` and ``map_at_{k}`` for each ``k`` in ``ks``.

    Parameters
    ----------
    genres : ndarray of str, shape (n_songs,)
        The catalogue's labels.
    queries : ndarray of int
        Positions of the query songs.
    found : ndarray of int, shape (n_queries, >= max(ks))
        Their neighbours' positions, best first.
    """
    genres = np.asarray(genres, dtype=object)
    query_genres = genres[queries]
    relevant = genres[found] == query_genres[:, None]
    counts = {g: int(n) for g, n in zip(*np.unique(genres.astype(str), return_counts=True))}
    n_relevant = np.array([counts[str(g)] - 1 for g in query_genres])
    scores = {}
    for k in ks:
        scores[f"precision_at_{k}"] = precision_at_k(relevant, k=k)
        scores[f"map_at_{k}"] = average_precision_at_k(relevant, n_relevant, k=k)
    return scores
