"""Reconstruction metrics on constructed motions whose errors are known in closed form."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from shared.features import (
    apply_rigid,
    canonicalize,
    features_to_world,
    uncanonicalize,
    world_to_features,
)
from shared.layout import HP_DOT
from shared.rotations import axis_angle_to_matrix
from shared.skeleton import FOOT_JOINTS, NUM_JOINTS
from train.metrics import (
    MaskedSum,
    finite_difference,
    foot_contact_steps,
    head_drift,
    horizontal_displacement_m,
    masked_sum,
    pool,
    procrustes_align,
    reconstruction_errors,
)

T = 24
FPS = 30.0
SPEED_M_PER_FRAME = 0.2 / FPS
VELOCITY_M_PER_FRAME = torch.tensor([0.02, 0.01, 0.0], dtype=torch.float64)


def walking_motion(seed: int = 0, B: int = 2):
    """World motion (float64): a head moving at constant velocity with a rotating gaze, joints
    at fixed random offsets below it; feet on the ground, left foot planted, right foot stepping."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(T, dtype=torch.float64)[:, None]
    start = torch.randn(B, 1, 3, generator=g, dtype=torch.float64) * torch.tensor([2.0, 2.0, 0.0])
    t_head = start + torch.tensor([0.0, 0.0, 1.6], dtype=torch.float64) + t * VELOCITY_M_PER_FRAME
    axis = torch.randn(B, 1, 3, generator=g, dtype=torch.float64)
    R_head = axis_angle_to_matrix(axis, 0.3 + 0.02 * t.T.expand(B, T))  # (B, T, 3, 3)
    offsets = torch.randn(B, 1, NUM_JOINTS, 3, generator=g, dtype=torch.float64) * 0.3
    p_joints = t_head[:, :, None] + offsets - torch.tensor([0.0, 0.0, 0.8], dtype=torch.float64)
    R_joints = axis_angle_to_matrix(
        torch.randn(B, 1, NUM_JOINTS, 3, generator=g, dtype=torch.float64),
        torch.linspace(0, 1, T, dtype=torch.float64)[None, :, None].expand(B, T, NUM_JOINTS),
    )
    return t_head, R_head, p_joints, R_joints


def canonical(motion):
    return canonicalize(world_to_features(*motion))


def errors(recon_world_motion, target_world_motion, mask=None):
    """Metrics of a reconstruction given as world motion, both canonicalised with the target's
    frame."""
    target, frame = canonical(target_world_motion)
    # The reconstruction lives in the target's canonical frame, as in evaluation.
    recon = apply_rigid(
        world_to_features(*recon_world_motion), frame.R_canon_world, frame.offset_world
    )
    mask = torch.ones(target.shape[:2], dtype=torch.bool) if mask is None else mask
    sums = reconstruction_errors(recon, target, mask, SPEED_M_PER_FRAME)
    return {k: v.mean() for k, v in sums.items()}


def test_identity_gives_zero_error():
    motion = walking_motion()
    m = errors(motion, motion)
    for key in (
        "mpjpe_head_mm",
        "mpjpe_world_mm",
        "pa_mpjpe_mm",
        "head_pos_error_mm",
        "head_rot_error_deg",
        "mpjre_deg",
        "accel_error_mm_per_frame2",
        "head_drift_pos_mm",
        "head_drift_rot_deg",
    ):
        assert float(m[key]) == pytest.approx(0.0, abs=1e-5), key
    assert torch.allclose(
        m["mpjpe_world_by_frame_mm"], torch.zeros(T, dtype=torch.float64), atol=1e-6
    )
    assert m["mpjpe_world_per_joint_mm"].shape == (NUM_JOINTS,)
    # Jitter of the ground truth equals that of an identical prediction.
    assert float(m["jitter_pred_mm_per_frame3"]) == pytest.approx(
        float(m["jitter_gt_mm_per_frame3"])
    )


