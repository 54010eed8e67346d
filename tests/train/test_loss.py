"""vae_loss: per-group masked MSE, KL over valid latents, exact indifference to padding."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.layout import FEATURE_DIM, HP, HP_DOT, JP, LOSS_GROUPS
from shared.skeleton import FOOT_JOINTS, NUM_JOINTS
from train.loss import KL, RECON, TOTAL, mse_key, vae_loss
from train.metrics import contact_speed_m_per_frame
from train.model import latent_mask

L = 5  # latent channels: small, the loss does not care


def _batch(B: int, T: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    N = -(-T // 4)
    return (
        torch.randn(B, T, FEATURE_DIM, generator=g),
        torch.randn(B, T, FEATURE_DIM, generator=g),
        torch.randn(B, N, L, generator=g),
        torch.randn(B, N, L, generator=g),
    )


def _hand_loss(recon, target, mean, logvar, mask, lambda_kl):
    """The definition, written out with loops in float64 numpy."""
    recon, target, mean, logvar, mask = (
        np.asarray(a, dtype=np.float64) for a in (recon, target, mean, logvar, mask)
    )
    B, T, _ = target.shape
    N = mean.shape[1]
    out = {}
    for name, dims in LOSS_GROUPS.items():
        total, count = 0.0, 0
        for b in range(B):
            for t in range(T):
                if mask[b, t]:
                    err = recon[b, t, dims] - target[b, t, dims]
                    total += float(np.sum(err**2))
                    count += dims.stop - dims.start
        out[mse_key(name)] = total / count
    out[RECON] = sum(out[mse_key(n)] for n in LOSS_GROUPS) / len(LOSS_GROUPS)
    total, count = 0.0, 0
    for b in range(B):
        for k in range(N):
            if mask[b, 4 * k : 4 * k + 4].any():
                m, lv = mean[b, k], logvar[b, k]
                total += float(np.sum(0.5 * (m**2 + np.exp(lv) - 1 - lv)))
                count += m.size
    out[KL] = total / count
    out[TOTAL] = out[RECON] + lambda_kl * out[KL]
    return out


def test_matches_hand_computation() -> None:
    recon, target, mean, logvar = _batch(2, 12)
    mask = torch.ones(2, 12, dtype=torch.bool)
    mask[0, 7:] = False  # latent 1 half valid, latent 2 invalid
    mask[1, :3] = False
    losses = vae_loss(recon, target, mean, logvar, mask, lambda_kl=0.3)
    expected = _hand_loss(recon, target, mean, logvar, mask, 0.3)
    assert set(losses) == set(expected)
    for key, value in expected.items():
        assert losses[key].dtype == torch.float32
        assert losses[key].item() == pytest.approx(value, rel=1e-5), key


def test_keys_and_defaults() -> None:
    recon, target, mean, logvar = _batch(2, 8)
    losses = vae_loss(recon, target, mean, logvar)
    assert set(losses) == {
        "mse/head_6D",
        "mse/head_3D",
        "mse/joint_3D",
        "mse/joint_6D",
        "recon",
        "kl",
        "total",
    }
    all_valid = vae_loss(recon, target, mean, logvar, torch.ones(2, 8, dtype=torch.bool))
    for key in losses:
        assert torch.equal(losses[key], all_valid[key])
    torch.testing.assert_close(losses[TOTAL], losses[RECON] + 1e-4 * losses[KL])


def test_perfect_recon_and_prior_posterior_give_zero() -> None:
    _, target, mean, _ = _batch(2, 8)
    losses = vae_loss(target, target, torch.zeros_like(mean), torch.zeros_like(mean))
    assert all(v.item() == 0.0 for v in losses.values())


def test_latent_mask_any_of_four_frames() -> None:
    mask = torch.zeros(1, 12, dtype=torch.bool)
    mask[0, 3] = True  # the last frame of latent 0 alone makes it valid
    mask[0, 8] = True
    assert latent_mask(mask, 3).tolist() == [[True, False, True]]
    # A sequence padded by encode_sequence: 10 frames over 3 latents.
    assert latent_mask(torch.ones(1, 10, dtype=torch.bool), 3).tolist() == [[True, True, True]]
    with pytest.raises(ValueError, match="does not match"):
        latent_mask(mask, 2)


@settings(max_examples=40, deadline=None)
@given(
    valid=st.lists(st.lists(st.booleans(), min_size=16, max_size=16), min_size=1, max_size=3),
    seed=st.integers(0, 2**16),
)
def test_padding_is_ignored_exactly(valid: list[list[bool]], seed: int) -> None:
    """Any values in padded frames and invalid latents, inf and nan included, change nothing."""
    mask = torch.tensor(valid)
    B, T = mask.shape
    recon, target, mean, logvar = _batch(B, T, seed)
    lmask = latent_mask(mask, mean.shape[1])

    def losses_and_grads(r, t, m, lv):
        r, m, lv = (a.clone().requires_grad_() for a in (r, m, lv))
        losses = vae_loss(r, t, m, lv, mask)
        losses[TOTAL].backward()
        return losses, (r.grad, m.grad, lv.grad)

    base, base_grads = losses_and_grads(recon, target, mean, logvar)
    g = torch.Generator().manual_seed(seed + 1)
    junk = {"inf": float("inf"), "nan": float("nan"), "big": 1e30}
    for fill in junk.values():
        r, t, m, lv = recon.clone(), target.clone(), mean.clone(), logvar.clone()
        r[~mask] = fill
        t[~mask] = torch.randn(int((~mask).sum()), FEATURE_DIM, generator=g)
        m[~lmask] = fill
        lv[~lmask] = fill
        changed, grads = losses_and_grads(r, t, m, lv)
        for key in base:
            assert torch.equal(base[key], changed[key]), key
        for got, want in zip(grads, base_grads):
            assert torch.equal(got, want)
    assert all(torch.isfinite(v) for v in base.values())
    assert torch.all(base_grads[0][~mask] == 0)


def test_all_padded_batch_gives_zero_not_nan() -> None:
    recon, target, mean, logvar = _batch(1, 8)
    losses = vae_loss(recon, target, mean, logvar, torch.zeros(1, 8, dtype=torch.bool))
    assert all(v.item() == 0.0 for v in losses.values())


def test_bf16_inputs_are_summed_in_float32() -> None:
    recon, target, mean, logvar = _batch(2, 8)
    losses = vae_loss(recon.bfloat16(), target, mean.bfloat16(), logvar.bfloat16())
    assert all(v.dtype == torch.float32 for v in losses.values())


@pytest.mark.parametrize(
    "change, message",
    [
        ("recon", "recon .* and target"),
        ("mean", "mean .* and logvar"),
        ("mask", "mask must be"),
        ("dim", "294-D"),
    ],
)
def test_rejects_mismatched_shapes(change: str, message: str) -> None:
    recon, target, mean, logvar = _batch(2, 8)
    mask = torch.ones(2, 8, dtype=torch.bool)
    if change == "recon":
        recon = recon[:, :4]
    elif change == "mean":
        mean = mean[:, :1]
    elif change == "mask":
        mask = mask.float()
    else:
        recon, target = recon[..., :10], target[..., :10]
    with pytest.raises(ValueError, match=message):
        vae_loss(recon, target, mean, logvar, mask)


SPEED = contact_speed_m_per_frame(30.0)  # the foot-contact threshold of a 30 fps store


def _canonical_windows(
    B: int = 3, T: int = 32, seed: int = 0, head_roll_rad: float = 0.0, planted_feet: bool = False
) -> torch.Tensor:
    """Canonical windows of consistent random motion, float64. `head_roll_rad` turns the head
    about its own forward axis (CPF z) and nothing else: same world joints, same heading.
    `planted_feet`: the foot joints stand still on the floor (z = 0) for the whole window, so
    every step is a contact step; otherwise they move like the other joints (no contact)."""
    from shared.features import canonicalize, world_to_features
    from shared.rotations import axis_angle_to_matrix

    rng = np.random.default_rng(seed)
    rotvec = np.cumsum(rng.normal(0, 0.05, (B, T, 3)), 1)
    R_h = axis_angle_to_matrix(rotvec, np.linalg.norm(rotvec, axis=-1))
    R_h = R_h @ axis_angle_to_matrix(np.array([0.0, 0.0, 1.0]), np.array(head_roll_rad))
    t_h = np.cumsum(rng.normal(0, 0.03, (B, T, 3)), 1) + np.array([2.0, 1.0, 1.6])
    p_j = t_h[:, :, None] + rng.normal(0, 0.4, (B, T, 23, 3))
    if planted_feet:
        feet = list(FOOT_JOINTS)
        spots = rng.normal(0, 0.3, (B, 1, len(feet), 3)) + np.array([2.0, 1.0, 0.0])
        spots[..., 2] = 0.0
        p_j[:, :, feet] = spots
    R_j = np.broadcast_to(np.eye(3), (B, T, 23, 3, 3))
    world = torch.as_tensor(world_to_features(t_h, R_h, p_j, R_j))
    return canonicalize(world)[0]


@pytest.mark.parametrize("blend", [0.0, 0.95])
def test_the_head_frame_term_sees_a_head_rotation_the_world_terms_cannot(blend):
    """A head rolled by 0.3 rad with the joints given relative to it is the same world pose:
    the world terms are blind to it, the head-frame term (head-frame MPJPE in metres) and the
    head-orientation term are not."""
    from train.loss import (
        HEAD_FRAME_POSITION,
        HEAD_ORIENTATION,
        WORLD_POSITION,
        WORLD_VELOCITY,
        world_loss,
    )

    target = _canonical_windows()
    rolled = _canonical_windows(head_roll_rad=0.3)
    mask = torch.ones(target.shape[:2], dtype=torch.bool)
    assert float(world_loss(target.clone(), target, mask, blend, SPEED)[HEAD_FRAME_POSITION]) < 1e-6
    terms = world_loss(rolled, target, mask, blend, SPEED)
    assert float(terms[WORLD_POSITION]) < 1e-5 and float(terms[WORLD_VELOCITY]) < 1e-5
    assert float(terms[HEAD_FRAME_POSITION]) > 0.05  # ~0.3 rad x ~0.6 m from the head
    # 2 sin(theta / 2): the chordal distance / sqrt(2), the angle to first order
    assert float(terms[HEAD_ORIENTATION]) == pytest.approx(2 * np.sin(0.15), rel=1e-4)
    assert float(world_loss(target.clone(), target, mask, blend, SPEED)[HEAD_ORIENTATION]) < 1e-6


@pytest.mark.parametrize("blend", [0.0, 0.95, 1.0])
def test_world_loss_is_zero_on_the_target(blend):
    from train.loss import WORLD_POSITION, WORLD_VELOCITY, world_loss

    target = _canonical_windows()
    mask = torch.ones(target.shape[:2], dtype=torch.bool)
    terms = world_loss(target.clone(), target, mask, blend, SPEED)
    assert float(terms[WORLD_POSITION]) < 1e-5 and float(terms[WORLD_VELOCITY]) < 1e-5  # float32
    noisy = target + 0.01 * torch.randn_like(target)
    assert float(world_loss(noisy, target, mask, blend, SPEED)[WORLD_POSITION]) > 1e-3


def test_world_loss_ignores_padding_and_its_gradients_reach_the_decoder():
    from train.loss import FOOT_CONTACT_VELOCITY, WORLD_TERMS, world_loss
    from train.model import MotionVAE, MotionVAEConfig

    target = _canonical_windows(B=2, T=32, planted_feet=True).float()
    mask = torch.ones(2, 32, dtype=torch.bool)
    mask[1, 20:] = False
    model = MotionVAE(MotionVAEConfig(hidden_dim=32, latent_dim=8, blocks_per_stage=1, seq_len=32))
    recon = target + model(target)["recon"]  # any differentiable function of the decoder

    def loss(r):
        terms = world_loss(r, target, mask, 0.95, SPEED)
        assert float(terms[FOOT_CONTACT_VELOCITY].detach()) > 0  # the padded window has contacts
        return sum(terms[key] for key in WORLD_TERMS)

    value = loss(recon)
    value.backward(retain_graph=True)
    grads = [p.grad for p in model.decoder.parameters() if p.grad is not None]
    assert grads and sum(float(g.abs().sum()) for g in grads) > 0
    garbage = recon.detach().clone()
    garbage[1, 20:] = float("nan")
    garbage.requires_grad_(True)
    same = loss(garbage)
    torch.testing.assert_close(same, value.detach())
    same.backward()
    assert torch.isfinite(garbage.grad).all() and float(garbage.grad[1, 20:].abs().sum()) == 0.0


def test_training_loss_does_not_depend_on_where_the_window_is_in_the_world():
    from shared.features import apply_rigid
    from shared.rotations import yaw_matrix
    from shared.store import NormStats
    from train.config import RunConfig, TrainConfig
    from train.data import Normalizer, WindowBatch, prepare_batch
    from train.loss import training_loss
    from train.model import MotionVAE, MotionVAEConfig

    world = _canonical_windows(B=2, T=32, planted_feet=True).float()  # any world windows will do
    moved = apply_rigid(
        world,
        yaw_matrix(torch.tensor([0.7, -2.0]), (0.0, 0.0, 1.0)).float(),
        torch.tensor([[40.0, -7.0, 0.0], [-3.0, 12.0, 0.0]]),
    )
    config = RunConfig(
        MotionVAEConfig(hidden_dim=32, latent_dim=8, blocks_per_stage=1, seq_len=32),
        TrainConfig(loss="world", foot_contact_weight=1.0),
    )
    stats = NormStats(np.zeros(FEATURE_DIM), np.ones(FEATURE_DIM), 1, 32)
    normalizer = Normalizer(stats, "cpu")
    model = MotionVAE(config.model).eval()
    mask = torch.ones(2, 32, dtype=torch.bool)
    losses = []
    for windows in (world, moved):
        batch = WindowBatch(
            windows, mask, torch.zeros(2, dtype=torch.long), torch.zeros(2, dtype=torch.long)
        )
        prep = prepare_batch(batch, normalizer)
        torch.manual_seed(0)
        losses.append(training_loss(model(prep.x), prep, normalizer, config, SPEED))
    for key in losses[0]:
        torch.testing.assert_close(losses[0][key], losses[1][key], atol=2e-4, rtol=2e-4)


@pytest.mark.parametrize("blend", [0.0, 0.95])
def test_the_foot_contact_term_measures_planted_feet_sliding(blend):
    """Zero on the target; a head trajectory that drifts 1 cm/frame drags the planted feet
    along at 1 cm/frame, which is the term's value; windows without a contact give 0, not nan."""
    from train.loss import FOOT_CONTACT_VELOCITY, world_loss

    target = _canonical_windows(planted_feet=True)
    mask = torch.ones(target.shape[:2], dtype=torch.bool)
    assert (
        float(world_loss(target.clone(), target, mask, blend, SPEED)[FOOT_CONTACT_VELOCITY]) < 1e-6
    )
    drifting = target.clone()
    T = target.shape[1]
    drifting[..., HP.start] += 0.01 * torch.arange(T, dtype=target.dtype)
    drifting[:, 1:, HP_DOT.start] += 0.01
    terms = world_loss(drifting, target, mask, blend, SPEED)
    assert float(terms[FOOT_CONTACT_VELOCITY]) == pytest.approx(0.01, rel=1e-3)
    walking = _canonical_windows()  # feet move with the other joints: no contact step
    no_contact = world_loss(walking + 0.01, walking, mask, blend, SPEED)[FOOT_CONTACT_VELOCITY]
    assert float(no_contact) == 0.0


