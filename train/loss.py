"""VAE training loss: per-group masked MSE on normalized features plus a small KL term
(the seed design's loss, `vae_loss`), and the world-space terms of the default loss
(`world_loss`).

    features: total = recon + lambda_kl * kl,
              recon = mean over the groups of shared.layout.LOSS_GROUPS
    world:    total = features total + w_pos * world/position_m
                                + w_vel * world/velocity_m_per_frame
                                + w_head * head_frame/position_m
                                + w_foot * world/foot_contact_velocity_m_per_frame
                                + w_rot * world/head_orientation_rad
                                + w_acc * world/acceleration_m_per_frame2

The world terms measure what a reconstruction looks like in the world: the decoded canonical
window is turned into world joints and head position (`shared.features.decoded_to_world`,
the decoding evaluation and export use) and compared in metres with the true window. They do
not see the head's orientation on its own: a wrong head rotation with joints rotated to match
is the same world pose. The head-frame term (joints relative to the head, in metres, what
head-frame MPJPE measures) pins that down. The foot-contact term is the world velocity error
of the foot joints on the steps where the true foot is planted (`train.metrics`' contact, what
foot skating is measured on): a planted foot ties the head's world velocity to the legs, which
the model reconstructs well relative to the head. The head-orientation term is the angle of
the decoded head rotation's error: the world terms see it only through the joints, weighted by
their distance to the head. The acceleration term is the error of the second differences of the
world joints and head (metres/frame^2): it sees jitter, which position and velocity errors of a
few millimetres hardly do.

Masks are (B, T) bool, True for a real frame. Padded frames are dropped with
`torch.where` before any arithmetic, so whatever they hold (even inf or nan) changes
neither the loss nor any gradient.
"""

from __future__ import annotations

import math

import torch

from shared.features import WorldMotion, decoded_to_world
from shared.layout import FEATURE_DIM, JP, LOSS_GROUPS
from shared.skeleton import FOOT_JOINTS, NUM_JOINTS
from train.config import RunConfig
from train.data import Normalizer, PreparedBatch
from train.metrics import RECON_LOSS, MaskedSum, foot_contact_steps, joint_distance_m
from train.model import MotionVAEConfig, latent_mask

TOTAL = "total"
RECON = "recon"
KL = "kl"
WORLD_POSITION = "world/position_m"
WORLD_VELOCITY = "world/velocity_m_per_frame"
HEAD_FRAME_POSITION = "head_frame/position_m"
FOOT_CONTACT_VELOCITY = "world/foot_contact_velocity_m_per_frame"
HEAD_ORIENTATION = "world/head_orientation_rad"
WORLD_ACCELERATION = "world/acceleration_m_per_frame2"
# Per-frame (per-step) means in metres or radians.
WORLD_TERMS = (
    WORLD_POSITION,
    WORLD_VELOCITY,
    HEAD_FRAME_POSITION,
    FOOT_CONTACT_VELOCITY,
    HEAD_ORIENTATION,
    WORLD_ACCELERATION,
)


def mse_key(group: str) -> str:
    """Key of one loss group's MSE in the `vae_loss` dict, e.g. "mse/head_6D"."""
    return f"mse/{group}"


def vae_loss(
    recon: torch.Tensor,
    target: torch.Tensor,
    mean: torch.Tensor,
    logvar: torch.Tensor,
    mask: torch.Tensor | None = None,
    lambda_kl: float = MotionVAEConfig.lambda_kl,
) -> dict[str, torch.Tensor]:
    """`vae_terms` and their TOTAL under the features loss (recon + lambda_kl * kl)."""
    terms = vae_terms(recon, target, mean, logvar, mask)
    terms[TOTAL] = _features_total(terms, lambda_kl)
    return terms


