"""Encode -> decode of whole sequences: equals the model's own reconstruction, returns to the world;
the latent store's root-attribute check."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from shared.features import apply_rigid, canonicalize, uncanonicalize, world_to_features
from shared.layout import FEATURE_DIM
from shared.rotations import axis_angle_to_matrix, yaw_matrix
from shared.skeleton import NUM_JOINTS
from shared.store import NormStats
from train.data import Normalizer
from train.inference import decode_world_features, encode_world_features
from train.latents import LATENT_SCHEMA, SCHEMA_VERSION, check_latent_attrs
from train.model import MotionVAE, MotionVAEConfig

CONFIG = MotionVAEConfig(hidden_dim=32, latent_dim=8, blocks_per_stage=1, seq_len=32)


def randomized_model(seed: int = 0) -> MotionVAE:
    """A model whose every weight is O(1), so the decoder's output is far from its tiny init."""
    torch.manual_seed(seed)
    model = MotionVAE(CONFIG)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape) / math.sqrt(p[0].numel()) if p.ndim >= 2 else 0.1 * torch.randn(p.shape))
    return model.eval()


def world_sequence(T: int, seed: int = 0) -> torch.Tensor:
    """(T, 294) float32 world features of a smooth random motion far from the origin."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(T, dtype=torch.float64)[:, None]
    t_head = torch.tensor([3.0, -2.0, 1.6], dtype=torch.float64) + 0.02 * t * torch.tensor([1.0, 0.5, 0.0])
    R_head = axis_angle_to_matrix(torch.randn(3, generator=g, dtype=torch.float64), 0.5 + 0.03 * t[:, 0])
    p_joints = t_head[:, None] + 0.3 * torch.randn(1, NUM_JOINTS, 3, generator=g, dtype=torch.float64)
    R_joints = axis_angle_to_matrix(
        torch.randn(NUM_JOINTS, 3, generator=g, dtype=torch.float64), 0.02 * t.expand(T, NUM_JOINTS)
    )
    return world_to_features(t_head, R_head, p_joints, R_joints).float()


def normalizer(seed: int = 0) -> Normalizer:
    rng = np.random.default_rng(seed)
    stats = NormStats(
        mean=rng.normal(scale=0.1, size=FEATURE_DIM).astype(np.float32),
        std=rng.uniform(0.05, 1.0, size=FEATURE_DIM).astype(np.float32),
        count=1000,
        window_frames=CONFIG.seq_len,
    )
    return Normalizer(stats, "cpu")


@pytest.mark.parametrize("T", [29, 32, 57])
def test_decode_of_encode_is_the_models_reconstruction(T):
    model, norm = randomized_model(), normalizer()
    features = world_sequence(T)
    mean, logvar, frame = encode_world_features(model, norm, features)
    assert mean.shape == logvar.shape == (math.ceil(T / 4), CONFIG.latent_dim)
    decoded = decode_world_features(model, norm, mean, frame, T)

    # The model's reconstruction of the same sequence: whole-sequence canonicalisation,
    # encode_sequence, decode_sequence on the mean latents, back to the world.
    with torch.no_grad():
        canonical, frame_ref = canonicalize(features[None])
        z, _ = model.encode_sequence(norm.normalize(canonical))
        recon = norm.denormalize(model.decode_sequence(z, T))
        expected = uncanonicalize(recon, frame_ref)[0]
    assert decoded.shape == (T, FEATURE_DIM)
    torch.testing.assert_close(decoded, expected, atol=1e-5, rtol=0)
    assert float((decoded - features).abs().mean()) > 1e-3  # a random model does not copy its input


def test_latents_do_not_depend_on_where_the_sequence_is_in_the_world():
    model, norm = randomized_model(), normalizer()
    features = world_sequence(40)
    R = yaw_matrix(torch.tensor(1.1), (0.0, 0.0, 1.0)).float()
    moved = apply_rigid(features[None], R[None], torch.tensor([[5.0, -7.0, 0.0]]))[0]
    mean, _, frame = encode_world_features(model, norm, features)
    mean_moved, _, frame_moved = encode_world_features(model, norm, moved)
    torch.testing.assert_close(mean, mean_moved, atol=1e-4, rtol=1e-4)
    # The stored canonical frame brings the decoded motion back to where each one was.
    decoded = decode_world_features(model, norm, mean, frame, 40)
    decoded_moved = decode_world_features(model, norm, mean_moved, frame_moved, 40)
    torch.testing.assert_close(
        apply_rigid(decoded[None], R[None], torch.tensor([[5.0, -7.0, 0.0]]))[0], decoded_moved, atol=2e-4, rtol=1e-4
    )


def test_latent_attrs_check_names_what_is_wrong():
    good = {"schema": {"name": LATENT_SCHEMA, "version": SCHEMA_VERSION}, "complete": True}
    check_latent_attrs(good, "l.zarr")
    with pytest.raises(ValueError, match="expected a 'nymeria-motion-latents' store"):
        check_latent_attrs({**good, "schema": {"name": "nymeria-feature-store", "version": 1}}, "l.zarr")
    with pytest.raises(ValueError, match="schema version 99, this code reads version 1"):
        check_latent_attrs({**good, "schema": {"name": LATENT_SCHEMA, "version": 99}}, "l.zarr")
    with pytest.raises(ValueError, match="l.zarr is incomplete"):
        check_latent_attrs({**good, "complete": False}, "l.zarr")
