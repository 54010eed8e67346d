"""Quaternion conversions and slerp added to shared.rotations for resampling."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as hst

from shared.rotations import (
    axis_angle_to_matrix,
    geodesic_angle,
    is_rotation,
    matrix_to_quaternion,
    quaternion_to_matrix,
    slerp_matrix,
)


def _rotations(seed: int, n: int, near_pi: bool = False) -> np.ndarray:
    rng = np.random.default_rng(seed)
    angle = np.pi - rng.uniform(0, 1e-6, n) if near_pi else rng.uniform(-np.pi, np.pi, n)
    return axis_angle_to_matrix(rng.normal(size=(n, 3)), angle)


@given(seed=hst.integers(0, 1000), near_pi=hst.booleans())
def test_quaternion_round_trip(seed, near_pi):
    R = _rotations(seed, 50, near_pi)
    q = matrix_to_quaternion(R)
    np.testing.assert_allclose(np.linalg.norm(q, axis=-1), 1, atol=1e-12)
    assert (q[..., 0] >= 0).all()
    np.testing.assert_allclose(quaternion_to_matrix(q), R, atol=1e-9)


def test_identity_quaternion():
    np.testing.assert_allclose(matrix_to_quaternion(np.eye(3)), [1, 0, 0, 0])


@given(seed=hst.integers(0, 1000), weight=hst.floats(0, 1))
def test_slerp_moves_along_the_shortest_arc(seed, weight):
    R_a, R_b = _rotations(seed, 20), _rotations(seed + 1, 20)
    R_w = slerp_matrix(R_a, R_b, weight)
    assert is_rotation(R_w, atol=1e-9).all()
    total = geodesic_angle(R_a, R_b)
    np.testing.assert_allclose(geodesic_angle(R_a, R_w), weight * total, atol=1e-7)
    np.testing.assert_allclose(geodesic_angle(R_w, R_b), (1 - weight) * total, atol=1e-7)


def test_slerp_endpoints_and_equal_inputs():
    R_a, R_b = _rotations(0, 5), _rotations(1, 5)
    np.testing.assert_allclose(slerp_matrix(R_a, R_b, 0.0), R_a, atol=1e-12)
    np.testing.assert_allclose(slerp_matrix(R_a, R_b, 1.0), R_b, atol=1e-12)
    np.testing.assert_allclose(slerp_matrix(R_a, R_a, 0.3), R_a, atol=1e-12)
