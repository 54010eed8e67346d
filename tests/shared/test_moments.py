"""Mergeable moments: Chan merges equal NumPy on the union, in any split, and stay stable."""

from __future__ import annotations

from functools import reduce

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as hst

from shared.moments import Moments


@given(sizes=hst.lists(hst.integers(0, 40), min_size=1, max_size=6), seed=hst.integers(0, 99))
def test_chan_merge_equals_numpy_on_the_union(sizes, seed):
    rng = np.random.default_rng(seed)
    parts = [rng.normal(3.0, 2.0, size=(n, 5)) for n in sizes]
    merged = reduce(Moments.merge, (Moments.of(p) for p in parts), Moments.empty(5))
    union = np.concatenate(parts)
    assert merged.count == len(union)
    if len(union):
        mean, std = merged.mean_std(std_floor=1e-12)
        np.testing.assert_allclose(mean, union.mean(0), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(std, np.maximum(union.std(0), 1e-12), rtol=1e-10, atol=1e-12)


def test_std_floor_and_empty():
    mean, std = Moments.of(np.ones((10, 3))).mean_std(std_floor=1e-3)
    np.testing.assert_array_equal(mean, 1)
    np.testing.assert_array_equal(std, 1e-3)
    with pytest.raises(ValueError, match="no samples"):
        Moments.empty(3).mean_std(1e-3)


def test_merged_std_is_exact_where_sum_of_squares_cancels():
    # float32 rows around 1e4 with spread 1e-2 (latents far from zero): sum/sum-of-squares in
    # float64 loses the variance to cancellation, merged moments keep it.
    rng = np.random.default_rng(0)
    parts = [(1e4 + 1e-2 * rng.standard_normal((50, 4))).astype(np.float32) for _ in range(20)]
    union = np.concatenate(parts).astype(np.float64)
    merged = reduce(Moments.merge, (Moments.of(p) for p in parts), Moments.empty(4))
    _, std = merged.mean_std(std_floor=0.0)
    np.testing.assert_allclose(std, union.std(0), rtol=1e-9)
    naive_mean = union.sum(0) / len(union)
    naive_std = np.sqrt(np.maximum((union**2).sum(0) / len(union) - naive_mean**2, 0.0))
    assert np.abs(naive_std / union.std(0) - 1).max() > 1e-3
