import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from shared.features import (
    HEAD_FORWARD_AXIS,
    WORLD_UP_AXIS,
    apply_rigid,
    canonicalize,
    features_to_world,
    integrate_head_deltas,
    uncanonicalize,
    world_to_features,
)
from shared.layout import FEATURE_DIM, FEATURE_SLICES, HP, HP_DOT, HR, LOSS_GROUPS
from shared.rotations import axis_angle_to_matrix, rot6d_to_matrix, yaw_of
from shared.skeleton import NUM_JOINTS


def random_motion(seed: int, T: int = 12):
    """Smooth-ish random world motion: head pose and 23 joints, float64."""
    rng = np.random.default_rng(seed)

    def rotations(*shape):
        axis = rng.normal(size=shape + (3,))
        angle = np.cumsum(rng.uniform(-0.2, 0.2, size=shape), axis=0) + rng.uniform(-3, 3)
        return axis_angle_to_matrix(axis, angle)

    t_head = np.cumsum(rng.normal(scale=0.05, size=(T, 3)), 0) + rng.uniform(-5, 5, 3)
    R_head = rotations(T)
    p_joints = t_head[:, None] + rng.normal(scale=0.5, size=(T, NUM_JOINTS, 3))
    R_joints = rotations(T, NUM_JOINTS)
    return t_head, R_head, p_joints, R_joints


def six_d(R):
    return np.array([R[0, 0], R[1, 0], R[2, 0], R[0, 1], R[1, 1], R[2, 1]])


def test_layout_is_contiguous_and_named():
    assert FEATURE_DIM == 294
    starts = [s.start for s in FEATURE_SLICES.values()]
    stops = [s.stop for s in FEATURE_SLICES.values()]
    assert starts == [0] + stops[:-1]
    spans = [(s.start, s.stop) for s in LOSS_GROUPS.values()]
    assert spans == [(0, 12), (12, 18), (18, 156), (156, 294)]


@given(st.integers(0, 2**31 - 1))
def test_each_slice_matches_direct_per_frame_computation(seed):
    t_h, R_h, p_j, R_j = random_motion(seed)
    f = world_to_features(t_h, R_h, p_j, R_j)
    assert f.shape == (len(t_h), FEATURE_DIM)
    for t in range(len(t_h)):
        expect = {
            "hr": six_d(R_h[t]),
            "hr_dot": six_d(np.eye(3) if t == 0 else R_h[t - 1].T @ R_h[t]),
            "hp": t_h[t],
            "hp_dot": np.zeros(3) if t == 0 else t_h[t] - t_h[t - 1],
            "jp": np.concatenate([R_h[t].T @ (p_j[t, j] - t_h[t]) for j in range(NUM_JOINTS)]),
            "jr": np.concatenate([six_d(R_j[t, j]) for j in range(NUM_JOINTS)]),
        }
        jp_prev = (
            np.zeros(3 * NUM_JOINTS)
            if t == 0
            else np.concatenate(
                [R_h[t - 1].T @ (p_j[t - 1, j] - t_h[t - 1]) for j in range(NUM_JOINTS)]
            )
        )
        expect["jv"] = np.zeros(3 * NUM_JOINTS) if t == 0 else expect["jp"] - jp_prev
        for name, value in expect.items():
            np.testing.assert_allclose(f[t, FEATURE_SLICES[name]], value, atol=1e-12, err_msg=name)


@given(st.integers(0, 2**31 - 1))
def test_inverse_recovers_world_motion(seed):
    t_h, R_h, p_j, R_j = random_motion(seed)
    world = features_to_world(world_to_features(t_h, R_h, p_j, R_j))
    np.testing.assert_allclose(world.joint_translation, p_j, atol=1e-5, rtol=0)
    np.testing.assert_allclose(world.joint_orientation, R_j, atol=1e-9)
    np.testing.assert_allclose(world.cpf_translation, t_h, atol=1e-12)
    np.testing.assert_allclose(world.cpf_orientation, R_h, atol=1e-9)


