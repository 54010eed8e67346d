"""Pictures of a run and of its reconstructions (matplotlib, headless).

Every function takes arrays (or a metrics file) and an output path, writes one PNG or GIF,
and returns the path. Joints are (T, 23, 3) in metres in a Z-up frame (world or canonical).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.animation import FuncAnimation, PillowWriter

from shared.skeleton import BONES, JOINT_NAMES

GT_COLOR = "tab:blue"
PRED_COLOR = "tab:red"


def _save(fig: plt.Figure, out_path: Path, dpi: int = 110) -> Path:
    """Lay out, write and close a figure; returns the path."""
    fig.tight_layout()
    out_path = Path(out_path)
    fig.savefig(out_path, dpi=dpi)
    plt.close(fig)
    return out_path


def read_metrics(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def plot_loss_curves(metrics_path: Path, out_path: Path) -> Path | None:
    """Train and validation loss terms against step (log scale); None when there is nothing to
    plot."""
    rows = read_metrics(metrics_path) if Path(metrics_path).exists() else []
    keys = sorted(
        {
            k
            for r in rows
            for k in r
            if k.startswith(("train/", "val/")) and ("/mse" in k or k.endswith(("/total", "/kl")))
        }
    )
    if not rows or not keys:
        return None
    fig, (ax_loss, ax_mm) = plt.subplots(1, 2, figsize=(12, 4.5))
    for key in keys:
        pts = [(r["step"], r[key]) for r in rows if key in r]
        ax_loss.plot(*zip(*pts), label=key, marker="o" if key.startswith("val/") else None, ms=3)
    ax_loss.set(
        xlabel="step", ylabel="loss (normalised features)", yscale="log", title="loss terms"
    )
    ax_loss.legend(fontsize=7)
    for key in ("val/mpjpe_head_mm", "val/mpjpe_world_mm"):
        pts = [(r["step"], r[key]) for r in rows if key in r]
        if pts:
            ax_mm.plot(*zip(*pts), label=key, marker="o", ms=3)
    ax_mm.set(xlabel="step", ylabel="mm", title="validation MPJPE")
    if ax_mm.lines:
        ax_mm.legend(fontsize=7)
    return _save(fig, out_path)


def _check_joints(name: str, joints_m: np.ndarray) -> np.ndarray:
    joints_m = np.asarray(joints_m, dtype=np.float64)
    if joints_m.ndim != 3 or joints_m.shape[1:] != (len(JOINT_NAMES), 3):
        raise ValueError(
            f"{name} must be (T, {len(JOINT_NAMES)}, 3) joints, found {joints_m.shape}"
        )
    return joints_m


def _cube_limits(*joints_m: np.ndarray) -> tuple[np.ndarray, float]:
    """Centre and half-width of a cube holding every point: equal scale on all three axes."""
    points = np.concatenate([j.reshape(-1, 3) for j in joints_m])
    lo, hi = points.min(0), points.max(0)
    return (lo + hi) / 2, max(float((hi - lo).max()) / 2, 0.5)


def _new_skeleton_axes(
    fig: plt.Figure, rows: int, cols: int, index: int, centre: np.ndarray, half: float
):
    ax = fig.add_subplot(rows, cols, index, projection="3d")
    ax.set_xlim(centre[0] - half, centre[0] + half)
    ax.set_ylim(centre[1] - half, centre[1] + half)
    ax.set_zlim(centre[2] - half, centre[2] + half)
    ax.set_box_aspect((1, 1, 1))
    ax.view_init(elev=15, azim=-60)
    ax.tick_params(labelsize=5)
    return ax


def _bone_lines(ax, joints_m: np.ndarray, color: str, alpha: float = 1.0, lw: float = 2.0) -> list:
    """One Line3D per bone of the (23, 3) pose; returned so animations can move them."""
    return [
        ax.plot(*joints_m[[child, parent]].T, color=color, alpha=alpha, lw=lw)[0]
        for child, parent in BONES
    ]


def _body_limits(*poses_m: np.ndarray) -> tuple[np.ndarray, float]:
    """Centre and half-width of a cube around one frame's poses (23, 3): zoomed to the body."""
    points = np.concatenate([p.reshape(-1, 3) for p in poses_m])
    lo, hi = points.min(0), points.max(0)
    return (lo + hi) / 2, max(float((hi - lo).max()) / 2 + 0.1, 0.5)


