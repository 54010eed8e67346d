"""World motion <-> 294-D head-centric features, and per-window canonicalisation.

One implementation serves numpy (preprocessing, float64 checks) and torch (batched on
the training device): every function takes arrays whose trailing axes are the per-frame
shapes below, with time on the axis just before them and any batch axes in front.

    cpf_translation   (..., T, 3)        t_world_head, metres
    cpf_orientation   (..., T, 3, 3)     R_world_head (head = Aria CPF)
    joint_translation (..., T, 23, 3)    p_world_joint, metres
    joint_orientation (..., T, 23, 3, 3) R_world_joint
    features          (..., T, 294)      layout in `shared.layout`

Conventions (Nymeria; see README "Conventions"): world Z up; the CPF looks along its
+Z axis (X left, Y up), so heading is the yaw of R_world_head @ [0, 0, 1].
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from shared.layout import FEATURE_DIM, HP, HP_DOT, HR, HR_DOT, JP, JR, JV
from shared.rotations import (
    _xp,
    as_like,
    horizontal_basis,
    identity_6d,
    matrix_to_6d,
    relative,
    rot6d_to_matrix,
    transpose,
    yaw_matrix,
    yaw_of,
)
from shared.skeleton import NUM_JOINTS

Array = Any

WORLD_UP_AXIS: tuple[float, float, float] = (0.0, 0.0, 1.0)
"""Nymeria / XSens world frame is Z up."""
HEAD_FORWARD_AXIS: tuple[float, float, float] = (0.0, 0.0, 1.0)
"""Viewing direction of the Aria CPF in its own frame (+Z; X left, Y up)."""


@dataclass(frozen=True)
class WorldMotion:
    """World-frame motion, the inverse image of the feature vector."""

    cpf_translation: Array  # (..., T, 3)
    cpf_orientation: Array  # (..., T, 3, 3)
    joint_translation: Array  # (..., T, 23, 3)
    joint_orientation: Array  # (..., T, 23, 3, 3)


def _first_difference(x: Array, first: Array) -> Array:
    """x[t] - x[t-1] along the time axis (-2 of a (..., T, D) array), `first` at t = 0."""
    xp = _xp(x)
    return xp.concatenate([first, x[..., 1:, :] - x[..., :-1, :]], -2)


def world_to_features(
    cpf_translation: Array,
    cpf_orientation: Array,
    joint_translation: Array,
    joint_orientation: Array,
) -> Array:
    """World head pose and joints -> (..., T, 294) features (DESIGN.md "Features").

    Velocities at a sequence's first frame are zero (`hr_dot` the identity), so call
    this on whole stitched sequences, never on arbitrary windows of one.
    """
    xp = _xp(cpf_translation)
    t_world_head, R_world_head = cpf_translation, cpf_orientation
    *lead, T, _ = t_world_head.shape
    if joint_translation.shape[-2:] != (NUM_JOINTS, 3):
        raise ValueError(
            f"joint_translation must be (..., T, {NUM_JOINTS}, 3), found {tuple(joint_translation.shape)}"
        )

    hr = matrix_to_6d(R_world_head)  # (..., T, 6)
    R_prev_cur = relative(R_world_head[..., :-1, :, :], R_world_head[..., 1:, :, :])
    hr_dot = xp.concatenate(
        [identity_6d(hr, (*lead, 1)), matrix_to_6d(R_prev_cur)], -2
    )  # (..., T, 6)
    hp_dot = _first_difference(t_world_head, xp.zeros_like(t_world_head[..., :1, :]))
    # R_head^T (p_j - t_head): joints in the head frame.
    offset_world = joint_translation - t_world_head[..., None, :]  # (..., T, J, 3)
    jp = (transpose(R_world_head)[..., None, :, :] @ offset_world[..., None])[..., 0]
    jp = jp.reshape(*lead, T, 3 * NUM_JOINTS)
    jv = _first_difference(jp, xp.zeros_like(jp[..., :1, :]))
    jr = matrix_to_6d(joint_orientation).reshape(*lead, T, 6 * NUM_JOINTS)
    return xp.concatenate([hr, hr_dot, t_world_head, hp_dot, jp, jv, jr], -1)


def sequence_features(
    cpf_translation: Array,
    cpf_orientation: Array,
    joint_translation: Array,
    joint_orientation: Array,
) -> np.ndarray:
    """Whole sequences of world motion (numpy, any float dtype) -> (..., T, 294) float32 features.

    Computed in float64 and rounded once: the values a feature store holds for the same motion.
    """
    f64 = np.float64
    features = world_to_features(
        np.asarray(cpf_translation, dtype=f64),
        np.asarray(cpf_orientation, dtype=f64),
        np.asarray(joint_translation, dtype=f64),
        np.asarray(joint_orientation, dtype=f64),
    )
    return features.astype(np.float32)


def features_to_world(features: Array) -> WorldMotion:
    """(..., T, 294) features -> world head pose, joint positions and rotations.

    Uses only the absolute fields (`hr`, `hp`, `jp`, `jr`); rotations are re-orthonormalised
    by Gram-Schmidt, so this also turns network outputs into valid poses.
    """
    _check_dim(features)
    *lead, T, _ = features.shape
    R_world_head = rot6d_to_matrix(features[..., HR])  # (..., T, 3, 3)
    t_world_head = features[..., HP]
    jp = features[..., JP].reshape(*lead, T, NUM_JOINTS, 3)
    joint_translation = (R_world_head[..., None, :, :] @ jp[..., None])[..., 0] + t_world_head[
        ..., None, :
    ]
    joint_orientation = rot6d_to_matrix(features[..., JR].reshape(*lead, T, NUM_JOINTS, 6))
    return WorldMotion(t_world_head, R_world_head, joint_translation, joint_orientation)


def integrate_head_deltas(features: Array) -> tuple[Array, Array]:
    """Head pose from the first frame's absolute pose and the per-frame `hp_dot`/`hr_dot`.

    Returns (t_world_head, R_world_head) of shape (..., T, 3) and (..., T, 3, 3); the
    difference to `hp`/`hr` measures drift of the velocity channels.
    """
    xp = _xp(features)
    t = features[..., :1, HP] + xp.cumsum(
        xp.concatenate([xp.zeros_like(features[..., :1, HP_DOT]), features[..., 1:, HP_DOT]], -2),
        -2,
    )
    R_delta = rot6d_to_matrix(features[..., HR_DOT])
    Rs = [rot6d_to_matrix(features[..., 0, HR])]
    for k in range(1, features.shape[-2]):
        Rs.append(Rs[-1] @ R_delta[..., k, :, :])
    return t, xp.stack(Rs, -3)


@dataclass(frozen=True)
class CanonicalFrame:
    """The rigid map applied by `canonicalize`: p_canon = R_canon_world @ (p_world - offset_world)."""

    R_canon_world: Array  # (..., 3, 3) rotation about the world up axis
    offset_world: Array  # (..., 3) horizontal position of the head at the window's first frame


def canonical_frame(
    features: Array,
    up_axis: tuple[float, float, float] = WORLD_UP_AXIS,
    head_forward_axis: tuple[float, float, float] = HEAD_FORWARD_AXIS,
) -> CanonicalFrame:
    """The transform that puts the first frame's head above the origin with zero heading."""
    _check_dim(features)
    R_world_head0 = rot6d_to_matrix(features[..., 0, HR])  # (..., 3, 3)
    heading = yaw_of(R_world_head0, head_forward_axis, up_axis)  # (...)
    R_canon_world = yaw_matrix(-heading, up_axis)
    up = as_like(horizontal_basis(up_axis)[2], features)
    t0 = features[..., 0, HP]  # (..., 3)
    offset_world = t0 - (t0 @ up)[..., None] * up  # height kept
    return CanonicalFrame(R_canon_world, offset_world)


