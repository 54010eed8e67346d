"""Rotation helpers written once for numpy arrays and torch tensors.

Each function picks its array namespace from its input (`_xp`), using only names that
numpy and torch share (`stack`, `concatenate`, `einsum`, `arctan2`, ...), so the two
backends cannot drift apart. Matrices act on column vectors: `p_world = R @ p_local`.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np

Array = Any  # np.ndarray or torch.Tensor

_EPS = 1e-12


def _xp(x: Array) -> ModuleType:
    """numpy or torch, whichever `x` belongs to (torch is imported only if x is a tensor)."""
    if type(x).__module__.startswith("torch"):
        import torch

        return torch
    return np


def as_like(value: Any, like: Array) -> Array:
    """`value` as an array of the same backend, dtype (and device) as `like`."""
    xp = _xp(like)
    if xp is np:
        return np.asarray(value, dtype=like.dtype)
    return xp.as_tensor(value, dtype=like.dtype, device=like.device)


def transpose(R: Array) -> Array:
    """Swap the last two axes (the inverse of a batch of rotations)."""
    return R.swapaxes(-1, -2)


def _normalize(v: Array) -> Array:
    return v / ((v * v).sum(-1)[..., None] ** 0.5).clip(_EPS)


def cross(a: Array, b: Array) -> Array:
    xp = _xp(a)
    ax, ay, az = a[..., 0], a[..., 1], a[..., 2]
    bx, by, bz = b[..., 0], b[..., 1], b[..., 2]
    return xp.stack([ay * bz - az * by, az * bx - ax * bz, ax * by - ay * bx], -1)


def matrix_to_6d(R: Array) -> Array:
    """(..., 3, 3) -> (..., 6): first two columns, `[R00, R10, R20, R01, R11, R21]`."""
    return _xp(R).concatenate([R[..., :, 0], R[..., :, 1]], -1)


def rot6d_to_matrix(d6: Array) -> Array:
    """(..., 6) -> (..., 3, 3) by Gram-Schmidt on the two stored columns."""
    xp = _xp(d6)
    a1, a2 = d6[..., 0:3], d6[..., 3:6]
    b1 = _normalize(a1)
    b2 = _normalize(a2 - (b1 * a2).sum(-1)[..., None] * b1)
    b3 = cross(b1, b2)
    return xp.stack([b1, b2, b3], -1)  # columns


def identity_6d(like: Array, shape: tuple[int, ...] = ()) -> Array:
    """6D of the identity, `[1,0,0,0,1,0]`, broadcast to `shape + (6,)` (a fresh array)."""
    eye6 = np.array([1.0, 0.0, 0.0, 0.0, 1.0, 0.0])
    return as_like(np.broadcast_to(eye6, shape + (6,)).copy(), like)


def relative(R_a: Array, R_b: Array) -> Array:
    """`R_a^T @ R_b`: rotation of frame b expressed in frame a."""
    return transpose(R_a) @ R_b


def axis_angle_to_matrix(axis: Array, angle: Array) -> Array:
    """Rodrigues. `axis` (..., 3) (normalised here), `angle` (...) radians -> (..., 3, 3)."""
    xp = _xp(angle)
    u = _normalize(as_like(axis, angle) + xp.zeros_like(angle)[..., None])
    c, s = xp.cos(angle)[..., None, None], xp.sin(angle)[..., None, None]
    ux, uy, uz = u[..., 0], u[..., 1], u[..., 2]
    zero = xp.zeros_like(ux)
    K = xp.stack(
        [
            xp.stack([zero, -uz, uy], -1),
            xp.stack([uz, zero, -ux], -1),
            xp.stack([-uy, ux, zero], -1),
        ],
        -2,
    )
    uuT = u[..., :, None] * u[..., None, :]
    eye = as_like(np.eye(3), angle)
    return c * eye + s * K + (1 - c) * uuT


def horizontal_basis(up_axis: Array) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Right-handed world basis (e1, e2, up) with e1 the world axis least aligned with up.

    Heading (yaw) is measured in the (e1, e2) plane from e1 towards e2; for Nymeria's
    Z-up world this is the usual `atan2(y, x)`.
    """
    up = np.asarray(up_axis, dtype=np.float64)
    norm = np.linalg.norm(up)
    if not np.isfinite(norm) or norm < 1e-9:
        raise ValueError(f"up_axis must be a non-zero 3-vector, found {up_axis!r}")
    up = up / norm
    e1 = np.eye(3)[int(np.argmin(np.abs(up)))]
    e1 = e1 - (e1 @ up) * up
    e1 /= np.linalg.norm(e1)
    e2 = np.cross(up, e1)
    return e1, e2, up


def yaw_of(R: Array, forward_axis: Array, up_axis: Array) -> Array:
    """Heading angle (radians) of a body whose local `forward_axis` is rotated by R (..., 3, 3)."""
    xp = _xp(R)
    e1, e2, _ = horizontal_basis(up_axis)
    fwd_world = R @ as_like(forward_axis, R)  # (..., 3)
    return xp.arctan2(fwd_world @ as_like(e2, R), fwd_world @ as_like(e1, R))


def yaw_matrix(angle: Array, up_axis: Array) -> Array:
    """Rotation by `angle` (...) about the world up axis -> (..., 3, 3)."""
    _, _, up = horizontal_basis(up_axis)
    return axis_angle_to_matrix(up, angle)


