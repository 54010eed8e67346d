"""A trained checkpoint put to use: loading for inference (used by evaluation,
`train.codec.MotionCodec` and the latent store).
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import torch

from shared.errors import InputError
from shared.layout import layout_description
from shared.store import FeatureStore
from train.checkpoint import Checkpoint, CheckpointError, load_checkpoint
from train.config import RunConfig, saved_config
from train.data import Normalizer
from train.model import MotionVAE

logger = logging.getLogger(__name__)


def config_from_checkpoint(ckpt: Checkpoint) -> RunConfig:
    """The run config a checkpoint was trained with (fields it predates as they were then);
    `CheckpointError` when this code cannot read it (e.g. fields of a newer version)."""
    try:
        return RunConfig.from_dict(saved_config(ckpt.config), source="checkpoint")
    except (ValueError, TypeError) as error:  # the config's own checks, on untrusted values
        raise CheckpointError(
            f"{error}; this code cannot use the checkpoint's config: use the code version that "
            f"trained it (package {ckpt.package_version!r})"
        ) from None


# --- model and checkpoint ---------------------------------------------------------------------


def file_sha256(path: Path) -> str:
    with Path(path).open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def load_for_inference(
    ckpt_path: Path, device: torch.device
) -> tuple[Checkpoint, MotionVAE, Normalizer]:
    """Checkpoint, its model in eval mode on `device`, and its normalisation statistics."""
    ckpt = load_checkpoint(ckpt_path, map_location="cpu")
    if ckpt.layout != layout_description():
        raise InputError(
            f"{ckpt_path}: trained on feature layout {ckpt.layout!r}, but shared.layout defines "
            f"{layout_description()!r}"
        )
    model = MotionVAE(config_from_checkpoint(ckpt).model)
    model.load_state_dict(ckpt.model)
    return ckpt, model.to(device).eval(), Normalizer(ckpt.stats, device)


def warn_if_other_store(ckpt: Checkpoint, store: FeatureStore) -> None:
    if ckpt.store_fingerprint != store.fingerprint:
        logger.warning(
            "checkpoint was trained on store %s (fingerprint %s), running on %s (fingerprint %s); "
            "normalisation uses the checkpoint's statistics",
            ckpt.store_url,
            ckpt.store_fingerprint[:12],
            store.url,
            store.fingerprint[:12],
        )
