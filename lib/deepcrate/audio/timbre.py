"""The classic timbre baseline: a song as one Gaussian over its MFCC frames.

Mandel & Ellis (2005): each song is the mean and full covariance of its 20 MFCCs over
its frames (:func:`deepcrate.audio.mfcc.gaussian_of_frames`), and two songs are as far apart
as the symmetric Kullback-Leibler divergence of their Gaussians. No labels, no
training; unlike mean-and-std statistics it keeps how the coefficients move together.

With mean m, covariance S and precision P = S^-1 (d = 20),

    KL(i||j) + KL(j||i) = (tr(P_i S_j) + tr(P_j S_i) + (m_i - m_j)'(P_i + P_j)(m_i - m_j)) / 2 - d,

and expanded, every term is an inner product of something of song i with something of
song j, or a constant of one song. So with

    q = [vec P, P m, vec(S + m m'), -2 m, m'P m, 1]
    v = [vec(S + m m'), -2 m, vec P, P m, 1, m'P m]

the divergence is ``q_i @ v_j / 2 - d``: the least divergent songs are a maximum inner
product search of ``-q_i`` over the ``v`` (842 numbers a song), block-wise and exact here;
an inner-product index (FAISS) could serve it at catalogue scale.
"""
from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from deepcrate.audio.mfcc import N_MFCC
from deepcrate.vectors.retrieval import other_songs
from deepcrate.vectors.scratch import scratch_array
from deepcrate.vectors.similarity import top_k_of_blocks

# Added to every covariance: a song with a constant coefficient (digital silence in a
# band, a single frame) still has a precision matrix.
RIDGE = 1e-3


def divergence_vectors(gaussians: np.ndarray, *, centre: np.ndarray | None = None
                       ) -> tuple[np.ndarray, np.ndarray]:
    """The query and database vectors ``q`` and ``v`` of each song (see the module doc).

    Parameters
    ----------
    gaussians : ndarray, shape (n_songs, 420)
        Per song, its MFCC mean and covariance (:func:`deepcrate.audio.mfcc.gaussian_of_frames`).
    centre : ndarray, shape (20,), optional
        Subtracted from every mean (the divergence does not change when all songs shift
        alike; centring keeps the terms small). Vectors to be compared must share it;
        by default the mean of these songs' means.

    Returns
    -------
    (ndarray, ndarray), each of shape (n_songs, 842), float64
        ``q[i] @ v[j] / 2 - 20`` is the symmetric KL divergence of songs i and j.
    """
    gaussians = np.asarray(gaussians, dtype=np.float64)
    means = gaussians[:, :N_MFCC]
    means = means - (means.mean(axis=0) if centre is None else centre)
    covariances = gaussians[:, N_MFCC:].reshape(-1, N_MFCC, N_MFCC) + RIDGE * np.eye(N_MFCC)
    precisions = np.linalg.inv(covariances)
    precise_means = np.einsum("nij,nj->ni", precisions, means)
    second_moments = covariances + np.einsum("ni,nj->nij", means, means)
    own = np.einsum("ni,ni->n", means, precise_means)[:, None]
    ones = np.ones_like(own)
    flat_precisions = precisions.reshape(len(gaussians), -1)
    flat_moments = second_moments.reshape(len(gaussians), -1)
    queries = np.hstack([flat_precisions, precise_means, flat_moments, -2 * means, own, ones])
    database = np.hstack([flat_moments, -2 * means, flat_precisions, precise_means, ones, own])
    return queries, database


def least_divergent(gaussians: np.ndarray, queries: np.ndarray, *, k: int, block: int = 256) -> np.ndarray:
    """Positions of the ``k`` songs whose Gaussians are least divergent from each query's,
    the query itself left out (exact search).

    Parameters
    ----------
    gaussians : ndarray, shape (n_songs, 420)
    queries : ndarray of int
        Positions of the query songs.
    block : int
        Songs whose divergence vectors are made at once (256: ~7 MiB of temporaries), so that
        this memory stays flat however large the catalogue (1,024 were no faster on 40,000
        songs, and made the evaluation's peak grow with the test songs up to 1,024 of them).
    """
    centre = np.asarray(gaussians[:, :N_MFCC], dtype=np.float64).mean(axis=0)
    return least_divergent_of_blocks([(np.arange(len(gaussians)), gaussians)], gaussians[queries], queries,
                                     centre=centre, k=k, block=block)


def least_divergent_of_blocks(blocks: Iterable[tuple[np.ndarray, np.ndarray]], query_gaussians: np.ndarray,
                              queries: np.ndarray, *, centre: np.ndarray, k: int, block: int = 256) -> np.ndarray:
    """:func:`least_divergent` of Gaussians that come a block at a time, as (positions, Gaussians)
    (rows read from a table); ``query_gaussians`` are those of the songs at positions ``queries``,
    ``centre`` the mean of every song's mean (:func:`divergence_vectors`); ``block`` as there."""
    # the smallest divergence is the largest -q.v: a top k of inner products; 6.7 KB a query song,
    # so in a scratch file (the page cache's while memory allows, not the process's own)
    negated_queries = scratch_array((len(query_gaussians), 2 * N_MFCC * N_MFCC + 2 * N_MFCC + 2), np.float64)
    for start in range(0, len(query_gaussians), block):
        part = slice(start, start + block)
        np.negative(divergence_vectors(query_gaussians[part], centre=centre)[0], out=negated_queries[part])
    database = ((positions[start:start + block], divergence_vectors(gaussians[start:start + block], centre=centre)[1])
                for positions, gaussians in blocks for start in range(0, len(gaussians), block))
    _, found = top_k_of_blocks(database, negated_queries, k + 1)
    return other_songs(found, queries, k=k)
