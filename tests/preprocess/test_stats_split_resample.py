"""Pure pieces of the build: statistics windows, participant split, resampling."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as hst

from preprocess.motion import Motion
from preprocess.resample import resample_motion, resample_timestamps
from preprocess.split import assign_splits, parse_fractions, split_counts
from preprocess.stats import sequence_moments, window_starts
from shared.features import canonicalize
from shared.rotations import axis_angle_to_matrix, geodesic_angle, matrix_to_6d

# --- statistics windows -----------------------------------------------------------------------


def test_window_starts():
    np.testing.assert_array_equal(window_starts(10, 4, 3), [0, 3, 6])
    np.testing.assert_array_equal(window_starts(3, 4, 3), [0])  # short: once, whole
    assert len(window_starts(0, 4, 3)) == 0


def test_sequence_moments_equal_stacked_canonical_windows():
    rng = np.random.default_rng(0)
    T = 300
    R = axis_angle_to_matrix(rng.normal(size=(T, 24, 3)), rng.uniform(-3, 3, (T, 24)))
    features = np.concatenate(
        [matrix_to_6d(R[:, 0]), rng.normal(size=(T, 150)), matrix_to_6d(R[:, 1:]).reshape(T, -1)],
        axis=1,
    ).astype(np.float32)
    moments = sequence_moments(features, window_frames=100, stride_frames=7)
    windows = np.stack([features[s : s + 100] for s in range(0, 201, 7)]).astype(np.float64)
    canonical, _ = canonicalize(windows)
    flat = canonical.reshape(-1, features.shape[1])
    assert moments.count == len(flat)
    np.testing.assert_allclose(moments.mean, flat.mean(0), rtol=1e-10, atol=1e-12)


# --- split ------------------------------------------------------------------------------------


@given(n=hst.integers(0, 60), seed=hst.integers(0, 5))
def test_split_is_a_partition_with_every_split_present(n, seed):
    people = [f"person_{i}" for i in range(n)]
    assignment = assign_splits(people, (0.8, 0.1, 0.1), seed)
    assert set(assignment) == set(people)
    counts = {s: sum(v == s for v in assignment.values()) for s in ("train", "val", "test")}
    assert sum(counts.values()) == n
    if n >= 3:
        assert min(counts.values()) >= 1
    assert assignment == assign_splits(list(reversed(people)), (0.8, 0.1, 0.1), seed)


def test_split_counts_and_stability():
    assert split_counts(10, (0.8, 0.1, 0.1)) == (8, 1, 1)
    assert split_counts(3, (0.8, 0.1, 0.1)) == (1, 1, 1)
    assert split_counts(2, (0.8, 0.1, 0.1)) == (2, 0, 0)
    assert split_counts(5, (1.0, 0.0, 0.0)) == (5, 0, 0)
    people = [f"p{i}" for i in range(20)]
    assert assign_splits(people, (0.8, 0.1, 0.1), 0) != assign_splits(people, (0.8, 0.1, 0.1), 1)


@pytest.mark.parametrize("text", ["0.8,0.2", "0.5,0.6,0.1", "a,b,c", "0,0.5,0.5", "1,-0.1,0.1"])
def test_bad_fractions(text):
    with pytest.raises(ValueError):
        parse_fractions(text)


# --- resampling -------------------------------------------------------------------------------


def _motion(T: int, period_ns: int, rng: np.random.Generator) -> Motion:
    angle = np.linspace(0, 2.5, T)
    axis = np.array([0.3, -0.2, 1.0])
    R_head = axis_angle_to_matrix(np.broadcast_to(axis, (T, 3)), angle)
    return Motion(
        timestamp_ns=np.arange(T, dtype=np.int64) * period_ns + 12345,
        cpf_translation=np.cumsum(rng.normal(size=(T, 3)), 0),
        cpf_orientation=R_head,
        joint_translation=rng.normal(size=(T, 23, 3)),
        joint_orientation=np.broadcast_to(R_head[:, None], (T, 23, 3, 3)).copy(),
        contact=(rng.uniform(size=(T, 4)) > 0.5).astype(np.float32),
    )


def test_resample_to_double_rate_interpolates_midpoints():
    rng = np.random.default_rng(0)
    source = _motion(11, 40_000_000, rng)  # 25 fps
    fine = resample_motion(source, 50.0)
    assert len(fine) == 21
    np.testing.assert_array_equal(fine.timestamp_ns, 12345 + np.arange(21) * 20_000_000)
    np.testing.assert_allclose(fine.cpf_translation[::2], source.cpf_translation, atol=1e-12)
    midpoints = (source.cpf_translation[:-1] + source.cpf_translation[1:]) / 2
    np.testing.assert_allclose(fine.cpf_translation[1::2], midpoints, atol=1e-12)
    # Constant angular velocity about one axis: slerp midpoints are exactly halfway.
    step = geodesic_angle(source.cpf_orientation[0], source.cpf_orientation[1])
    halves = geodesic_angle(fine.cpf_orientation[:-1], fine.cpf_orientation[1:])
    np.testing.assert_allclose(halves, step / 2, atol=1e-9)
    np.testing.assert_allclose(
        fine.joint_orientation[1::2, 5], fine.cpf_orientation[1::2], atol=1e-12
    )
    assert set(np.unique(fine.contact)) <= {0.0, 1.0}


def test_resample_timestamps_stay_in_span():
    ts = np.array([0, 33_333_333, 66_666_667, 100_000_000], dtype=np.int64)
    np.testing.assert_array_equal(resample_timestamps(ts, 10.0), [0, 100_000_000])
    np.testing.assert_array_equal(resample_timestamps(ts[:1], 10.0), [0])
    with pytest.raises(ValueError, match="fps must be positive"):
        resample_timestamps(ts, 0.0)
