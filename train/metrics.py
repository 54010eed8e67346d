"""Reconstruction metrics in physical units, on (B, T, ...) tensors with a (B, T) frame mask.

Three layers, all pure torch functions (definitions and units: docs/metrics.md):

* per-element errors without reduction (`joint_distance_m`, `procrustes_align`,
  `finite_difference`, `foot_contact_steps`, `horizontal_displacement_m`, `head_drift`, ...);
* `MaskedSum`: the sum of an error over valid entries and their count, which adds across
  batches exactly, so a metric over many batches is the mean over all its entries;
* `reconstruction_errors`: every metric of `train.evaluate` for one batch of canonical
  features, as `MaskedSum`s keyed by a name that carries the unit (`train.loss.loss_sums`
  does the same for the loss terms). Training validation and `train eval` both pool these.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from shared.features import (
    WORLD_UP_AXIS,
    WorldMotion,
    decoded_to_world,
    features_to_world,
    integrate_head_deltas,
)
from shared.layout import HP, HR, JP
from shared.rotations import geodesic_angle, horizontal_basis, rot6d_to_matrix
from shared.skeleton import FOOT_JOINTS, NUM_JOINTS

MM_PER_M = 1000.0
DEG_PER_RAD = 180.0 / math.pi

CONTACT_HEIGHT_M = 0.05
"""A foot joint may be in contact when it is within this height of its lowest point in the
window."""
CONTACT_SPEED_M_S = 0.2
"""... and moves slower than this between two frames (ground truth); per frame:
`contact_speed_m_per_frame(fps)`."""


def contact_speed_m_per_frame(fps: float) -> float:
    """The contact speed threshold (`CONTACT_SPEED_M_S`) at a store's frame rate, metres/frame."""
    return CONTACT_SPEED_M_S / fps


# Keys of `reconstruction_errors` whose value is a vector rather than a scalar.
RECON_LOSS = "recon_loss"  # mean of the per-group MSEs: the training reconstruction loss
MPJPE_WORLD_BY_FRAME = "mpjpe_world_by_frame_mm"  # (T,) frame index inside the window
MPJPE_HEAD_BY_FRAME = "mpjpe_head_by_frame_mm"  # (T,)
MPJPE_WORLD_PER_JOINT = "mpjpe_world_per_joint_mm"  # (23,) in skeleton.JOINT_NAMES order
MPJPE_HEAD_PER_JOINT = "mpjpe_head_per_joint_mm"  # (23,)


# --- joint views ------------------------------------------------------------------------------


def joints_in_head_frame(features: torch.Tensor) -> torch.Tensor:
    """(B, T, 294) -> (B, T, 23, 3) joint positions in the head (CPF) frame, metres."""
    B, T, _ = features.shape
    return features[..., JP].reshape(B, T, NUM_JOINTS, 3)


# --- per-element errors -----------------------------------------------------------------------


def joint_distance_m(pred_m: torch.Tensor, target_m: torch.Tensor) -> torch.Tensor:
    """(..., 3) positions -> (...) Euclidean distances, in the positions' unit."""
    return (pred_m - target_m).norm(dim=-1)


