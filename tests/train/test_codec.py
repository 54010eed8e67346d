"""MotionCodec: windows as trained, decode back to the world, numpy = torch, batches, live
streams."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from shared.features import (
    WorldMotion,
    canonicalize,
    features_to_world,
    sequence_features,
    uncanonicalize,
)
from shared.layout import FEATURE_DIM, HP
from shared.rotations import axis_angle_to_matrix, yaw_matrix
from shared.skeleton import NUM_JOINTS
from shared.store import NormStats
from train import MotionCodec
from train.codec import WindowPlan, cut_windows, join_windows, recon_to_world
from train.data import Normalizer
from train.model import MotionVAE, MotionVAEConfig

WINDOW = 32
CONFIG = MotionVAEConfig(hidden_dim=32, latent_dim=8, blocks_per_stage=1, seq_len=WINDOW)
K = WINDOW // 4


def randomized_model(seed: int = 0) -> MotionVAE:
    """A model whose every weight is O(1), so the decoder's output is far from its tiny init."""
    torch.manual_seed(seed)
    model = MotionVAE(CONFIG)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(
                torch.randn(p.shape) / math.sqrt(p[0].numel())
                if p.ndim >= 2
                else 0.1 * torch.randn(p.shape)
            )
    return model.eval()


def normalizer(seed: int = 0) -> Normalizer:
    rng = np.random.default_rng(seed)
    stats = NormStats(
        mean=rng.normal(scale=0.1, size=FEATURE_DIM).astype(np.float32),
        std=rng.uniform(0.05, 1.0, size=FEATURE_DIM).astype(np.float32),
        count=1000,
        window_frames=WINDOW,
    )
    return Normalizer(stats, "cpu")


@pytest.fixture(scope="module")
def codec() -> MotionCodec:
    return MotionCodec(randomized_model(), normalizer())


