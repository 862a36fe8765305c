"""Column statistics of a matrix held in parts (train and validation slices), block by block.

Means, spreads, principal components and sums by group are accumulated, and standardised copies
computed, in float64 over blocks of rows,
so the memory they take does not grow with the rows: a float64 copy of every slice's
features, and the factors of its SVD, took ~9 KB a slice of the head's training
(bench/head_memory.py).
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import numpy as np
from scipy import sparse

BLOCK_ROWS = 8192
# standardising is elementwise, so its blocks can be small: blocks of 8,192 rows of 400 features
# took two float64 temporaries of 26 MB (evaluate's peak grew with the genre probe's sample
# until it reached 8,192 songs)
STANDARDISED_ROWS = 1024


def column_moments(parts: Sequence[np.ndarray], *, block_rows: int = BLOCK_ROWS) -> tuple[np.ndarray, np.ndarray]:
    """The (mean, standard deviation) of each column of ``parts`` stacked, in float64 (population
    deviation, as ``numpy.std``: the sum of squares taken around the mean, in a second pass).
    """
    rows = sum(len(part) for part in parts)
    mean = _column_mean(parts, block_rows)
    squares = sum((np.square(block - mean).sum(axis=0) for _, block in _blocks(parts, block_rows)),
                  np.zeros(_width(parts)))
    return mean, np.sqrt(squares / rows)


def streamed_moments(blocks: Iterable[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The (mean, standard deviation) of each column of ``blocks`` stacked, in float64, in one pass
    over them (for rows read from a table a block at a time): each block's mean and sum of squared
    deviations, combined as Chan, Golub & LeVeque (1979) do, so no sum of squares about zero is
    ever taken."""
    rows, mean, squares = 0, None, None
    for block in blocks:
        block = np.asarray(block, dtype=np.float64)
        if not len(block):
            continue
        block_mean = block.mean(axis=0)
        block_squares = np.square(block - block_mean).sum(axis=0)
        if mean is None:
            rows, mean, squares = len(block), block_mean, block_squares
            continue
        total = rows + len(block)
        delta = block_mean - mean
        mean = mean + delta * (len(block) / total)
        squares = squares + block_squares + np.square(delta) * (rows * len(block) / total)
        rows = total
    if mean is None:
        raise ValueError("moments of no rows")
    return mean, np.sqrt(squares / rows)


def principal_components(parts: Sequence[np.ndarray], *, count: int,
                         block_rows: int = BLOCK_ROWS) -> tuple[np.ndarray, np.ndarray]:
    """The (mean, components) of the rows of ``parts`` stacked: ``components`` (columns, k) holds
    the eigenvectors of their covariance with the k largest eigenvalues, largest first, where
    k = min(``count``, rows, columns) as an SVD of the centred rows would give them. Each is
    signed so that its largest loading is positive (an eigenvector's sign is otherwise
    arbitrary, and would differ between LAPACK builds).
    """
    rows, width = sum(len(part) for part in parts), _width(parts)
    mean = _column_mean(parts, block_rows)  # the spread is not needed: one pass fewer
    scatter = np.zeros((width, width))
    for _, block in _blocks(parts, block_rows):
        centred = block - mean
        scatter += centred.T @ centred
    _, vectors = np.linalg.eigh(scatter)  # ascending eigenvalues
    components = vectors[:, ::-1][:, :min(count, rows, width)]
    largest = np.abs(components).argmax(axis=0)
    components *= np.sign(components[largest, np.arange(components.shape[1])])
    return mean, components


def group_sums(parts: Sequence[np.ndarray], groups: np.ndarray, *, count: int, block_rows: int = BLOCK_ROWS,
               out: np.ndarray | None = None) -> np.ndarray:
    """(count, columns) float64: the sum of the rows of ``parts`` stacked by group, row i's group
    being ``groups[i]`` (in 0 .. count-1); each group's rows added in their order. Into ``out``
    (zeros of that shape, e.g. a scratch array) when given. A block adds to the groups it has
    rows of only: no temporary of every group per block."""
    sums = np.zeros((count, _width(parts))) if out is None else out
    for first, block in _blocks(parts, block_rows):
        present, local = np.unique(groups[first:first + len(block)], return_inverse=True)
        sums[present] += sparse.csr_array((np.ones(len(block)), (local, np.arange(len(block)))),
                                          shape=(len(present), len(block))) @ block
    return sums


def standardised(features: np.ndarray, *, mean: np.ndarray, scale: np.ndarray, overwrite: bool,
                 block_rows: int = STANDARDISED_ROWS) -> np.ndarray:
    """``(features - mean) / scale`` as float32, computed in float64 block by block (no float64
    copy of every slice), into ``features`` itself when ``overwrite`` and it is float32."""
    out = features if overwrite and features.dtype == np.float32 else np.empty(features.shape, np.float32)
    for start in range(0, len(features), block_rows):
        block = slice(start, start + block_rows)
        centred = np.subtract(features[block], mean, dtype=np.float64)
        centred /= scale
        out[block] = centred
    return out


def standardise(features: np.ndarray, *, block_rows: int = BLOCK_ROWS) -> np.ndarray:
    """Each column of ``features`` to mean 0 and standard deviation 1 over these rows (a constant
    column to 0), as a float32 copy."""
    mean, spread = column_moments([features], block_rows=block_rows)
    return standardised(features, mean=mean, scale=standard_scale(spread), overwrite=False, block_rows=block_rows)


def standard_scale(spread: np.ndarray) -> np.ndarray:
    """What to divide centred columns by to standardise them: their spread, or infinity for a
    constant column (centred to 0, it stays 0)."""
    return np.where(spread > 0, spread, np.inf)


def _column_mean(parts: Sequence[np.ndarray], block_rows: int) -> np.ndarray:
    rows = sum(len(part) for part in parts)
    return sum((block.sum(axis=0) for _, block in _blocks(parts, block_rows)), np.zeros(_width(parts))) / rows


def _width(parts: Sequence[np.ndarray]) -> int:
    return next(part.shape[1] for part in parts)


def _blocks(parts: Sequence[np.ndarray], block_rows: int) -> Iterator[tuple[int, np.ndarray]]:
    """(the first row's position in the stacked parts, the block in float64)."""
    first = 0
    for part in parts:
        for start in range(0, len(part), block_rows):
            yield first + start, np.asarray(part[start:start + block_rows], dtype=np.float64)
        first += len(part)
