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

import math
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
from shared.skeleton import MIRROR, NUM_JOINTS, SEGMENT_LATERAL_AXIS

Array = Any

WORLD_UP_AXIS: tuple[float, float, float] = (0.0, 0.0, 1.0)
"""Nymeria / XSens world frame is Z up."""
HEAD_FORWARD_AXIS: tuple[float, float, float] = (0.0, 0.0, 1.0)
"""Viewing direction of the Aria CPF in its own frame (+Z; X left, Y up)."""
HEAD_LATERAL_AXIS: int = 0
"""The left/right axis of the Aria CPF (X left)."""
WORLD_MIRROR_AXIS: int = 1
"""The world axis `mirror_features` reverses (any horizontal axis would do: canonical windows
remove the heading)."""


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
    """World head pose and joints -> (..., T, 294) features (docs/design.md "Features").

    Velocities at a sequence's first frame are zero (`hr_dot` the identity), so call
    this on whole stitched sequences, never on arbitrary windows of one.
    """
    xp = _xp(cpf_translation)
    t_world_head, R_world_head = cpf_translation, cpf_orientation
    *lead, T, _ = t_world_head.shape
    if joint_translation.shape[-2:] != (NUM_JOINTS, 3):
        raise ValueError(
            f"joint_translation must be (..., T, {NUM_JOINTS}, 3), "
            f"found {tuple(joint_translation.shape)}"
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


def features_to_world(features: Array, head_blend: float = 0.0) -> WorldMotion:
    """(..., T, 294) features -> world head pose, joint positions and rotations.

    The head pose comes from `head_pose(features, head_blend)`: with the default 0 the
    absolute fields `hr`, `hp` alone (exact for any stored features); a model's canonical
    output is better decoded with the blend it was trained with (`train.loss`). Joints are
    `R_world_head @ jp + t_world_head`. Rotations are re-orthonormalised by Gram-Schmidt, so
    this also turns network outputs into valid poses.
    """
    _check_dim(features)
    *lead, T, _ = features.shape
    t_world_head, R_world_head = head_pose(features, head_blend)  # (..., T, 3), (..., T, 3, 3)
    jp = features[..., JP].reshape(*lead, T, NUM_JOINTS, 3)
    joint_translation = (R_world_head[..., None, :, :] @ jp[..., None])[..., 0] + t_world_head[
        ..., None, :
    ]
    joint_orientation = rot6d_to_matrix(features[..., JR].reshape(*lead, T, NUM_JOINTS, 6))
    return WorldMotion(t_world_head, R_world_head, joint_translation, joint_orientation)


def head_pose(features: Array, blend: float) -> tuple[Array, Array]:
    """The head trajectory of (..., T, 294) features: (t_world_head, R_world_head).

    A complementary filter of the absolute head pose (`hp`, `hr`) and the per-frame deltas
    (`hp_dot`, `hr_dot`). With D[k] = hp_dot[1] + ... + hp_dot[k] and C[k] = hr_dot[1] @ ...
    @ hr_dot[k] the integrated deltas (D[0] = 0, C[0] = I), the trajectory is the
    integrated one plus a low-passed correction towards the absolute pose:

        t[k] = D[k] + sum_j W[k, j] (hp[j] - D[j])
        R[k] = GS( sum_j W[k, j] (hr[j] @ C[j]^T) @ C[k] )

    with causal weights W[k, 0] = blend^k, W[k, j] = (1 - blend) blend^(k - j) for
    1 <= j <= k (each row sums to 1), i.e. t[k] = blend (t[k-1] + hp_dot[k]) + (1 - blend)
    hp[k]. GS: Gram-Schmidt of the first two columns. `blend` = 0 is the absolute pose
    alone; 1 integrates the deltas from the first frame's pose; in between the deltas carry
    the frame-to-frame motion and the absolute pose pulls drift back with a time constant
    of about 1 / (1 - blend) frames. Why: a decoder reproduces the small, local deltas far
    more precisely than absolute positions metres from the window's origin, and frame-to-
    frame noise of `hp` is what makes world joints jitter and feet skate. On consistent
    features (any stored window) every blend gives exactly `hp`, `hr`. Causal: frame k reads
    frames <= k only. Vectorised over time (a log2(T)-step scan for C), no frame loop.
    """
    if not 0.0 <= blend <= 1.0:
        raise ValueError(f"head blend must be in [0, 1], found {blend}")
    t_abs = features[..., HP]  # (..., T, 3)
    R_abs = rot6d_to_matrix(features[..., HR])  # (..., T, 3, 3)
    if blend == 0.0:
        return t_abs, R_abs
    xp = _xp(features)
    T = features.shape[-2]
    W = as_like(_blend_weights(T, blend), features)  # (T, T)
    t_delta = features[..., HP_DOT]
    D = xp.cumsum(xp.concatenate([xp.zeros_like(t_delta[..., :1, :]), t_delta[..., 1:, :]], -2), -2)
    t = D + xp.einsum("kj,...jc->...kc", W, t_abs - D)
    R_delta = rot6d_to_matrix(features[..., HR_DOT])  # (..., T, 3, 3)
    eye = as_like(np.broadcast_to(np.eye(3), R_delta[..., :1, :, :].shape).copy(), features)
    C = _cumulative_product(xp.concatenate([eye, R_delta[..., 1:, :, :]], -3))
    S = xp.einsum("kj,...jab->...kab", W, R_abs @ transpose(C))
    R = rot6d_to_matrix(matrix_to_6d(S @ C))
    return t, R


def _blend_weights(T: int, blend: float) -> np.ndarray:
    """(T, T) causal weights of `head_pose`: row k averages frames 0..k."""
    k, j = np.arange(T)[:, None], np.arange(T)[None, :]
    W = np.where(j <= k, (1.0 - blend) * blend ** np.clip(k - j, 0, None), 0.0)
    W[:, 0] = blend ** np.arange(T)
    return W


def _cumulative_product(M: Array) -> Array:
    """(..., T, 3, 3) -> running products M[0] @ M[1] @ ... @ M[k] (Hillis-Steele scan)."""
    xp = _xp(M)
    T, d = M.shape[-3], 1
    while d < T:
        M = xp.concatenate([M[..., :d, :, :], M[..., :-d, :, :] @ M[..., d:, :, :]], -3)
        d *= 2
    return M


def integrate_head_deltas(features: Array) -> tuple[Array, Array]:
    """Head pose from the first frame's absolute pose and the per-frame `hp_dot`/`hr_dot`.

    Returns (t_world_head, R_world_head) of shape (..., T, 3) and (..., T, 3, 3); the
    difference to `hp`/`hr` measures drift of the velocity channels.
    """
    return head_pose(features, 1.0)


def decoded_to_world(features: Array, head_blend: float) -> WorldMotion:
    """World motion of a *canonical window* a model decoded, in that window's canonical frame.

    With `head_blend` > 0 the trajectory starts where every canonical window starts, which
    the model need not learn: the first frame's head is above the origin (its horizontal
    `hp` is replaced by 0) with zero heading (the yaw of `hr` is removed); from there
    `head_pose` blends deltas and absolute pose. With 0 this is `features_to_world` (the
    seed's decoding). Exact on any true canonical window, whatever the blend.
    """
    if head_blend == 0.0:
        return features_to_world(features, 0.0)
    xp = _xp(features)
    up = as_like(horizontal_basis(WORLD_UP_AXIS)[2], features)
    t0 = features[..., 0, HP]  # (..., 3)
    t0 = (t0 @ up)[..., None] * up  # height kept, horizontal position 0
    R0 = rot6d_to_matrix(features[..., 0, HR])  # (..., 3, 3)
    R0 = yaw_matrix(-yaw_of(R0, HEAD_FORWARD_AXIS, WORLD_UP_AXIS), WORLD_UP_AXIS) @ R0
    first = xp.concatenate(
        [matrix_to_6d(R0), features[..., 0, HR_DOT], t0, features[..., 0, HP_DOT.start :]], -1
    )
    anchored = xp.concatenate([first[..., None, :], features[..., 1:, :]], -2)
    return features_to_world(anchored, head_blend)


@dataclass(frozen=True)
class CanonicalFrame:
    """The rigid map applied by `canonicalize`:
    p_canon = R_canon_world @ (p_world - offset_world)."""

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
    hp = (R_t @ (features[..., HP] - offset[..., None, :])[..., None])[..., 0]
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


def _mirror_map() -> tuple[np.ndarray, np.ndarray]:
    """(source index, sign) per feature dim: the mirror image is a signed permutation.

    With W the world reflection (WORLD_MIRROR_AXIS reversed) and S a frame's own left/right
    reflection (HEAD_LATERAL_AXIS of the CPF, SEGMENT_LATERAL_AXIS of a segment), a rotation
    R_world_local becomes W R S (a proper rotation again), so its 6D columns c_k become
    s_k W c_k; hr_dot (head frame on both sides) becomes S D S; world vectors W v; head-frame
    vectors S v; and every joint takes its mirror joint's values.
    """

    def reflection(axis: int) -> np.ndarray:
        signs = np.ones(3)
        signs[axis] = -1.0
        return signs

    world = reflection(WORLD_MIRROR_AXIS)
    head, segment = reflection(HEAD_LATERAL_AXIS), reflection(SEGMENT_LATERAL_AXIS)

    def rot6d(outer: np.ndarray, local: np.ndarray) -> np.ndarray:
        return np.concatenate([local[0] * outer, local[1] * outer])

    source, sign = np.arange(FEATURE_DIM), np.ones(FEATURE_DIM)
    sign[HR], sign[HR_DOT] = rot6d(world, head), rot6d(head, head)
    sign[HP], sign[HP_DOT] = world, world
    for field, width, signs in ((JP, 3, head), (JV, 3, head), (JR, 6, rot6d(world, segment))):
        for j, m in enumerate(MIRROR):
            source[field.start + j * width : field.start + (j + 1) * width] = np.arange(
                field.start + m * width, field.start + (m + 1) * width
            )
            sign[field.start + j * width : field.start + (j + 1) * width] = signs
    return source, sign


_MIRROR_SOURCE, _MIRROR_SIGN = _mirror_map()


def mirror_features(features: Array) -> Array:
    """Features (..., 294) of the left/right mirror image of the motion: the world reflected
    across a vertical plane and every Left* segment swapped with its Right* counterpart (the
    skeleton's symmetry). An involution: mirroring twice gives the features back exactly."""
    _check_dim(features)
    xp = _xp(features)
    index = _MIRROR_SOURCE if xp is np else xp.as_tensor(_MIRROR_SOURCE, device=features.device)
    return features[..., index] * as_like(_MIRROR_SIGN, features)


def resample_input_frames(num_frames: int, speed_max: float) -> int:
    """Input frames `resample_features` needs for `num_frames` at up to `speed_max`: the spline's
    frame before input time 1, the motion until time 1 + num_frames * speed_max and two after."""
    return math.floor(1 + num_frames * speed_max) + 3


def resample_features(features: Array, speed: Array, num_frames: int) -> Array:
    """World-feature windows (B, T_in, 294) played `speed` (B,) times as fast: (B, num_frames, 294).

    Output frame j is the motion at input time 1 + (j + 1) * speed frames: the absolute fields
    (`hr`, `hp`, `jp`, `jr`) interpolated by a Catmull-Rom spline through the input frames
    (rotations by their 6D, re-orthonormalised by Gram-Schmidt), the velocity fields (`hr_dot`,
    `hp_dot`, `jv`) differenced afresh from them, so that a frame's velocity is its motion since
    the previous *output* frame (output frame -1, at input time 1: every output frame has a true
    velocity, and the spline has an input frame on either side). The input must hold
    `resample_input_frames(num_frames, max(speed))` frames. An integer speed reads input frames
    only: `speed` 1 gives input frames 2..num_frames + 1 with their velocities.
    """
    _check_dim(features)
    xp = _xp(features)
    B, T_in, _ = features.shape
    tau = 1 + as_like(speed, features)[:, None] * as_like(np.arange(num_frames + 1), features)
    if T_in < resample_input_frames(num_frames, float(speed.max())):
        raise ValueError(
            f"resampling {num_frames} frames at speed up to {float(speed.max()):.3g} needs "
            f"{resample_input_frames(num_frames, float(speed.max()))} input frames, found {T_in}"
        )
    floor = xp.floor(tau)  # (B, T + 1)
    before = floor.long() if xp is not np else floor.astype(np.int64)
    # Whole frames by row number in the flattened batch: one copy of each read frame.
    rows = features.reshape(B * T_in, -1)
    first_row = before[:, :1] * 0 + as_like(np.arange(B)[:, None] * T_in, before)
    p0, p1, p2, p3 = (
        rows[((before + k).clip(0, T_in - 1) + first_row).reshape(-1)].reshape(B, -1, FEATURE_DIM)
        for k in (-1, 0, 1, 2)
    )
    w = (tau - floor)[..., None]
    # Catmull-Rom: through the input frames with continuous velocity (linear interpolation
    # would move at a constant velocity between frames and change it all at once at each).
    w2, w3 = w * w, w * w * w
    x = (
        (w2 - 0.5 * (w + w3)) * p0
        + (1 - 2.5 * w2 + 1.5 * w3) * p1
        + (0.5 * w + 2 * w2 - 1.5 * w3) * p2
        + 0.5 * (w3 - w2) * p3
    )
    R_head = rot6d_to_matrix(x[..., HR])  # (B, T + 1, 3, 3)
    hp, jp = x[..., HP], x[..., JP]
    jr = matrix_to_6d(rot6d_to_matrix(x[..., JR].reshape(B, num_frames + 1, NUM_JOINTS, 6)))
    fields = (
        matrix_to_6d(R_head[:, 1:]),
        matrix_to_6d(relative(R_head[:, :-1], R_head[:, 1:])),
        hp[:, 1:],
        hp[:, 1:] - hp[:, :-1],
        jp[:, 1:],
        jp[:, 1:] - jp[:, :-1],
        jr[:, 1:].reshape(B, num_frames, 6 * NUM_JOINTS),
    )
    return xp.concatenate(fields, -1)