def plot_skeleton_frames(
    gt_m: np.ndarray,
    pred_m: np.ndarray,
    frames: Sequence[int],
    out_path: Path,
    title: str = "",
    gt_head_m: np.ndarray | None = None,
    pred_head_m: np.ndarray | None = None,
) -> Path:
    """One window: ground truth (blue) and reconstruction (red) overlaid at the given frames,
    each panel zoomed to the body at that frame; with head positions (T, 3), a last panel
    shows the head trajectory from above (truth vs reconstruction, circles at the start)."""
    gt_m, pred_m = _check_joints("gt_m", gt_m), _check_joints("pred_m", pred_m)
    if gt_m.shape != pred_m.shape:
        raise ValueError(f"gt_m {gt_m.shape} and pred_m {pred_m.shape} differ")
    frames = list(frames)
    with_head = gt_head_m is not None and pred_head_m is not None
    cols = len(frames) + int(with_head)
    fig = plt.figure(figsize=(3 * cols, 3.4))
    for col, t in enumerate(frames):
        centre, half = _body_limits(gt_m[t], pred_m[t])
        ax = _new_skeleton_axes(fig, 1, cols, col + 1, centre, half)
        _bone_lines(ax, gt_m[t], GT_COLOR, lw=1.8)
        _bone_lines(ax, pred_m[t], PRED_COLOR, alpha=0.8, lw=1.4)
        ax.set_title(f"frame {t}", fontsize=8)
    if with_head:
        gt_head_m, pred_head_m = np.asarray(gt_head_m), np.asarray(pred_head_m)
        ax = fig.add_subplot(1, cols, cols)
        for head, color, label in (
            (gt_head_m, GT_COLOR, "truth"),
            (pred_head_m, PRED_COLOR, "reconstruction"),
        ):
            ax.plot(head[:, 0], head[:, 1], color=color, lw=1.5, label=label)
            ax.plot(head[0, 0], head[0, 1], "o", color=color, ms=4)
        ax.set_aspect("equal", adjustable="datalim")
        ax.set(xlabel="x (m)", ylabel="y (m)")
        ax.set_title("head trajectory, top view", fontsize=8)
        ax.tick_params(labelsize=6)
        ax.legend(fontsize=6)
    fig.suptitle(
        (title + ": " if title else "") + "ground truth (blue), reconstruction (red)", fontsize=9
    )
    # tight_layout measures every 3D tick label: slow, and the fixed grid needs no fitting.
    fig.subplots_adjust(left=0.02, right=0.98, bottom=0.12, top=0.85, wspace=0.15)
    out_path = Path(out_path)
    fig.savefig(out_path, dpi=100)
    plt.close(fig)
    return out_path


def plot_error_by_frame(
    curves_mm: Mapping[str, np.ndarray], out_path: Path, frames_per_latent: int
) -> Path:
    """Error against frame position inside the window, one line per curve; dotted lines mark
    latent boundaries (every `frames_per_latent` frames)."""
    fig, ax = plt.subplots(figsize=(9, 4))
    T = 0
    for label, values in curves_mm.items():
        values = np.asarray(values, dtype=np.float64)
        T = max(T, len(values))
        ax.plot(np.arange(len(values)), values, label=label, lw=1.5)
    for t in range(0, T + 1, frames_per_latent):
        ax.axvline(t - 0.5, color="0.85", lw=0.5, ls=":", zorder=0)
    ax.set(xlabel="frame index inside the window", ylabel="mm", title="error by frame position")
    ax.set_xlim(-0.5, T - 0.5)
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8)
    return _save(fig, out_path)


def plot_per_joint_error(
    errors_mm: np.ndarray,
    out_path: Path,
    label: str = "world MPJPE",
    names: Sequence[str] = JOINT_NAMES,
) -> Path:
    """Horizontal bars of the error of each joint (mm), in skeleton order."""
    errors_mm = np.asarray(errors_mm, dtype=np.float64)
    if errors_mm.shape != (len(names),):
        raise ValueError(
            f"errors_mm must have one value per joint ({len(names)}), found {errors_mm.shape}"
        )
    fig, ax = plt.subplots(figsize=(6, 0.28 * len(names) + 1.2))
    y = np.arange(len(names))
    ax.barh(y, np.nan_to_num(errors_mm), color=PRED_COLOR)
    ax.set_yticks(y, names, fontsize=7)
    ax.invert_yaxis()
    ax.set(xlabel="mm", title=f"{label} per joint")
    return _save(fig, out_path)


def animate_skeletons(
    gt_m: np.ndarray, pred_m: np.ndarray, out_path: Path, fps: float, frame_step: int = 2
) -> Path:
    """GIF of ground truth (left) and reconstruction (right) over a window, every
    `frame_step`-th frame, played at real speed."""
    gt_m, pred_m = _check_joints("gt_m", gt_m), _check_joints("pred_m", pred_m)
    if gt_m.shape != pred_m.shape:
        raise ValueError(f"gt_m {gt_m.shape} and pred_m {pred_m.shape} differ")
    frames = list(range(0, len(gt_m), frame_step))
    centre, half = _cube_limits(gt_m, pred_m)
    fig = plt.figure(figsize=(7, 3.6))
    ax_gt = _new_skeleton_axes(fig, 1, 2, 1, centre, half)
    ax_pred = _new_skeleton_axes(fig, 1, 2, 2, centre, half)
    ax_gt.set_title("ground truth", fontsize=9)
    ax_pred.set_title("reconstruction", fontsize=9)
    lines = [
        (_bone_lines(ax_gt, gt_m[0], GT_COLOR), gt_m),
        (_bone_lines(ax_pred, pred_m[0], PRED_COLOR), pred_m),
    ]
    caption = fig.suptitle("", fontsize=8)

    def draw(t: int) -> list:
        for bone_lines, joints in lines:
            for line, (child, parent) in zip(bone_lines, BONES):
                segment = joints[t, [child, parent]]  # (2, 3)
                line.set_data_3d(segment[:, 0], segment[:, 1], segment[:, 2])
        caption.set_text(f"frame {t}")
        return [line for bone_lines, _ in lines for line in bone_lines]

    animation = FuncAnimation(fig, draw, frames=frames, blit=False)
    out_path = Path(out_path)
    animation.save(out_path, writer=PillowWriter(fps=max(1.0, fps / frame_step)))
    plt.close(fig)
    return out_path