def test_known_joint_offset_gives_known_error():
    t_head, R_head, p_joints, R_joints = walking_motion()
    offset_m = torch.tensor([0.03, -0.04, 0.0], dtype=torch.float64)  # 50 mm
    m = errors(
        (t_head, R_head, p_joints + offset_m, R_joints), (t_head, R_head, p_joints, R_joints)
    )
    assert float(m["mpjpe_world_mm"]) == pytest.approx(50.0, abs=1e-6)
    assert float(m["mpjpe_head_mm"]) == pytest.approx(50.0, abs=1e-6)  # a rotation keeps lengths
    assert float(m["pa_mpjpe_mm"]) == pytest.approx(0.0, abs=1e-6)  # a translation aligns away
    assert float(m["head_pos_error_mm"]) == pytest.approx(0.0, abs=1e-9)
    assert float(m["accel_error_mm_per_frame2"]) == pytest.approx(0.0, abs=1e-6)
    by_frame = m["mpjpe_world_by_frame_mm"]
    assert torch.allclose(by_frame, torch.full((T,), 50.0, dtype=torch.float64), atol=1e-6)


def test_head_translation_moves_world_joints_not_head_frame_joints():
    t_head, R_head, p_joints, R_joints = walking_motion()
    shift_m = torch.tensor([0.0, 0.0, 0.02], dtype=torch.float64)
    m = errors(
        (t_head + shift_m, R_head, p_joints + shift_m, R_joints),
        (t_head, R_head, p_joints, R_joints),
    )
    assert float(m["head_pos_error_mm"]) == pytest.approx(20.0, abs=1e-6)
    assert float(m["mpjpe_world_mm"]) == pytest.approx(20.0, abs=1e-6)
    assert float(m["mpjpe_head_mm"]) == pytest.approx(0.0, abs=1e-6)


@given(st.floats(0.01, 3.1), st.integers(0, 1000))
def test_head_rotation_error_of_a_known_rotation_is_its_angle(angle_rad, seed):
    t_head, R_head, p_joints, R_joints = walking_motion(seed)
    axis = torch.randn(3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    R_err = axis_angle_to_matrix(axis, torch.tensor(angle_rad, dtype=torch.float64))
    m = errors(
        (t_head, R_head @ R_err, p_joints, R_joints @ R_err), (t_head, R_head, p_joints, R_joints)
    )
    assert float(m["head_rot_error_deg"]) == pytest.approx(math.degrees(angle_rad), abs=1e-5)
    assert float(m["mpjre_deg"]) == pytest.approx(math.degrees(angle_rad), abs=1e-5)
    assert float(m["mpjpe_world_mm"]) == pytest.approx(0.0, abs=1e-6)  # world joints unchanged


@given(st.integers(0, 2**31 - 1))
def test_pa_mpjpe_is_invariant_to_a_similarity_of_the_prediction(seed):
    g = torch.Generator().manual_seed(seed)
    target = torch.randn(3, 5, NUM_JOINTS, 3, generator=g, dtype=torch.float64)
    pred = target + 0.1 * torch.randn(target.shape, generator=g, dtype=torch.float64)
    R = axis_angle_to_matrix(
        torch.randn(3, generator=g, dtype=torch.float64),
        torch.rand((), generator=g, dtype=torch.float64) * 3,
    )
    scale = 0.5 + 2 * torch.rand((), generator=g, dtype=torch.float64)
    moved = scale * pred @ R.T + torch.randn(3, generator=g, dtype=torch.float64)
    err = (procrustes_align(pred, target) - target).norm(dim=-1)
    err_moved = (procrustes_align(moved, target) - target).norm(dim=-1)
    assert torch.allclose(err, err_moved, atol=1e-9)
    exact = scale * target @ R.T - 1.0
    assert torch.allclose(procrustes_align(exact, target), target, atol=1e-9)


def test_procrustes_never_reflects():
    target = torch.randn(
        NUM_JOINTS, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1)
    )
    mirrored = target * torch.tensor([-1.0, 1.0, 1.0], dtype=torch.float64)
    err = (procrustes_align(mirrored, target) - target).norm(dim=-1).mean()
    assert float(err) > 0.05


