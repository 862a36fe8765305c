"""Column statistics by blocks (deepcrate.vectors.moments) against numpy on the whole matrix."""
from __future__ import annotations

import numpy as np
import pytest

from deepcrate.vectors.moments import column_moments, group_sums, principal_components, streamed_moments


def parts_of(matrix: np.ndarray, *cuts: int) -> list[np.ndarray]:
    return [part.astype(np.float32) for part in np.split(matrix, cuts)]


def test_moments_by_blocks_equal_numpys_over_the_stacked_parts():
    rng = np.random.default_rng(7)
    matrix = (rng.normal(size=(1000, 12)) * np.arange(1, 13) + 50).astype(np.float32)  # far from zero: two passes
    mean, spread = column_moments(parts_of(matrix, 300, 310), block_rows=64)
    whole = matrix.astype(np.float64)
    np.testing.assert_allclose(mean, whole.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(spread, whole.std(axis=0), rtol=1e-9)


def test_moments_of_a_stream_of_blocks_equal_numpys_in_one_pass():
    rng = np.random.default_rng(8)
    matrix = (rng.normal(size=(1000, 12)) * np.arange(1, 13) + 1e4).astype(np.float32)  # far from zero
    whole = matrix.astype(np.float64)
    blocks = (matrix[start:stop] for start, stop in [(0, 1), (1, 1), (1, 400), (400, 999), (999, 1000)])
    mean, spread = streamed_moments(blocks)  # a generator: one pass, uneven and empty blocks
    np.testing.assert_allclose(mean, whole.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(spread, whole.std(axis=0), rtol=1e-9)
    with pytest.raises(ValueError, match="no rows"):
        streamed_moments(iter([]))


@pytest.mark.parametrize("rows", [500, 6])
def test_principal_components_are_the_svds_signed_by_their_largest_loading(rows):
    rng = np.random.default_rng(rows)
    matrix = rng.normal(size=(rows, 10)) @ np.diag(np.linspace(5, 0.5, 10)) @ np.linalg.qr(rng.normal(size=(10, 10)))[0]
    matrix = matrix.astype(np.float32).astype(np.float64)
    mean, components = principal_components(parts_of(matrix, rows // 2), count=8, block_rows=7)
    centred = matrix - matrix.mean(axis=0)
    _, _, rows_of_v = np.linalg.svd(centred, full_matrices=False)
    expected = rows_of_v[:min(8, rows)].T
    assert components.shape == expected.shape == (10, min(8, rows))
    if rows < 10:
        expected, components = expected[:, :rows - 1], components[:, :rows - 1]  # the last one spans nothing
    signs = np.sign(expected[np.abs(expected).argmax(axis=0), np.arange(expected.shape[1])])
    np.testing.assert_allclose(components, expected * signs, atol=1e-6)
    assert (components[np.abs(components).argmax(axis=0), np.arange(components.shape[1])] > 0).all()
    np.testing.assert_allclose(mean, matrix.mean(axis=0), rtol=1e-12)


def test_group_sums_by_blocks_are_each_groups_sum():
    rng = np.random.default_rng(4)
    parts = [rng.normal(size=(11, 3)).astype(np.float32), rng.normal(size=(6, 3)).astype(np.float32)]
    position = rng.integers(0, 4, 17)  # groups in no order, straddling blocks and parts
    stacked = np.concatenate(parts).astype(np.float64)
    expected = np.array([stacked[position == group].sum(axis=0) for group in range(5)])  # group 4 has no row
    np.testing.assert_allclose(group_sums(parts, position, count=5, block_rows=4), expected, rtol=1e-12, atol=1e-12)
    out = np.zeros((5, 3))
    assert group_sums(parts, position, count=5, block_rows=4, out=out) is out
    np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-12)