@given(st.integers(0, 2**31 - 1), st.floats(-np.pi, np.pi))
def test_relative_fields_invariant_under_rigid_world_motion(seed, angle):
    t_h, R_h, p_j, R_j = random_motion(seed)
    rng = np.random.default_rng(seed + 1)
    R = axis_angle_to_matrix(rng.normal(size=3), np.asarray(angle))  # any rotation, not only yaw
    d = rng.normal(size=3) * 10
    f = world_to_features(t_h, R_h, p_j, R_j)
    g = world_to_features(t_h @ R.T + d, R @ R_h, p_j @ R.T + d, R @ R_j)
    for name in ("hr_dot", "jp", "jv"):
        np.testing.assert_allclose(
            g[:, FEATURE_SLICES[name]], f[:, FEATURE_SLICES[name]], atol=1e-9
        )
    # apply_rigid on features is the same map as moving the world.
    np.testing.assert_allclose(apply_rigid(f, R, -R.T @ d), g, atol=1e-9)


def test_integrated_deltas_reproduce_absolute_head_pose():
    t_h, R_h, p_j, R_j = random_motion(3, T=30)
    t, R = integrate_head_deltas(world_to_features(t_h, R_h, p_j, R_j))
    np.testing.assert_allclose(t, t_h, atol=1e-9)
    np.testing.assert_allclose(R, R_h, atol=1e-9)


def _windows(B=4, T=16):
    return np.stack([world_to_features(*random_motion(s, T)) for s in range(B)])


def test_canonical_window_starts_above_origin_with_zero_heading():
    f = _windows()
    canon, _ = canonicalize(f)
    hp0 = canon[:, 0, HP]
    np.testing.assert_allclose(hp0[:, :2], 0, atol=1e-12)
    np.testing.assert_allclose(hp0[:, 2], f[:, 0, HP][:, 2], atol=1e-12)  # height kept
    R0 = rot6d_to_matrix(canon[:, 0, HR])
    np.testing.assert_allclose(yaw_of(R0, HEAD_FORWARD_AXIS, WORLD_UP_AXIS), 0, atol=1e-9)
    for name in ("hr_dot", "jp", "jv"):
        np.testing.assert_allclose(
            canon[..., FEATURE_SLICES[name]], f[..., FEATURE_SLICES[name]], atol=1e-12
        )
    # Canonicalising twice changes nothing more.
    np.testing.assert_allclose(canonicalize(canon)[0], canon, atol=1e-9)


def test_canonicalize_inverse_is_identity_numpy_and_torch():
    f = _windows()
    canon, frame = canonicalize(f)
    np.testing.assert_allclose(uncanonicalize(canon, frame), f, atol=1e-9)
    f_t = torch.as_tensor(f, dtype=torch.float32)
    canon_t, frame_t = canonicalize(f_t)
    assert canon_t.dtype == torch.float32 and canon_t.shape == f_t.shape
    torch.testing.assert_close(
        canon_t, torch.as_tensor(canon, dtype=torch.float32), atol=2e-5, rtol=0
    )
    torch.testing.assert_close(uncanonicalize(canon_t, frame_t), f_t, atol=5e-5, rtol=0)


def test_torch_batched_features_equal_numpy():
    motions = [random_motion(s) for s in range(3)]
    batched = [torch.as_tensor(np.stack(parts)) for parts in zip(*motions)]
    f_t = world_to_features(*batched)
    np.testing.assert_allclose(
        f_t.numpy(), np.stack([world_to_features(*m) for m in motions]), atol=1e-12
    )


def test_wrong_width_is_a_clear_error():
    with pytest.raises(ValueError, match="294 channels"):
        features_to_world(np.zeros((3, 290)))
    with pytest.raises(ValueError, match="joint_translation"):
        world_to_features(
            np.zeros((3, 3)), np.zeros((3, 3, 3)), np.zeros((3, 22, 3)), np.zeros((3, 22, 3, 3))
        )


def _walking_features(T: int = 48, seed: int = 0) -> np.ndarray:
    """Consistent features of a random smooth head path with a body below it."""
    from shared.rotations import axis_angle_to_matrix

    rng = np.random.default_rng(seed)
    rotvec = np.cumsum(rng.normal(0, 0.05, (T, 3)), 0)
    R_h = axis_angle_to_matrix(rotvec, np.linalg.norm(rotvec, axis=-1))
    t_h = np.cumsum(rng.normal(0, 0.03, (T, 3)), 0) + np.array([3.0, -2.0, 1.6])
    p_j = t_h[:, None] + rng.normal(0, 0.4, (T, 23, 3))
    R_j = np.broadcast_to(np.eye(3), (T, 23, 3, 3))
    return world_to_features(t_h, R_h, p_j, R_j)


