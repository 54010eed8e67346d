"""Pictures are written, are images of something, and reject malformed input."""

from __future__ import annotations

import json

import matplotlib.image as mpimg
import numpy as np
import pytest
from PIL import Image

from shared.skeleton import NUM_JOINTS, PARENTS
from train.plots import (
    animate_skeletons,
    plot_error_by_frame,
    plot_loss_curves,
    plot_per_joint_error,
    plot_skeleton_frames,
)

T = 16


def standing_joints(T: int = T, seed: int = 0) -> np.ndarray:
    """(T, 23, 3) joints: each joint a fixed random bone below or beside its parent, swaying."""
    rng = np.random.default_rng(seed)
    bones = rng.normal(scale=0.12, size=(NUM_JOINTS, 3)) + np.array([0.0, 0.0, 0.1])
    joints = np.zeros((T, NUM_JOINTS, 3))
    joints[:, 0] = [0.0, 0.0, 1.0]
    for j, parent in enumerate(PARENTS):
        if parent >= 0:
            joints[:, j] = joints[:, parent] + bones[j]
    joints[..., 0] += 0.02 * np.sin(np.arange(T))[:, None]
    return joints


def assert_non_trivial_png(path, min_fraction: float = 0.005):
    image = mpimg.imread(path)  # (H, W, 3|4) floats in [0, 1]
    rgb = image[..., :3].reshape(-1, 3)
    non_background = np.any(rgb < 0.97, axis=1).mean()
    assert non_background > min_fraction, f"{path}: only {non_background:.4f} of pixels drawn"
    colours = np.unique((rgb * 255).round().astype(np.uint8), axis=0)
    assert len(colours) > 10, f"{path}: {len(colours)} colours"
    return image


def test_skeleton_frames(tmp_path):
    gt = standing_joints()
    pred = gt + 0.03
    out = plot_skeleton_frames(gt, pred, [0, 5, 15], tmp_path / "skeletons.png", title="window 0")
    image = assert_non_trivial_png(out)
    # The reconstruction is drawn in red: some pixels are strongly red.
    red = (image[..., 0] > 0.7) & (image[..., 1] < 0.4) & (image[..., 2] < 0.4)
    assert red.sum() > 50


def test_skeleton_frames_rejects_wrong_shapes(tmp_path):
    with pytest.raises(ValueError, match=r"gt_m must be \(T, 23, 3\)"):
        plot_skeleton_frames(np.zeros((T, 22, 3)), np.zeros((T, 22, 3)), [0], tmp_path / "x.png")


def test_error_by_frame_and_per_joint(tmp_path):
    curve = 20 + 10 * np.exp(-np.arange(T) / 3.0)
    out = plot_error_by_frame(
        {"world MPJPE": curve, "head-frame MPJPE": curve / 2}, tmp_path / "f.png", 4
    )
    assert_non_trivial_png(out)
    out = plot_per_joint_error(np.linspace(5, 60, NUM_JOINTS), tmp_path / "j.png")
    assert_non_trivial_png(out, min_fraction=0.02)
    with pytest.raises(ValueError, match="one value per joint"):
        plot_per_joint_error(np.ones(3), tmp_path / "bad.png")


def test_loss_curves(tmp_path):
    rows = [{"step": s, "train/total": 1.0 / s, "train/mse/head_6D": 0.5 / s} for s in range(1, 20)]
    rows.append({"step": 19, "val/total": 0.1, "val/mpjpe_world_mm": 80.0})
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert_non_trivial_png(plot_loss_curves(metrics, tmp_path / "loss.png"))
    assert plot_loss_curves(tmp_path / "missing.jsonl", tmp_path / "none.png") is None


def test_animation_gif(tmp_path):
    gt = standing_joints()
    out = animate_skeletons(gt, gt + 0.05, tmp_path / "anim.gif", fps=30.0, frame_step=4)
    with Image.open(out) as gif:
        assert gif.n_frames == T // 4
        gif.seek(gif.n_frames - 1)
        frame = np.asarray(gif.convert("RGB"))
    assert (frame < 240).any(axis=-1).mean() > 0.005
