"""Pictures are written, are images of something, and reject malformed input; the figures
behind them have what a slide needs (checked on the matplotlib objects, not on pixels): one
axis range per figure, axes labelled with units, few 3D ticks, truth and reconstruction in the
same panel, distinct colours, legends outside the data, and short runs still plotted."""

from __future__ import annotations

import json

import matplotlib.colors as mcolors
import matplotlib.image as mpimg
import matplotlib.pyplot as plt
import numpy as np
import pytest
from PIL import Image

from shared.skeleton import JOINT_NAMES, NUM_JOINTS, PARENTS, ROOT
from train.plots import (
    GT_COLOR,
    PRED_COLOR,
    animate_skeletons,
    loss_figure,
    per_joint_figure,
    plot_error_by_frame,
    plot_loss_curves,
    plot_per_joint_error,
    plot_skeleton_frames,
    skeleton_animation,
    skeleton_figure,
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
    errors = {"world MPJPE": np.linspace(5, 60, NUM_JOINTS), "head-frame MPJPE": np.ones(23)}
    out = plot_per_joint_error(errors, tmp_path / "j.png")
    assert_non_trivial_png(out, min_fraction=0.02)
    with pytest.raises(ValueError, match="world MPJPE: one value per joint"):
        plot_per_joint_error({"world MPJPE": np.ones(3)}, tmp_path / "bad.png")


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


# --- what the figures hold ---------------------------------------------------------------------


def walking_joints(T: int = 40, metres: float = 4.0) -> np.ndarray:
    """The standing body walking `metres` along x over the window: far more than its size."""
    joints = standing_joints(T)
    joints[..., 0] += np.linspace(0.0, metres, T)[:, None]
    return joints


def _colour(line) -> tuple:
    return mcolors.to_rgba(line.get_color())


def _assert_legend_outside(ax, fig):
    """The legend's box (of a drawn figure) does not overlap the axes' data area."""
    renderer = fig.canvas.get_renderer()
    legend, data = ax.get_legend().get_window_extent(renderer), ax.get_window_extent(renderer)
    assert legend.x0 >= data.x1 or legend.y1 <= data.y0 or legend.y0 >= data.y1, ax.get_title()


def test_skeleton_panels_share_one_range_follow_the_body_and_label_axes_with_units():
    gt = walking_joints()
    pred = gt + np.array([0.05, -0.03, 0.0])
    frames = [0, 13, 26, 39]
    fig = skeleton_figure(gt, pred, frames, "window 7", gt[:, 6], pred[:, 6])
    panels = [ax for ax in fig.axes if ax.name == "3d"]
    assert len(panels) == len(frames)
    for get in ("get_xlim", "get_ylim", "get_zlim"):
        assert len({getattr(ax, get)() for ax in panels}) == 1, f"{get} differs between panels"
    # The camera follows the body: the panels span about the body, not the 4 m walked.
    x_low, x_high = panels[0].get_xlim()
    assert x_high - x_low < 2.5
    for ax in panels:
        for get in ("get_xlabel", "get_ylabel", "get_zlabel"):
            assert getattr(ax, get)().endswith("(m)"), (get, getattr(ax, get)())
        for axis in (ax.xaxis, ax.yaxis, ax.zaxis):
            inside = [
                t
                for t in axis.get_majorticklocs()
                if min(axis.get_view_interval()) - 1e-9 <= t <= max(axis.get_view_interval()) + 1e-9
            ]
            assert len(inside) <= 4, f"{len(inside)} ticks on one 3D axis overlap"
        colours = {_colour(line) for line in ax.lines}
        assert colours == {mcolors.to_rgba(GT_COLOR), mcolors.to_rgba(PRED_COLOR)}
    legend_texts = {t.get_text() for legend in fig.legends for t in legend.get_texts()}
    assert legend_texts == {"ground truth", "reconstruction"}
    top = next(ax for ax in fig.axes if ax.name != "3d")
    assert top.get_xlabel() == "x (m)" and top.get_ylabel() == "y (m)"
    # The top view's y label stays clear of the 3D panel beside it.
    fig.canvas.draw()  # places the labels
    renderer = fig.canvas.get_renderer()
    label = top.yaxis.label.get_window_extent(renderer)
    assert label.x0 > panels[-1].get_tightbbox(renderer).x1
    plt.close(fig)


def test_animation_overlays_truth_and_reconstruction_with_a_camera_on_the_pelvis():
    gt = walking_joints(T=12)
    fig, draw, frames = skeleton_animation(gt, gt + 0.04, frame_step=1)
    assert len(fig.axes) == 1 and frames == list(range(12))
    ax = fig.axes[0]
    spans = set()
    for t in (0, 11):
        draw(t)
        (x_low, x_high), (y_low, y_high) = ax.get_xlim(), ax.get_ylim()
        assert (x_low + x_high) / 2 == pytest.approx(gt[t, ROOT, 0])
        assert (y_low + y_high) / 2 == pytest.approx(gt[t, ROOT, 1])
        spans.add(round(x_high - x_low, 9))
    assert len(spans) == 1 and spans.pop() < 2.5
    colours = {_colour(line) for line in ax.lines}
    assert {mcolors.to_rgba(GT_COLOR), mcolors.to_rgba(PRED_COLOR)} <= colours
    plt.close(fig)


TERMS = ("total", "recon", "kl", "mse/head_6D", "mse/head_3D", "mse/joint_3D", "mse/joint_6D",
         "world/position_m", "world/velocity_m_per_frame", "head_frame/position_m",
         "world/foot_contact_velocity_m_per_frame", "world/head_orientation_rad")  # fmt: skip


SPLITS = ("training", "validation")  # the legend entries of the line styles


def metrics_rows(steps: int, log_every: int, val_every: int) -> list[dict]:
    """metrics.jsonl lines as `train fit` writes them: every term, train and validation."""
    rows = []
    for step in range(1, steps + 1):
        if step % log_every == 0 or step == steps:
            rows.append(
                {
                    "step": step,
                    **{f"train/{t}": 1.0 + i / step for i, t in enumerate(TERMS)},
                    "train/lr": 1e-4,
                }
            )
        if step % val_every == 0 or step == steps:
            rows.append(
                {
                    "step": step,
                    **{f"val/{t}": 2.0 + i for i, t in enumerate(TERMS)},
                    "val/mpjpe_world_mm": 150.0,
                    "val/mpjpe_head_mm": 15.0,
                }
            )
    return rows


def test_loss_figure_gives_each_term_a_colour_and_each_unit_its_axis():
    fig = loss_figure(metrics_rows(steps=200, log_every=10, val_every=50))
    by_label = {ax.get_ylabel(): ax for ax in fig.axes}
    kl = next(ax for label, ax in by_label.items() if "KL" in label)
    assert "nats" in kl.get_ylabel() and "normalised" not in kl.get_ylabel()
    assert any("MPJPE (mm)" in label for label in by_label)
    plotted = 0
    fig.canvas.draw()  # places the legends
    for ax in fig.axes:
        legend = ax.get_legend()
        entries = zip(legend.get_texts(), legend.legend_handles, strict=True)
        terms = {t.get_text(): _colour(h) for t, h in entries if t.get_text() not in SPLITS}
        term_colours = set(terms.values())
        assert len(term_colours) == len(terms), f"{ax.get_title()}: colours repeat"
        line_colours = {_colour(line) for line in ax.lines}
        assert line_colours <= term_colours
        _assert_legend_outside(ax, fig)
        plotted += len(ax.lines)
    assert plotted == 2 * len(TERMS) + 2  # train and val of every term, val of both MPJPEs
    plt.close(fig)


def test_a_twenty_step_run_is_plotted_with_markers_and_integer_steps():
    fig = loss_figure(metrics_rows(steps=20, log_every=50, val_every=500))
    for ax in fig.axes:
        assert ax.lines, ax.get_title()
        for line in ax.lines:
            assert len(line.get_xdata()) >= 1 and line.get_marker() not in (None, "", "None")
    x_low, x_high = fig.axes[-1].get_xlim()
    assert x_low <= 0 and 20 <= x_high < 25
    ticks = [t for t in fig.axes[-1].get_xticks() if x_low <= t <= x_high]
    assert len(ticks) >= 2 and all(float(t).is_integer() for t in ticks), ticks
    plt.close(fig)
    assert loss_figure([{"step": 1, "train/lr": 1e-4}]) is None


def test_per_joint_figure_puts_the_head_frame_beside_the_world():
    errors = {"world MPJPE": np.full(NUM_JOINTS, 600.0), "head-frame MPJPE": np.arange(23.0)}
    fig = per_joint_figure(errors)
    world, head = fig.axes
    assert "world" in world.get_title() and "head-frame" in head.get_title()
    assert world.get_xlabel() == head.get_xlabel() == "mm"
    assert [t.get_text() for t in world.get_yticklabels()] == list(JOINT_NAMES)
    assert world.get_shared_y_axes().joined(world, head)
    assert world.patches[0].get_facecolor() != head.patches[0].get_facecolor()
    # Each on its own scale: the head-frame bars are not flattened by the world's 600 mm.
    assert head.get_xlim()[1] < 100
    plt.close(fig)