def test_the_acceleration_term_sees_jitter_that_position_and_velocity_barely_do():
    """A +-1 mm zig-zag of every joint in the head frame: position error 1 mm, velocity error
    2 mm/frame, acceleration error 4 mm/frame^2 (second difference of +-1); the whole body 1 cm
    off in the world has no acceleration error at all."""
    from train.loss import WORLD_ACCELERATION, WORLD_POSITION, world_loss

    target = _canonical_windows()
    mask = torch.ones(target.shape[:2], dtype=torch.bool)
    T = target.shape[1]
    jittered = target.clone()
    sign = torch.where(torch.arange(T) % 2 == 0, 1.0, -1.0).to(target.dtype)
    jittered[..., JP.start + 2 :: 3][..., :NUM_JOINTS] += 0.001 * sign[None, :, None]
    terms = world_loss(jittered, target, mask, 0.0, SPEED)
    joints = NUM_JOINTS / (NUM_JOINTS + 1)  # the head point itself does not move
    # (not exactly: the zig-zag is along the head's forward axis, which turns a little)
    assert float(terms[WORLD_ACCELERATION]) == pytest.approx(0.004 * joints, rel=1e-2)
    assert float(terms[WORLD_POSITION]) == pytest.approx(0.001 * joints, rel=1e-2)
    offset = target.clone()
    offset[..., HP] += 0.01
    assert float(world_loss(offset, target, mask, 0.0, SPEED)[WORLD_ACCELERATION]) < 1e-6