@pytest.mark.parametrize("blend", [0.0, 0.3, 0.95, 1.0])
def test_head_pose_is_exact_on_consistent_features(blend):
    from shared.features import head_pose
    from shared.rotations import rot6d_to_matrix

    f = _walking_features()
    t, R = head_pose(f, blend)
    np.testing.assert_allclose(t, f[:, HP], atol=1e-12)
    np.testing.assert_allclose(R, rot6d_to_matrix(f[:, HR]), atol=1e-12)


def test_head_pose_is_the_complementary_filter_and_causal():
    from shared.features import head_pose

    rng = np.random.default_rng(1)
    f = _walking_features() + rng.normal(0, 0.01, (48, 294))
    blend = 0.9
    t, _ = head_pose(f, blend)
    expected = [f[0, HP]]
    for k in range(1, len(f)):
        expected.append(blend * (expected[-1] + f[k, HP_DOT]) + (1 - blend) * f[k, HP])
    np.testing.assert_allclose(t, np.array(expected), atol=1e-12)
    later = f.copy()
    later[30:] += rng.normal(0, 1.0, later[30:].shape)  # changing frames >= 30 ...
    t2, R2 = head_pose(later, blend)
    _, R = head_pose(f, blend)
    np.testing.assert_allclose(t2[:30], t[:30], atol=1e-12)  # ... leaves frames < 30 alone
    np.testing.assert_allclose(R2[:30], R[:30], atol=1e-12)


def test_decoded_to_world_is_exact_on_canonical_windows_and_anchors_the_start():
    from shared.features import decoded_to_world

    canonical, _ = canonicalize(torch.as_tensor(_walking_features())[None])
    exact = features_to_world(canonical)
    for blend in (0.0, 0.95, 1.0):
        world = decoded_to_world(canonical, blend)
        torch.testing.assert_close(
            world.joint_translation, exact.joint_translation, atol=1e-9, rtol=0
        )
    shifted = canonical.clone()
    shifted[..., 0, HP.start : HP.start + 2] += 0.3  # a decoder's error at the known start
    anchored = decoded_to_world(shifted, 0.95)
    torch.testing.assert_close(anchored.cpf_translation[:, 0], exact.cpf_translation[:, 0])


def _mirrored_world(t_head, R_head, p_joints, R_joints):
    """The mirror image of world motion, built from its definition: the world reflected
    across the X-Z plane, Left*/Right* segments swapped, each frame's own left axis reversed
    (CPF: X left; XSens segments: Y left) so every rotation stays proper."""
    from shared.skeleton import MIRROR

    W, S_head, S_seg = np.diag([1.0, -1, 1]), np.diag([-1.0, 1, 1]), np.diag([1.0, -1, 1])
    mirror = list(MIRROR)
    return (
        t_head @ W,
        W @ R_head @ S_head,
        p_joints[:, mirror] @ W,
        W @ R_joints[:, mirror] @ S_seg,
    )


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mirror_features_equal_features_of_the_mirrored_motion(seed):
    from shared.features import mirror_features

    motion = random_motion(seed)
    mirrored = _mirrored_world(*motion)
    assert np.allclose(np.linalg.det(mirrored[1]), 1) and np.allclose(np.linalg.det(mirrored[3]), 1)
    expected = world_to_features(*mirrored)
    got = mirror_features(world_to_features(*motion))
    np.testing.assert_allclose(got, expected, atol=1e-9)
    # An involution, and the same in torch (batched, float32) as in numpy.
    np.testing.assert_array_equal(mirror_features(got), world_to_features(*motion))
    batch = torch.from_numpy(np.stack([world_to_features(*motion)] * 2)).float()
    np.testing.assert_allclose(mirror_features(batch)[1].numpy(), expected, atol=1e-5)