def is_rotation(R: np.ndarray, atol: float = 1e-3) -> np.ndarray:
    """Per-matrix check (..., 3, 3) -> (...,) bool: orthonormal and det +1 within `atol`.

    Orthonormality error is max |R^T R - I| over entries. Written out entry by entry: numpy's
    batched 3x3 matmul and det loop over tiny matrices and are ~8x slower on clip-sized input.
    """
    R = np.asarray(R)
    r00, r01, r02, r10, r11, r12, r20, r21, r22 = R.reshape(-1, 9).T
    columns = ((r00, r10, r20), (r01, r11, r21), (r02, r12, r22))
    ortho_err = np.zeros(r00.shape, dtype=np.result_type(R.dtype, np.float32))
    for i in range(3):
        for j in range(i, 3):  # R^T R is symmetric
            dot = sum(a * b for a, b in zip(columns[i], columns[j], strict=True))
            np.maximum(ortho_err, np.abs(dot - (1.0 if i == j else 0.0)), out=ortho_err)
    det = (
        r00 * (r11 * r22 - r12 * r21)
        - r01 * (r10 * r22 - r12 * r20)
        + r02 * (r10 * r21 - r11 * r20)
    )
    ok = (ortho_err <= atol) & (np.abs(det - 1.0) <= atol)
    return ok.reshape(R.shape[:-2])


def geodesic_angle(R_a: Array, R_b: Array) -> Array:
    """Angle (radians) of `R_a^T R_b`, robust near 0 and pi."""
    xp = _xp(R_a)
    R = relative(R_a, R_b)
    cos = (R[..., 0, 0] + R[..., 1, 1] + R[..., 2, 2] - 1) / 2
    # atan2 of (|axis * sin|, cos) keeps precision near 0 where arccos does not.
    skew = xp.stack(
        [R[..., 2, 1] - R[..., 1, 2], R[..., 0, 2] - R[..., 2, 0], R[..., 1, 0] - R[..., 0, 1]], -1
    )
    sin = ((skew * skew).sum(-1)) ** 0.5 / 2
    return xp.arctan2(sin, cos)


def matrix_to_quaternion(R: np.ndarray) -> np.ndarray:
    """(..., 3, 3) rotations -> (..., 4) unit quaternions `(w, x, y, z)` with w >= 0 (numpy).

    Shepperd's method: of the four algebraically equal formulas, each matrix uses the one with
    the largest square root, so the result stays accurate near 180-degree rotations.
    """
    R = np.asarray(R, dtype=np.float64)
    r00, r11, r22 = R[..., 0, 0], R[..., 1, 1], R[..., 2, 2]
    diag = np.stack(
        [1 + r00 + r11 + r22, 1 + r00 - r11 - r22, 1 - r00 + r11 - r22, 1 - r00 - r11 + r22], -1
    )  # (..., 4): 4 w^2, 4 x^2, 4 y^2, 4 z^2
    k = np.argmax(diag, -1)
    s = np.sqrt(np.maximum(np.take_along_axis(diag, k[..., None], -1)[..., 0], _EPS))  # 4 |q_k| / 2
    d21, d02, d10 = (
        R[..., 2, 1] - R[..., 1, 2],
        R[..., 0, 2] - R[..., 2, 0],
        R[..., 1, 0] - R[..., 0, 1],
    )
    s01, s02, s12 = (
        R[..., 0, 1] + R[..., 1, 0],
        R[..., 0, 2] + R[..., 2, 0],
        R[..., 1, 2] + R[..., 2, 1],
    )
    candidates = np.stack(
        [
            np.stack([s * s, d21, d02, d10], -1),
            np.stack([d21, s * s, s01, s02], -1),
            np.stack([d02, s01, s * s, s12], -1),
            np.stack([d10, s02, s12, s * s], -1),
        ],
        -2,
    )  # (..., 4 formulas, 4 components), each = 2 s * q
    q = np.take_along_axis(candidates, k[..., None, None], -2)[..., 0, :] / (2 * s[..., None])
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    return np.where(q[..., :1] < 0, -q, q)


def quaternion_to_matrix(q: np.ndarray) -> np.ndarray:
    """(..., 4) quaternions `(w, x, y, z)` (normalised here) -> (..., 3, 3) rotations (numpy)."""
    q = np.asarray(q, dtype=np.float64)
    w, x, y, z = np.moveaxis(q / np.linalg.norm(q, axis=-1, keepdims=True), -1, 0)
    return np.stack(
        [
            np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], -1),
            np.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], -1),
            np.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1),
        ],
        -2,
    )


def slerp_matrix(R_a: np.ndarray, R_b: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Spherical linear interpolation from R_a (weight 0) to R_b (weight 1), shortest arc (numpy).

    `R_a`, `R_b` (..., 3, 3); `weight` broadcastable to their batch shape `(...)`.
    """
    q_a, q_b = matrix_to_quaternion(R_a), matrix_to_quaternion(R_b)
    dot = (q_a * q_b).sum(-1)
    q_b = np.where(dot[..., None] < 0, -q_b, q_b)  # shortest arc
    dot = np.abs(dot).clip(max=1.0)
    w = np.asarray(weight, dtype=np.float64)
    theta = np.arccos(dot)
    sin_theta = np.sin(theta)
    near = sin_theta < 1e-6  # (almost) equal rotations: linear blend, renormalised below
    safe = np.where(near, 1.0, sin_theta)
    c_a = np.where(near, 1 - w, np.sin((1 - w) * theta) / safe)
    c_b = np.where(near, w, np.sin(w * theta) / safe)
    return quaternion_to_matrix(c_a[..., None] * q_a + c_b[..., None] * q_b)