def vae_terms(
    recon: torch.Tensor,
    target: torch.Tensor,
    mean: torch.Tensor,
    logvar: torch.Tensor,
    mask: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Loss terms of one batch, as float32 scalars.

    recon, target: (B, T, D) normalized features; mean, logvar: (B, N, L) posterior;
    mask: (B, T) bool, True = valid frame (None: all valid).

    Returns `mse_key(g)` for every loss group g (squared error averaged over valid
    frames x the group's dims), RECON (mean of the group MSEs) and KL (KL(N(mean,
    exp(logvar)) || N(0, I)) averaged over valid latents x latent dims); no TOTAL.
    A batch with no valid frame gives zeros rather than nan.
    """
    if recon.shape != target.shape:
        raise ValueError(f"recon {tuple(recon.shape)} and target {tuple(target.shape)} differ")
    if mean.shape != logvar.shape:
        raise ValueError(f"mean {tuple(mean.shape)} and logvar {tuple(logvar.shape)} differ")
    B, T, D = target.shape
    if D != FEATURE_DIM:
        raise ValueError(f"loss groups are defined on {FEATURE_DIM}-D features, found D={D}")
    N = mean.shape[1]
    if mask is None:
        mask = torch.ones(B, T, dtype=torch.bool, device=target.device)
    if mask.shape != (B, T) or mask.dtype != torch.bool:
        raise ValueError(
            f"mask must be bool of shape {(B, T)}, found {mask.dtype} {tuple(mask.shape)}"
        )

    # float32 even under autocast: the squared errors are summed over ~1e6 elements.
    frame_valid = mask[:, :, None]  # (B, T, 1)
    recon = torch.where(frame_valid, recon.float(), 0.0)
    target = torch.where(frame_valid, target.float(), 0.0)
    sq_err_per_dim = (recon - target).square().sum(dim=(0, 1))  # (D,)
    num_frames = mask.sum().clamp_min(1)

    losses: dict[str, torch.Tensor] = {}
    for group, dims in LOSS_GROUPS.items():
        width = dims.stop - dims.start
        losses[mse_key(group)] = sq_err_per_dim[dims].sum() / (num_frames * width)
    losses[RECON] = torch.stack([losses[mse_key(g)] for g in LOSS_GROUPS]).mean()

    latent_valid = latent_mask(mask, N)[:, :, None]  # (B, N, 1)
    mean = torch.where(latent_valid, mean.float(), 0.0)
    logvar = torch.where(latent_valid, logvar.float(), 0.0)
    kl = 0.5 * (mean.square() + logvar.exp() - 1.0 - logvar)  # (B, N, L), 0 where invalid
    losses[KL] = kl.sum() / (latent_valid.sum().clamp_min(1) * mean.shape[2])
    return losses


def world_points_m(features: torch.Tensor, head_blend: float) -> torch.Tensor:
    """(B, T, 294) canonical features -> (B, T, 24, 3): the 23 world joints and the head."""
    return _points_m(decoded_to_world(features, head_blend))


def _points_m(world: WorldMotion) -> torch.Tensor:
    return torch.cat([world.joint_translation, world.cpf_translation[:, :, None]], 2)


def world_loss(
    recon: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor,
    head_blend: float,
    contact_speed_m_per_frame: float,
) -> dict[str, torch.Tensor]:
    """Mean position and velocity error (metres, metres/frame) of world joints and head, mean
    position error of the joints in the head frame (metres), mean velocity error of the foot
    joints on their contact steps (metres/frame), mean angle of the head orientation's error
    (radians, to first order) and mean acceleration error of world joints and head
    (metres/frame^2).

    recon, target: (B, T, 294) canonical features in physical units (denormalised); mask:
    (B, T) bool. The target is decoded exactly (`features_to_world`), the reconstruction
    with `head_blend`. Padded frames are replaced by the target before decoding (the head
    trajectory is causal, so they cannot reach a valid frame) and masked out of both means;
    a velocity (acceleration) counts where both (all three) of its frames are valid. Contact
    steps come from the target (`train.metrics.foot_contact_steps` with
    `contact_speed_m_per_frame`, i.e. 0.2 m/s at the store's frame rate); a batch without one
    gives 0.
    """
    valid = mask[:, :, None]  # (B, T, 1)
    recon = torch.where(valid, recon.float(), target.float())
    pred, true = decoded_to_world(recon, head_blend), decoded_to_world(target.float(), 0.0)
    pred_m, true_m = _points_m(pred), _points_m(true)  # (B, T, 24, 3)
    position_err = joint_distance_m(pred_m, true_m)  # (B, T, 24)
    velocity_err = joint_distance_m(torch.diff(pred_m, dim=1), torch.diff(true_m, dim=1))
    step_valid = (mask[:, 1:] & mask[:, :-1])[:, :, None]
    accel_err = joint_distance_m(torch.diff(pred_m, 2, dim=1), torch.diff(true_m, 2, dim=1))
    accel_valid = step_valid[:, 1:] & step_valid[:, :-1]
    points = pred_m.shape[2]
    B, T, _ = recon.shape
    head_frame_err = joint_distance_m(
        recon[..., JP].reshape(B, T, -1, 3), target[..., JP].float().reshape(B, T, -1, 3)
    )
    contact = foot_contact_steps(true_m[:, :, :NUM_JOINTS], mask, contact_speed_m_per_frame)
    foot_err = velocity_err[:, :, list(FOOT_JOINTS)]  # (B, T - 1, F)
    # Chordal distance / sqrt(2): the rotation angle to first order, smooth at 0 (an angle
    # through acos or atan2 has an infinite gradient where the two agree).
    orientation_err = (pred.cpf_orientation - true.cpf_orientation).flatten(-2).norm(dim=-1)
    orientation_err = orientation_err / math.sqrt(2.0)  # (B, T)
    return {
        HEAD_FRAME_POSITION: torch.where(valid, head_frame_err, 0.0).sum()
        / (mask.sum().clamp_min(1) * head_frame_err.shape[2]),
        WORLD_POSITION: torch.where(valid, position_err, 0.0).sum()
        / (mask.sum().clamp_min(1) * points),
        WORLD_VELOCITY: torch.where(step_valid, velocity_err, 0.0).sum()
        / (step_valid.sum().clamp_min(1) * points),
        FOOT_CONTACT_VELOCITY: torch.where(contact, foot_err, 0.0).sum()
        / contact.sum().clamp_min(1),
        HEAD_ORIENTATION: torch.where(mask, orientation_err, 0.0).sum() / mask.sum().clamp_min(1),
        WORLD_ACCELERATION: torch.where(accel_valid, accel_err, 0.0).sum()
        / (accel_valid.sum().clamp_min(1) * points),
    }


def training_loss(
    out: dict[str, torch.Tensor],
    prep: PreparedBatch,
    normalizer: Normalizer,
    config: RunConfig,
    contact_speed_m_per_frame: float,
) -> dict[str, torch.Tensor]:
    """Every loss term of one batch under `config.train.loss`, and TOTAL, the one to minimise.

    `contact_speed_m_per_frame`: the foot-contact speed threshold at the store's frame rate
    (`train.metrics.contact_speed_m_per_frame(fps)`)."""
    terms = vae_terms(
        out["recon"].float(), prep.x, out["mean"].float(), out["logvar"].float(), prep.mask
    )
    if config.train.loss == "world":
        recon = normalizer.denormalize(out["recon"].float())
        terms |= world_loss(
            recon, prep.canonical, prep.mask, config.train.head_blend, contact_speed_m_per_frame
        )
    terms[TOTAL] = total_of(terms, config)
    return terms


def total_of(terms: dict[str, torch.Tensor | float], config: RunConfig):
    """TOTAL from the other terms (also from terms pooled over batches)."""
    total = _features_total(terms, config.model.lambda_kl)
    if config.train.loss == "world":
        total = total + config.train.world_position_weight * terms[WORLD_POSITION]
        total = total + config.train.world_velocity_weight * terms[WORLD_VELOCITY]
        total = total + config.train.head_frame_weight * terms[HEAD_FRAME_POSITION]
        total = total + config.train.foot_contact_weight * terms[FOOT_CONTACT_VELOCITY]
        total = total + config.train.head_orientation_weight * terms[HEAD_ORIENTATION]
        total = total + config.train.world_acceleration_weight * terms[WORLD_ACCELERATION]
    return total


def _features_total(terms: dict[str, torch.Tensor | float], lambda_kl: float):
    return terms[RECON] + lambda_kl * terms[KL]


def loss_sums(
    terms: dict[str, torch.Tensor], num_frames: int, num_latents: int
) -> dict[str, MaskedSum]:
    """Batch-mean loss terms (`train.loss.vae_loss`) -> sums weighted by the frames (MSE) or
    latents (KL) each term averaged over, so batches pool exactly."""
    frames = torch.tensor(float(num_frames), dtype=torch.float64)
    latents = torch.tensor(float(num_latents), dtype=torch.float64)
    sums = {
        key: MaskedSum(terms[key].detach().cpu().double() * frames, frames)
        for key in terms
        if key.startswith("mse/")
    }
    sums[RECON_LOSS] = MaskedSum(terms[RECON].detach().cpu().double() * frames, frames)
    sums[KL] = MaskedSum(terms[KL].detach().cpu().double() * latents, latents)
    for key in WORLD_TERMS:
        if key in terms:  # weighted by frames: a close enough pooling of a per-frame mean
            sums[key] = MaskedSum(terms[key].detach().cpu().double() * frames, frames)
    return sums