def test_jitter_and_acceleration_of_constant_velocity_are_zero():
    t = torch.arange(T, dtype=torch.float64)[None, :, None, None]
    path = torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64) + t * torch.tensor(
        [0.01, -0.02, 0.005]
    )
    mask = torch.ones(1, T, dtype=torch.bool)
    jerk, valid = finite_difference(path, mask, 3)
    accel, _ = finite_difference(path, mask, 2)
    assert jerk.shape == (1, T - 3, 1, 3) and valid.all()
    assert float(jerk.abs().max()) < 1e-12 and float(accel.abs().max()) < 1e-12


def test_acceleration_error_of_a_known_quadratic():
    motion = walking_motion()
    t_head, R_head, p_joints, R_joints = motion
    a_m = torch.tensor([0.0, 0.003, 0.004], dtype=torch.float64)  # 5 mm/frame^2 second difference
    t = torch.arange(T, dtype=torch.float64)[:, None, None]
    m = errors((t_head, R_head, p_joints + 0.5 * a_m * t**2, R_joints), motion)
    assert float(m["accel_error_mm_per_frame2"]) == pytest.approx(5.0, abs=1e-6)
    assert float(m["jitter_pred_mm_per_frame3"]) == pytest.approx(
        float(m["jitter_gt_mm_per_frame3"]), abs=1e-6
    )


def test_finite_difference_masks_every_touched_frame():
    mask = torch.ones(1, 10, dtype=torch.bool)
    mask[0, 8:] = False
    _, valid = finite_difference(torch.zeros(1, 10, 3), mask, 2)
    assert valid.tolist() == [[True] * 6 + [False] * 2]
    with pytest.raises(ValueError, match="order 3 needs more than 3 frames"):
        finite_difference(torch.zeros(1, 3, 3), torch.ones(1, 3, dtype=torch.bool), 3)


def feet_trajectory(slide_m_per_frame: float) -> torch.Tensor:
    """(1, T, 23, 3) joints: all feet planted on the floor, lifted joints elsewhere; the
    first foot joint optionally sliding along x at a constant speed."""
    joints = torch.zeros(1, T, NUM_JOINTS, 3, dtype=torch.float64)
    joints[..., 2] = 1.0  # everything else high above the feet
    for k, j in enumerate(FOOT_JOINTS):
        joints[:, :, j] = torch.tensor([0.1 * k, 0.2, 0.02 + 0.05 * (k % 2)], dtype=torch.float64)
    sliding_foot = FOOT_JOINTS[0]
    joints[0, :, sliding_foot, 0] += slide_m_per_frame * torch.arange(T, dtype=torch.float64)
    return joints


def skating_mm(pred: torch.Tensor, gt: torch.Tensor) -> tuple[float, float, torch.Tensor]:
    mask = torch.ones(1, T, dtype=torch.bool)
    contact = foot_contact_steps(gt, mask, SPEED_M_PER_FRAME)
    feet = list(FOOT_JOINTS)
    pred_mm = masked_sum(horizontal_displacement_m(pred[:, :, feet]) * 1000, contact).mean()
    gt_mm = masked_sum(horizontal_displacement_m(gt[:, :, feet]) * 1000, contact).mean()
    return float(pred_mm), float(gt_mm), contact


def test_foot_skating_is_zero_for_planted_feet():
    planted = feet_trajectory(0.0)
    pred_mm, gt_mm, contact = skating_mm(planted, planted)
    assert contact.all()
    assert pred_mm == 0.0 and gt_mm == 0.0


def test_foot_skating_of_a_sliding_foot_is_its_speed():
    planted = feet_trajectory(0.0)
    sliding = feet_trajectory(0.004)  # 4 mm/frame on one of four feet, contact taken from gt
    pred_mm, gt_mm, contact = skating_mm(sliding, planted)
    assert contact.all()
    assert pred_mm == pytest.approx(4.0 / len(FOOT_JOINTS))
    assert gt_mm == 0.0


def test_moving_or_lifted_feet_are_not_in_contact():
    fast = feet_trajectory(0.05)  # 1.5 m/s: swing, not contact
    contact = foot_contact_steps(fast, torch.ones(1, T, dtype=torch.bool), SPEED_M_PER_FRAME)
    assert not contact[..., 0].any() and contact[..., 1:].all()
    lifted = feet_trajectory(0.0)
    lifted[0, 10:, FOOT_JOINTS[1], 2] += 0.2
    contact = foot_contact_steps(lifted, torch.ones(1, T, dtype=torch.bool), SPEED_M_PER_FRAME)
    assert contact[0, :9, 1].all() and not contact[0, 9:, 1].any()


