"""VAE training loss: per-group masked MSE on normalized features plus a small KL term.

    total = recon + lambda_kl * kl,   recon = mean over the groups of shared.layout.LOSS_GROUPS

Masks are (B, T) bool, True for a real frame. Padded frames are dropped with
`torch.where` before any arithmetic, so whatever they hold (even inf or nan) changes
neither the loss nor any gradient.
"""

from __future__ import annotations

import torch

from shared.layout import FEATURE_DIM, LOSS_GROUPS
from train.model import FRAMES_PER_LATENT

TOTAL = "total"
RECON = "recon"
KL = "kl"


def mse_key(group: str) -> str:
    """Key of one loss group's MSE in the `vae_loss` dict, e.g. "mse/head_6D"."""
    return f"mse/{group}"


def latent_mask(mask: torch.Tensor, num_latents: int) -> torch.Tensor:
    """(B, T) frame mask -> (B, num_latents): a latent is valid if any of its 4 frames is.

    T may be short of 4 * num_latents (a sequence padded by `encode_sequence`); the
    missing frames count as padding.
    """
    B, T = mask.shape
    if not FRAMES_PER_LATENT * (num_latents - 1) < T <= FRAMES_PER_LATENT * num_latents:
        raise ValueError(
            f"a mask of {T} frames does not match {num_latents} latents "
            f"({FRAMES_PER_LATENT} frames per latent)"
        )
    padded = mask.new_zeros(B, FRAMES_PER_LATENT * num_latents)
    padded[:, :T] = mask
    return padded.view(B, num_latents, FRAMES_PER_LATENT).any(dim=2)  # (B, N)


def vae_loss(
    recon: torch.Tensor,
    target: torch.Tensor,
    mean: torch.Tensor,
    logvar: torch.Tensor,
    mask: torch.Tensor | None = None,
    lambda_kl: float = 1e-4,
) -> dict[str, torch.Tensor]:
    """Loss terms of one batch, as float32 scalars.

    recon, target: (B, T, D) normalized features; mean, logvar: (B, N, L) posterior;
    mask: (B, T) bool, True = valid frame (None: all valid).

    Returns `mse_key(g)` for every loss group g (squared error averaged over valid
    frames x the group's dims), RECON (mean of the group MSEs), KL (KL(N(mean,
    exp(logvar)) || N(0, I)) averaged over valid latents x latent dims) and TOTAL.
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
    losses[TOTAL] = losses[RECON] + lambda_kl * losses[KL]
    return losses