def world_motion(T: int, seed: int = 0) -> WorldMotion:
    """Smooth random world motion (float64 numpy) walking and turning far from the origin."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(T, dtype=torch.float64)[:, None]
    t_head = torch.tensor([3.0, -2.0, 1.6], dtype=torch.float64) + 0.02 * t * torch.tensor(
        [1.0, 0.5, 0.0]
    )
    R_head = axis_angle_to_matrix(
        torch.randn(3, generator=g, dtype=torch.float64), 0.5 + 0.03 * t[:, 0]
    )
    p_joints = t_head[:, None] + 0.3 * torch.randn(
        1, NUM_JOINTS, 3, generator=g, dtype=torch.float64
    )
    R_joints = axis_angle_to_matrix(
        torch.randn(NUM_JOINTS, 3, generator=g, dtype=torch.float64), 0.02 * t.expand(T, NUM_JOINTS)
    )
    return WorldMotion(t_head.numpy(), R_head.numpy(), p_joints.numpy(), R_joints.numpy())


def arrays(motion: WorldMotion) -> tuple:
    return (
        motion.cpf_translation,
        motion.cpf_orientation,
        motion.joint_translation,
        motion.joint_orientation,
    )


# --- the window plan --------------------------------------------------------------------------


@pytest.mark.parametrize("T", [1, 5, 31, 32, 33, 64, 100])
def test_non_overlapping_windows_cover_every_frame_exactly_once(T):
    plan = WindowPlan(T, WINDOW, WINDOW)
    covered = np.zeros(T, dtype=int)
    for first, valid in zip(plan.first_frame, plan.valid_frames, strict=True):
        covered[first : first + valid] += 1
    assert (covered == 1).all()
    assert plan.num_windows == math.ceil(T / WINDOW) and plan.valid_frames.sum() == T
    index = plan.frame_index()
    assert index.shape == (plan.num_windows, WINDOW)
    assert (index[-1, plan.valid_frames[-1] :] == T - 1).all()  # padding repeats the last frame
    window, slot = plan.source_slot()
    np.testing.assert_array_equal(plan.first_frame[window] + slot, np.arange(T))
    np.testing.assert_array_equal(plan.latent_valid().sum(1), -(-plan.valid_frames // 4))


def test_overlapping_windows_take_each_frame_from_the_earliest_window():
    plan = WindowPlan(100, WINDOW, 12)
    assert plan.first_frame.tolist() == [0, 12, 24, 36, 48, 60, 72]  # 72 + 32 >= 100
    window, slot = plan.source_slot()
    for t in range(100):
        covering = [w for w in range(plan.num_windows) if 0 <= t - plan.first_frame[w] < WINDOW]
        earliest = min(covering)
        assert (window[t], slot[t]) == (earliest, t - plan.first_frame[earliest])


def test_window_plan_refuses_what_it_cannot_do():
    with pytest.raises(ValueError, match="multiple of 4"):
        WindowPlan(10, 30, 30)
    with pytest.raises(ValueError, match="hop_frames must be in 1..window_frames=32"):
        WindowPlan(10, 32, 40)
    with pytest.raises(ValueError, match="needs a frame or more"):
        WindowPlan(0, 32, 32)


# --- windows there and back, without a model -------------------------------------------------


@pytest.mark.parametrize(("T", "hop"), [(100, WINDOW), (100, 12), (20, WINDOW)])
def test_cut_and_join_windows_give_back_the_source_exactly(T, hop):
    motion = world_motion(T)
    features = torch.as_tensor(sequence_features(*arrays(motion)))[None]  # (1, T, 294)
    plan = WindowPlan(T, WINDOW, hop)
    canonical, frame = cut_windows(features, plan.frame_index())
    assert canonical.shape == (1, plan.num_windows, WINDOW, FEATURE_DIM)
    # Each window is canonical at its own first frame: its head above the origin.
    assert canonical[0, :, 0, HP][:, :2].abs().max() < 1e-5
    assert features[0, plan.first_frame, HP][:, :2].abs().min() > 1.0  # the world start is not
    torch.testing.assert_close(
        join_windows(uncanonicalize(canonical, frame), plan), features, atol=1e-5, rtol=0
    )
    # The decoder's path to the world, fed the true canonical windows, is the source motion.
    world = recon_to_world(canonical, frame)
    expected = features_to_world(features)
    for name in ("cpf_translation", "cpf_orientation", "joint_translation", "joint_orientation"):
        joined = join_windows(getattr(world, name), plan)
        torch.testing.assert_close(joined, getattr(expected, name), atol=2e-5, rtol=0)


# --- the codec ----------------------------------------------------------------------------------


def training_reconstruction(codec: MotionCodec, features: torch.Tensor, plan: WindowPlan):
    """What training and `train eval` do to each window: edge-padded world window -> canonicalize
    at its first frame -> normalise -> model(x) in eval mode. Returns mean (W, K, L), recon
    (W, window, 294) canonical, and the frames."""
    windows = features[torch.as_tensor(plan.frame_index())]  # (W, window, 294)
    canonical, frame = canonicalize(windows)
    with torch.no_grad():
        out = codec.model(codec.normalizer.normalize(canonical))
    return out["mean"], codec.normalizer.denormalize(out["recon"]), frame


@pytest.mark.parametrize(("T", "hop"), [(100, None), (96, None), (20, None), (100, 12)])
def test_encode_and_decode_are_the_models_windows_as_trained(codec, T, hop):
    motion = world_motion(T)
    latents = codec.encode_world(*arrays(motion), hop_frames=hop)
    plan = latents.plan
    assert (plan.window_frames, plan.hop_frames) == (WINDOW, hop or WINDOW)
    assert latents.mean.shape == latents.logvar.shape == (plan.num_windows, K, CONFIG.latent_dim)
    assert latents.frame.R_canon_world.shape == (plan.num_windows, 3, 3)

    features = torch.as_tensor(sequence_features(*arrays(motion)))
    mean, recon, frame = training_reconstruction(codec, features, plan)
    torch.testing.assert_close(latents.mean, mean, atol=1e-5, rtol=0)
    torch.testing.assert_close(latents.frame.offset_world, frame.offset_world, atol=0, rtol=0)

    decoded = codec.decode_world(latents)
    expected = recon_to_world(recon[None], frame)
    window, slot = plan.source_slot()
    for name in ("cpf_translation", "cpf_orientation", "joint_translation", "joint_orientation"):
        got, want = getattr(decoded, name), getattr(expected, name)[0, window, slot]
        assert got.shape[0] == T
        torch.testing.assert_close(got, want, atol=1e-4, rtol=0)
    world_features = codec.decode_features(latents)
    torch.testing.assert_close(
        world_features, uncanonicalize(recon, frame)[window, slot], atol=1e-4, rtol=0
    )
    # A random model does not copy its input: the comparison above is not trivially true.
    assert float((world_features - features).abs().mean()) > 1e-3


def test_numpy_and_torch_inputs_give_identical_results(codec):
    motion = world_motion(70)
    for dtype in (np.float32, np.float64):
        as_numpy = [a.astype(dtype) for a in arrays(motion)]
        from_numpy = codec.encode_world(*as_numpy)
        from_torch = codec.encode_world(*(torch.from_numpy(a) for a in as_numpy))
        assert torch.equal(from_numpy.mean, from_torch.mean) and torch.equal(
            from_numpy.logvar, from_torch.logvar
        )
        assert torch.equal(from_numpy.frame.R_canon_world, from_torch.frame.R_canon_world)
    features = sequence_features(*arrays(motion))
    from_torch = codec.encode_features(torch.from_numpy(features))
    assert torch.equal(codec.encode_features(features).mean, from_torch.mean)


def test_a_batch_of_clips_encodes_and_decodes_like_each_clip_alone(codec):
    motions = [world_motion(45, seed) for seed in range(3)]
    batch = [np.stack(parts) for parts in zip(*(arrays(m) for m in motions))]  # (3, 45, ...)
    latents = codec.encode_world(*batch)
    assert latents.mean.shape == (
        3,
        2,
        K,
        CONFIG.latent_dim,
    ) and latents.frame.offset_world.shape == (3, 2, 3)
    decoded = codec.decode_world(latents)
    assert decoded.joint_translation.shape == (3, 45, NUM_JOINTS, 3)
    for b, motion in enumerate(motions):
        alone = codec.encode_world(*arrays(motion))
        torch.testing.assert_close(latents.mean[b], alone.mean, atol=1e-5, rtol=0)
        alone_joints = codec.decode_world(alone).joint_translation
        torch.testing.assert_close(decoded.joint_translation[b], alone_joints, atol=1e-4, rtol=0)


def test_latents_do_not_depend_on_where_the_motion_is_in_the_world(codec):
    motion = world_motion(80)
    R = yaw_matrix(np.array(1.1), (0.0, 0.0, 1.0))
    shift = np.array([5.0, -7.0, 0.0])
    moved = WorldMotion(
        motion.cpf_translation @ R.T + shift,
        R @ motion.cpf_orientation,
        motion.joint_translation @ R.T + shift,
        R @ motion.joint_orientation,
    )
    latents, latents_moved = codec.encode_world(*arrays(motion)), codec.encode_world(*arrays(moved))
    torch.testing.assert_close(latents.mean, latents_moved.mean, atol=1e-4, rtol=1e-4)
    # Each window's stored transform brings the decoded motion back to where the motion was.
    joints = codec.decode_world(latents).joint_translation
    joints_moved = codec.decode_world(latents_moved).joint_translation
    expected = joints.double() @ torch.as_tensor(R).T + torch.as_tensor(shift)
    torch.testing.assert_close(joints_moved.double(), expected, atol=5e-4, rtol=0)


def test_bad_motion_is_refused_with_the_shapes_expected(codec):
    motion = world_motion(10)
    expected = r"joint_translation \(\[B,\] T, 23, 3\).*found.*joint_translation \(10, 22, 3\)"
    with pytest.raises(ValueError, match=expected):
        codec.encode_world(
            motion.cpf_translation,
            motion.cpf_orientation,
            motion.joint_translation[:, :22],
            motion.joint_orientation,
        )
    with pytest.raises(ValueError, match="features must be"):
        codec.encode_features(np.zeros((10, 290), dtype=np.float32))


# --- live streams -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("T", "chunks"), [(100, [1, 3, 7, 2, 40, 47]), (64, [32, 32]), (5, [5]), (70, [1] * 70)]
)
def test_a_live_stream_gives_the_latents_of_the_offline_encode(codec, T, chunks):
    motion = world_motion(T)
    offline = codec.encode_world(*arrays(motion))
    stream = codec.stream()
    emitted, pushed = [], 0
    for n in chunks:
        mean, logvar = stream.push(*(a[pushed : pushed + n] for a in arrays(motion)))
        pushed += n
        # A latent is out as soon as its 4 frames are in, counted inside each window.
        full_windows, in_window = divmod(pushed, WINDOW)
        assert len(emitted) + len(mean) == full_windows * K + in_window // 4
        assert mean.shape == logvar.shape == (len(mean), CONFIG.latent_dim)
        emitted.extend(mean)
    mean, _ = stream.close()
    emitted.extend(mean)
    streamed = stream.latents()
    offline_steps = offline.mean.reshape(-1, CONFIG.latent_dim)
    torch.testing.assert_close(torch.stack(emitted), offline_steps, atol=1e-5, rtol=0)
    torch.testing.assert_close(streamed.mean, offline.mean, atol=1e-5, rtol=0)
    torch.testing.assert_close(streamed.logvar, offline.logvar, atol=1e-5, rtol=0)
    torch.testing.assert_close(
        streamed.frame.R_canon_world, offline.frame.R_canon_world, atol=1e-6, rtol=0
    )
    torch.testing.assert_close(
        streamed.frame.offset_world, offline.frame.offset_world, atol=1e-6, rtol=0
    )
    assert streamed.plan == offline.plan
    with pytest.raises(RuntimeError, match="push after close"):
        stream.push(*(a[:1] for a in arrays(motion)))