def test_head_drift_of_biased_velocity_grows_linearly():
    target, _ = canonical(walking_motion())
    mask = torch.ones(target.shape[:2], dtype=torch.bool)
    pos_m, rot_rad = head_drift(target, mask)
    assert float(pos_m.abs().max()) < 1e-9 and float(rot_rad.abs().max()) < 1e-6
    biased = target.clone()
    biased[..., HP_DOT] += torch.tensor([0.001, 0.0, 0.0], dtype=torch.float64)
    pos_m, _ = head_drift(biased, mask)
    assert torch.allclose(pos_m, torch.full((2,), 0.001 * (T - 1), dtype=torch.float64))
    short = mask.clone()
    short[:, 10:] = False  # drift is read at the last valid frame
    pos_m, _ = head_drift(biased, short)
    assert torch.allclose(pos_m, torch.full((2,), 0.001 * 9, dtype=torch.float64))


def test_masked_frames_are_ignored_and_batches_pool_exactly():
    motion = walking_motion(B=4)
    target, frame = canonical(motion)
    recon = target + 0.01 * torch.randn(
        target.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64
    )
    mask = torch.ones(target.shape[:2], dtype=torch.bool)
    mask[1, 15:] = False
    corrupted = recon.clone()
    corrupted[1, 15:] = 1e6  # padding holds anything
    whole = reconstruction_errors(recon, target, mask, SPEED_M_PER_FRAME)
    whole_corrupted = reconstruction_errors(corrupted, target, mask, SPEED_M_PER_FRAME)

    def sub(b):
        return reconstruction_errors(recon[b], target[b], mask[b], SPEED_M_PER_FRAME)

    pooled = pool([sub(slice(0, 1)), sub(slice(1, 4))])
    for key in whole:
        assert torch.allclose(whole[key].mean(), pooled[key].mean(), equal_nan=True), key
        assert torch.allclose(whole[key].mean(), whole_corrupted[key].mean(), equal_nan=True), key
    assert float(whole["mpjpe_world_by_frame_mm"].count[20]) == 3 * NUM_JOINTS
    # The same number straight from world joints (back through the canonical frame).
    joints_world = [
        features_to_world(uncanonicalize(f, frame)).joint_translation for f in (recon, target)
    ]
    dist_mm = (joints_world[0] - joints_world[1]).norm(dim=-1)[mask] * 1000
    assert float(whole["mpjpe_world_mm"].mean()) == pytest.approx(float(dist_mm.mean()))


def test_masked_sum_mean_is_nan_without_entries():
    s = MaskedSum(torch.zeros(()), torch.zeros(()))
    assert math.isnan(float(s.mean()))
    with pytest.raises(ValueError, match="at least one batch"):
        pool([])


def test_canonical_frame_metrics_equal_world_frame_metrics():
    t_head, R_head, p_joints, R_joints = walking_motion(seed=5, B=3)
    p_joints[:, :, list(FOOT_JOINTS)] = p_joints[:, :1, list(FOOT_JOINTS)]  # planted feet
    target_world = world_to_features(t_head, R_head, p_joints, R_joints)
    noise = torch.randn(
        target_world.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64
    )
    recon_world = target_world + 0.02 * noise
    target, frame = canonicalize(target_world)
    recon = apply_rigid(recon_world, frame.R_canon_world, frame.offset_world)
    mask = torch.ones(target.shape[:2], dtype=torch.bool)
    in_world = reconstruction_errors(recon_world, target_world, mask, SPEED_M_PER_FRAME)
    in_canonical = reconstruction_errors(recon, target, mask, SPEED_M_PER_FRAME)
    assert float(in_world["foot_contact_fraction"].mean()) == 1.0
    for key in in_world:
        torch.testing.assert_close(
            in_world[key].mean(), in_canonical[key].mean(), atol=1e-6, rtol=1e-6
        )