@pytest.mark.parametrize("loss", ["features", "world"])
def test_training_loss_totals_once_as_pooled_terms_are_totalled(loss):
    """TOTAL of `training_loss` is `total_of` its terms (what validation pools), computed once;
    under the features loss it is `vae_loss`'s, whose lambda_kl default is the model config's."""
    from shared.store import NormStats
    from train.config import RunConfig, TrainConfig
    from train.data import Normalizer, WindowBatch, prepare_batch
    from train.loss import total_of, training_loss, vae_terms
    from train.model import MotionVAEConfig

    config = RunConfig(MotionVAEConfig(lambda_kl=0.25), TrainConfig(loss=loss))
    normalizer = Normalizer(NormStats(np.zeros(FEATURE_DIM), np.ones(FEATURE_DIM), 1, 32), "cpu")
    world = _canonical_windows(B=2, T=32, planted_feet=True).float()
    mask = torch.ones(2, 32, dtype=torch.bool)
    prep = prepare_batch(WindowBatch(world, mask, torch.zeros(2), torch.zeros(2)), normalizer)
    recon, _, mean, logvar = _batch(2, 32, seed=3)
    terms = training_loss(
        {"recon": recon, "mean": mean, "logvar": logvar}, prep, normalizer, config, SPEED
    )
    assert terms[TOTAL] == total_of({k: v for k, v in terms.items() if k != TOTAL}, config)
    assert TOTAL not in vae_terms(recon, prep.x, mean, logvar, prep.mask)
    features = vae_loss(recon, prep.x, mean, logvar, prep.mask, lambda_kl=0.25)[TOTAL]
    assert (terms[TOTAL] == features) == (loss == "features")
    default = vae_loss(recon, prep.x, mean, logvar, prep.mask)[TOTAL]
    kl_weighted = vae_loss(recon, prep.x, mean, logvar, prep.mask, MotionVAEConfig().lambda_kl)
    assert default == kl_weighted[TOTAL]