def test_mirror_keeps_a_symmetric_pose_and_moves_a_raised_right_hand_to_the_left():
    from shared.features import mirror_features
    from shared.skeleton import JOINT_INDEX

    T = 4
    t_head, R_head = np.zeros((T, 3)), np.tile(np.eye(3), (T, 1, 1))
    p = np.zeros((T, NUM_JOINTS, 3))
    p[:, JOINT_INDEX["RightHand"]] = [0.0, -0.3, 0.5]  # right (-Y left) and up
    p[:, JOINT_INDEX["LeftHand"]] = [0.0, 0.3, -0.6]
    R = np.tile(np.eye(3), (T, NUM_JOINTS, 1, 1))
    mirrored = features_to_world(mirror_features(world_to_features(t_head, R_head, p, R)))
    hands = mirrored.joint_translation[0]
    np.testing.assert_allclose(hands[JOINT_INDEX["LeftHand"]], [0.0, 0.3, 0.5], atol=1e-9)
    np.testing.assert_allclose(hands[JOINT_INDEX["RightHand"]], [0.0, -0.3, -0.6], atol=1e-9)


def _smooth_motion(times: np.ndarray):
    """World motion as smooth functions of time (frames), sampled at `times`: head pose, joints."""
    u = np.asarray(times, dtype=np.float64)
    z, x = np.array([0.0, 0.0, 1.0]), np.array([1.0, 0.0, 0.0])
    t_head = np.stack([np.sin(0.05 * u), np.cos(0.04 * u), 1.6 + 0.02 * np.sin(0.2 * u)], -1)
    R_head = axis_angle_to_matrix(np.broadcast_to(z, (len(u), 3)), 0.03 * u)
    j = np.arange(NUM_JOINTS)
    offsets = 0.4 * np.stack(
        [np.sin(0.1 * u[:, None] + j), np.cos(0.08 * u[:, None] + 2 * j), -np.ones((len(u), 23))],
        -1,
    )
    p_joints = t_head[:, None] + (R_head[:, None] @ offsets[..., None])[..., 0]
    R_joints = axis_angle_to_matrix(
        np.broadcast_to(x, (len(u), NUM_JOINTS, 3)), 0.01 * u[:, None] * (1 + j % 5)
    )
    return t_head, R_head, p_joints, R_joints


@pytest.mark.parametrize("seed", [0, 1])
def test_resampling_at_integer_speeds_gives_the_features_of_the_subsampled_motion(seed):
    from shared.features import resample_features

    motion = random_motion(seed, T=25)
    features = world_to_features(*motion)
    # Speed 1: input frames 2..21 as they were (velocities included).
    same = resample_features(features[None], np.array([1.0]), 20)[0]
    np.testing.assert_allclose(same, features[2:22], atol=1e-9)
    # Speed 2: every other frame, velocities over two input frames: the subsampled recording's.
    faster = resample_features(features[None], np.array([2.0]), 10)[0]
    expected = world_to_features(*(m[1::2] for m in motion))[1:11]
    np.testing.assert_allclose(faster, expected, atol=1e-9)
    # Batched in torch (float32), each window at its own speed.
    both = resample_features(
        torch.from_numpy(np.stack([features] * 2)).float(), torch.tensor([2.0, 1.0]), 10
    )
    np.testing.assert_allclose(both[0].numpy(), expected, atol=1e-5)
    np.testing.assert_allclose(both[1].numpy(), features[2:12], atol=1e-5)


def test_resampling_a_smooth_motion_at_half_speed_approximates_the_denser_recording():
    from shared.features import resample_features

    recorded = world_to_features(*_smooth_motion(np.arange(-2, 80, 2)))  # every other frame
    slowed = resample_features(recorded[None], np.array([0.5]), 60)[0]  # time 1 + (j + 1) / 2
    expected = world_to_features(*_smooth_motion(np.arange(0, 61)))[1:]
    error = np.abs(slowed - expected).max(0)
    assert error.max() < 1e-4  # a spline through samples of a smooth motion
    # The velocities are per output frame: half the recorded per-frame motion.
    speed = np.abs(expected[:, HP_DOT]).max()
    assert np.abs(recorded[:, HP_DOT]).max() > 1.9 * speed and error[HP_DOT].max() < speed / 1000
    valid = rot6d_to_matrix(slowed[:, HR])
    np.testing.assert_allclose(np.linalg.det(valid), 1.0, atol=1e-9)


def test_resampling_past_the_input_is_an_error_naming_the_lengths():
    from shared.features import resample_features

    features = world_to_features(*random_motion(0, T=20))
    with pytest.raises(
        ValueError, match="16 frames at speed up to 1.25 needs 24 input frames, found 20"
    ):
        resample_features(features[None], np.array([1.25]), 16)