def apply_rigid(features: Array, R: Array, offset: Array) -> Array:
    """Features of the motion moved by p -> R @ (p - offset); hr_dot, jp, jv are invariant."""
    _check_dim(features)
    xp = _xp(features)
    *lead, T, _ = features.shape
    R_t = R[..., None, :, :]  # broadcast over time
    hr = matrix_to_6d(R_t @ rot6d_to_matrix(features[..., HR]))
    hp = ((R_t @ (features[..., HP] - offset[..., None, :])[..., None]))[..., 0]
    hp_dot = (R_t @ features[..., HP_DOT][..., None])[..., 0]
    jr6 = features[..., JR].reshape(*lead, T, NUM_JOINTS, 6)
    jr = matrix_to_6d(R_t[..., None, :, :] @ rot6d_to_matrix(jr6)).reshape(*lead, T, -1)
    return xp.concatenate(
        [hr, features[..., HR_DOT], hp, hp_dot, features[..., JP], features[..., JV], jr], -1
    )


def canonicalize(
    features: Array,
    up_axis: tuple[float, float, float] = WORLD_UP_AXIS,
    head_forward_axis: tuple[float, float, float] = HEAD_FORWARD_AXIS,
) -> tuple[Array, CanonicalFrame]:
    """Windows (..., T, 294) of world features -> canonical windows and the frame used.

    Each window is expressed relative to its own first frame: translated so the head is
    above the origin (height kept) and rotated about the up axis to zero heading.
    """
    frame = canonical_frame(features, up_axis, head_forward_axis)
    return apply_rigid(features, frame.R_canon_world, frame.offset_world), frame


def uncanonicalize(features: Array, frame: CanonicalFrame) -> Array:
    """Inverse of `canonicalize`: canonical windows back to world features."""
    R_world_canon = transpose(frame.R_canon_world)
    # p_world = R^T p_canon + offset  ==  R^T (p_canon - (-R offset))
    minus_offset_canon = -(frame.R_canon_world @ frame.offset_world[..., None])[..., 0]
    return apply_rigid(features, R_world_canon, minus_offset_canon)


def _check_dim(features: Array) -> None:
    if features.shape[-1] != FEATURE_DIM:
        raise ValueError(
            f"features must have {FEATURE_DIM} channels in the last axis, found shape "
            f"{tuple(features.shape)}"
        )
