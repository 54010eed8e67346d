import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from shared.rotations import (
    axis_angle_to_matrix,
    geodesic_angle,
    identity_6d,
    is_rotation,
    matrix_to_6d,
    relative,
    rot6d_to_matrix,
    yaw_matrix,
    yaw_of,
)

finite = st.floats(-1e3, 1e3, allow_nan=False, width=64)
axes = arrays(np.float64, (3,), elements=finite).filter(lambda v: np.linalg.norm(v) > 1e-3)
angles = st.floats(-np.pi, np.pi, allow_nan=False)


def _rot(axis, angle):
    return axis_angle_to_matrix(np.asarray(axis), np.asarray(angle))


@given(axes, angles)
def test_axis_angle_gives_proper_rotation(axis, angle):
    R = _rot(axis, angle)
    assert is_rotation(R, atol=1e-9)
    assert np.isclose(geodesic_angle(np.eye(3), R), abs(angle), atol=1e-7)


@given(axes, angles)
def test_6d_round_trip_numpy_and_torch(axis, angle):
    R = _rot(axis, angle)
    d6 = matrix_to_6d(R)
    assert d6.shape == (6,)
    np.testing.assert_allclose(d6, [R[0, 0], R[1, 0], R[2, 0], R[0, 1], R[1, 1], R[2, 1]])
    np.testing.assert_allclose(rot6d_to_matrix(d6), R, atol=1e-10)
    R_t = torch.as_tensor(R)
    torch.testing.assert_close(rot6d_to_matrix(matrix_to_6d(R_t)), R_t, atol=1e-10, rtol=0)


@given(arrays(np.float64, (6,), elements=st.floats(-10, 10)))
def test_gram_schmidt_returns_rotation_from_any_6d(d6):
    a1, a2 = d6[:3], d6[3:]
    if np.linalg.norm(a1) < 1e-2 or np.linalg.norm(np.cross(a1, a2)) < 1e-2:
        return  # degenerate inputs have no defined rotation
    R = rot6d_to_matrix(d6)
    assert is_rotation(R, atol=1e-9)
    np.testing.assert_allclose(R[:, 0], a1 / np.linalg.norm(a1), atol=1e-9)


def test_identity_6d_and_relative():
    np.testing.assert_array_equal(identity_6d(np.zeros(1), (2,)), [[1, 0, 0, 0, 1, 0]] * 2)
    assert identity_6d(torch.zeros(1, dtype=torch.float32), (3,)).dtype == torch.float32
    Ra, Rb = _rot([0, 0, 1], 0.3), _rot([1, 2, 3], 1.1)
    np.testing.assert_allclose(Ra @ relative(Ra, Rb), Rb, atol=1e-12)


@given(angles, arrays(np.float64, (3,), elements=st.floats(-1, 1)))
def test_yaw_of_matches_heading_for_z_up(angle, noise):
    R = yaw_matrix(np.asarray(angle), (0, 0, 1))
    # A forward axis of +X: the heading is the rotation angle itself.
    assert np.isclose(np.cos(yaw_of(R, (1, 0, 0), (0, 0, 1)) - angle), 1.0)
    # Pitch/roll of a head that also looks down does not change its heading.
    tilt = _rot([0, 1, 0], 0.4)
    assert np.isclose(np.cos(yaw_of(R @ tilt, (1, 0, 0), (0, 0, 1)) - angle), 1.0)


def test_yaw_with_other_up_axis():
    # Y-up world: headings are measured from +X, so +Z-forward is at -90 degrees and
    # turning it by +90 degrees about Y brings it to 0.
    assert np.isclose(yaw_of(np.eye(3), (0, 0, 1), (0, 1, 0)), -np.pi / 2)
    R = yaw_matrix(np.asarray(np.pi / 2), (0, 1, 0))
    assert np.isclose(yaw_of(R, (0, 0, 1), (0, 1, 0)), 0.0, atol=1e-12)
    with pytest.raises(ValueError, match="up_axis"):
        yaw_matrix(np.asarray(0.0), (0, 0, 0))


def test_is_rotation_rejects_reflection_and_scale():
    R = _rot([1, 1, 0], 0.7)
    assert is_rotation(R)
    assert not is_rotation(R * np.array([1, 1, -1]))  # det -1
    assert not is_rotation(R * 1.01)