def procrustes_align(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """`pred` (..., J, 3) moved by the similarity s R p + t that best fits it to `target`.

    Least squares over the J points of each leading index (Umeyama 1991), with reflections
    excluded; solved in float64 on the CPU (MPS has no float64) and returned in `pred`'s
    dtype and device.
    """
    p, q = pred.detach().cpu().double(), target.detach().cpu().double()
    mu_p, mu_q = p.mean(-2, keepdim=True), q.mean(-2, keepdim=True)
    p0, q0 = p - mu_p, q - mu_q  # (..., J, 3)
    cov = q0.transpose(-1, -2) @ p0 / p.shape[-2]  # (..., 3, 3)
    U, S, Vh = torch.linalg.svd(cov)
    d = torch.sign(torch.linalg.det(U) * torch.linalg.det(Vh))
    sign = torch.stack([torch.ones_like(d), torch.ones_like(d), d], -1)  # (..., 3)
    R = U @ (sign[..., None] * Vh)  # U diag(sign) Vh
    var_p = p0.square().sum((-1, -2)) / p.shape[-2]  # (...)
    scale = (S * sign).sum(-1) / var_p.clamp_min(1e-12)
    aligned = scale[..., None, None] * p0 @ R.transpose(-1, -2) + mu_q
    return aligned.to(device=pred.device, dtype=pred.dtype)


def finite_difference(
    x: torch.Tensor, mask: torch.Tensor, order: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """`order`-th difference of (B, T, ...) along time -> (B, T - order, ...) and its
    (B, T - order) mask.

    Entry t is valid when frames t .. t + order all are.
    """
    T = x.shape[1]
    if T <= order:
        raise ValueError(
            f"a difference of order {order} needs more than {order} frames, found T={T}"
        )
    valid = mask[:, : T - order].clone()
    for k in range(1, order + 1):
        valid &= mask[:, k : T - order + k]
    return torch.diff(x, n=order, dim=1), valid


def up_vector(
    like: torch.Tensor, up_axis: tuple[float, float, float] = WORLD_UP_AXIS
) -> torch.Tensor:
    """The unit world up vector as a tensor of `like`'s dtype and device."""
    return torch.as_tensor(horizontal_basis(up_axis)[2], dtype=like.dtype, device=like.device)


def horizontal_displacement_m(
    points_m: torch.Tensor, up_axis: tuple[float, float, float] = WORLD_UP_AXIS
) -> torch.Tensor:
    """(B, T, K, 3) -> (B, T - 1, K): length of the step t -> t + 1 projected on the ground
    plane."""
    up = up_vector(points_m, up_axis)
    step = torch.diff(points_m, dim=1)  # (B, T - 1, K, 3)
    horizontal = step - (step @ up)[..., None] * up
    return horizontal.norm(dim=-1)


def foot_contact_steps(
    joints_m: torch.Tensor,
    mask: torch.Tensor,
    speed_m_per_frame: float,
    height_m: float = CONTACT_HEIGHT_M,
    foot_joints: tuple[int, ...] = FOOT_JOINTS,
    up_axis: tuple[float, float, float] = WORLD_UP_AXIS,
) -> torch.Tensor:
    """Ground-truth contact of each foot joint on each step t -> t + 1: (B, T - 1, F) bool.

    A step is in contact when both frames are valid, the joint is within `height_m` of its
    lowest height over the window's valid frames at both frames (the ground height of a
    Nymeria world frame is not known, and ankle and toe origins sit at different heights),
    and it moves less than `speed_m_per_frame` (3D) over the step.
    """
    feet = joints_m[:, :, list(foot_joints)]  # (B, T, F, 3)
    height = feet @ up_vector(feet, up_axis)  # (B, T, F)
    floor = torch.where(mask[..., None], height, math.inf).amin(1, keepdim=True)  # (B, 1, F)
    low = (height - floor) < height_m
    moved = joint_distance_m(feet[:, 1:], feet[:, :-1])  # (B, T - 1, F)
    both_valid = (mask[:, 1:] & mask[:, :-1])[..., None]
    return both_valid & low[:, 1:] & low[:, :-1] & (moved < speed_m_per_frame)


def head_drift(features: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Disagreement of integrated `hp_dot`/`hr_dot` with the absolute `hp`/`hr` at a window's
    last valid frame.

    (B, T, 294) features -> (position m, rotation rad), each (B,). Integration starts from the
    first frame's absolute pose (`shared.features.integrate_head_deltas`).
    """
    t_int, R_int = integrate_head_deltas(features)  # (B, T, 3), (B, T, 3, 3)
    b = torch.arange(features.shape[0], device=features.device)
    last = (mask.sum(1) - 1).clamp_min(0)
    t_abs = features[b, last, HP]
    R_abs = rot6d_to_matrix(features[b, last, HR])
    return joint_distance_m(t_int[b, last], t_abs), geodesic_angle(R_int[b, last], R_abs)


# --- accumulation -----------------------------------------------------------------------------


@dataclass(frozen=True)
class MaskedSum:
    """Sum of an error over valid entries, and the number of entries; `a + b` pools batches."""

    total: torch.Tensor  # float64: scalar, or one value per kept index (frame, joint)
    count: torch.Tensor  # float64, same shape

    def __add__(self, other: MaskedSum) -> MaskedSum:
        return MaskedSum(self.total + other.total, self.count + other.count)

    def mean(self) -> torch.Tensor:
        """total / count; nan where nothing was counted."""
        return torch.where(self.count > 0, self.total / self.count.clamp_min(1), math.nan)


def masked_sum(values: torch.Tensor, valid: torch.Tensor, keep: tuple[int, ...] = ()) -> MaskedSum:
    """Sum `values` where `valid` (broadcast over trailing axes), reducing every axis not in `keep`.

    The result is float64 on the CPU, ready to be pooled over batches.
    """
    while valid.ndim < values.ndim:
        valid = valid[..., None]
    valid = valid.expand_as(values)
    reduce = tuple(d for d in range(values.ndim) if d not in keep)
    values, valid = values.detach().cpu().double(), valid.cpu()  # float64: CPU only on MPS
    total = torch.where(valid, values, 0.0).sum(reduce)
    count = valid.double().sum(reduce)
    return MaskedSum(total, count)


def reconstruction_errors(
    recon: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor,
    contact_speed_m_per_frame: float,
    contact_height_m: float = CONTACT_HEIGHT_M,
    head_blend: float = 0.0,
) -> dict[str, MaskedSum]:
    """Every reconstruction metric of one batch, pooled over its valid frames.

    recon, target: (B, T, 294) canonical features of the same windows in physical units
    (denormalised); mask: (B, T) bool; contact_speed_m_per_frame: the contact speed
    threshold at the store's frame rate (`contact_speed_m_per_frame(fps)`). Keys carry units;
    `*_by_frame_*` keep the frame index (T,), `*_per_joint_*` the joint index (23,).
    Foot contact comes from the target only. The reconstruction's world motion is decoded
    with `head_blend` (`shared.features.decoded_to_world`), as the model was trained.

    World-frame metrics are computed in the window's canonical frame: it differs from the
    world by one rotation about the vertical and a horizontal shift, shared by recon and
    target, which changes no distance, geodesic angle, height or horizontal length; and
    coordinates near the origin keep float32 precision that room coordinates would lose.
    """
    world_pred, world_gt = decoded_to_world(recon, head_blend), features_to_world(target)
    errors = _pose_errors(recon, target, world_pred, world_gt)
    joints_pred, joints_gt = world_pred.joint_translation, world_gt.joint_translation
    drift_pos_m, drift_rot_rad = head_drift(recon, mask)
    window_valid = mask.any(1)
    return {
        **{key: masked_sum(error, mask) for key, error in errors.items()},
        **_motion_errors(joints_pred, joints_gt, mask, contact_speed_m_per_frame, contact_height_m),
        "head_drift_pos_mm": masked_sum(drift_pos_m * MM_PER_M, window_valid),
        "head_drift_rot_deg": masked_sum(drift_rot_rad * DEG_PER_RAD, window_valid),
        MPJPE_WORLD_BY_FRAME: masked_sum(errors["mpjpe_world_mm"], mask, keep=(1,)),
        MPJPE_HEAD_BY_FRAME: masked_sum(errors["mpjpe_head_mm"], mask, keep=(1,)),
        MPJPE_WORLD_PER_JOINT: masked_sum(errors["mpjpe_world_mm"], mask, keep=(2,)),
        MPJPE_HEAD_PER_JOINT: masked_sum(errors["mpjpe_head_mm"], mask, keep=(2,)),
    }


def _pose_errors(
    recon: torch.Tensor, target: torch.Tensor, world_pred: WorldMotion, world_gt: WorldMotion
) -> dict[str, torch.Tensor]:
    """Per-frame pose errors, (B, T, J) or (B, T): joints in the head frame and in the world
    (also after Procrustes alignment), head position and rotation, joint rotations."""
    joints_pred, joints_gt = world_pred.joint_translation, world_gt.joint_translation
    return {
        "mpjpe_head_mm": joint_distance_m(joints_in_head_frame(recon), joints_in_head_frame(target))
        * MM_PER_M,
        "mpjpe_world_mm": joint_distance_m(joints_pred, joints_gt) * MM_PER_M,
        "pa_mpjpe_mm": joint_distance_m(procrustes_align(joints_pred, joints_gt), joints_gt)
        * MM_PER_M,
        "head_pos_error_mm": joint_distance_m(world_pred.cpf_translation, world_gt.cpf_translation)
        * MM_PER_M,
        "head_rot_error_deg": geodesic_angle(world_pred.cpf_orientation, world_gt.cpf_orientation)
        * DEG_PER_RAD,
        "mpjre_deg": geodesic_angle(world_pred.joint_orientation, world_gt.joint_orientation)
        * DEG_PER_RAD,
    }


def _motion_errors(
    joints_pred: torch.Tensor,
    joints_gt: torch.Tensor,
    mask: torch.Tensor,
    contact_speed_m_per_frame: float,
    contact_height_m: float,
) -> dict[str, MaskedSum]:
    """Acceleration error, jitter and foot skating of world joints (B, T, J, 3)."""
    accel_pred, accel_valid = finite_difference(joints_pred, mask, 2)
    accel_gt, _ = finite_difference(joints_gt, mask, 2)
    accel_err_mm = joint_distance_m(accel_pred, accel_gt) * MM_PER_M  # (B, T - 2, J)
    jerk_pred, jerk_valid = finite_difference(joints_pred, mask, 3)
    jerk_gt, _ = finite_difference(joints_gt, mask, 3)
    contact = foot_contact_steps(joints_gt, mask, contact_speed_m_per_frame, contact_height_m)
    feet = list(FOOT_JOINTS)
    step_valid = mask[:, 1:] & mask[:, :-1]
    skate_pred_mm = horizontal_displacement_m(joints_pred[:, :, feet]) * MM_PER_M  # (B, T - 1, F)
    skate_gt_mm = horizontal_displacement_m(joints_gt[:, :, feet]) * MM_PER_M
    return {
        "accel_error_mm_per_frame2": masked_sum(accel_err_mm, accel_valid),
        "jitter_pred_mm_per_frame3": masked_sum(jerk_pred.norm(dim=-1) * MM_PER_M, jerk_valid),
        "jitter_gt_mm_per_frame3": masked_sum(jerk_gt.norm(dim=-1) * MM_PER_M, jerk_valid),
        "foot_skating_pred_mm_per_frame": masked_sum(skate_pred_mm, contact),
        "foot_skating_gt_mm_per_frame": masked_sum(skate_gt_mm, contact),
        "foot_contact_fraction": masked_sum(contact.float(), step_valid),
    }


def pool(batches: list[dict[str, MaskedSum]]) -> dict[str, MaskedSum]:
    """Add the `MaskedSum`s of several batches key by key."""
    if not batches:
        raise ValueError("pool needs at least one batch of metrics")
    pooled = dict(batches[0])
    for batch in batches[1:]:
        for key, value in batch.items():
            pooled[key] = pooled[key] + value
    return pooled
