"""Pictures of a run and of its reconstructions (matplotlib, headless).

Every `plot_*`/`animate_*` function takes arrays (or a metrics file) and an output path, writes
one PNG or GIF, and returns the path; the `*_figure` functions build the same figures without
writing them (for a notebook, and for tests that check axes, labels and colours). Joints are
(T, 23, 3) in metres in a Z-up frame (world or canonical).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.animation import FuncAnimation, PillowWriter
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

from shared.skeleton import BONES, JOINT_NAMES, ROOT

GT_COLOR = "tab:blue"
PRED_COLOR = "tab:red"


def _save(fig: plt.Figure, out_path: Path, dpi: int = 110, tight: bool = True) -> Path:
    """Lay out (unless the figure has a fixed grid), write and close a figure; returns the
    path."""
    if tight:
        fig.tight_layout()
    out_path = Path(out_path)
    fig.savefig(out_path, dpi=dpi)
    plt.close(fig)
    return out_path


def _legend_beside(ax, **kwargs) -> None:
    """The axes' legend to the right of its data, top-aligned: it never hides a curve."""
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0, **kwargs)


def read_metrics(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


# The panels of the loss plot: (title, y label, log scale, does a metrics term belong here).
_LOSS_PANELS = (
    (
        "loss: total and reconstruction",
        "MSE of normalised features\n(total: weighted sum)",
        True,
        lambda term: term in ("total", "recon") or term.startswith("mse/"),
    ),
    (
        "loss: world terms",
        "mean error (unit in each name)",
        True,
        lambda term: term.startswith(("world/", "head_frame/")),
    ),
    ("KL divergence", "KL (nats per latent dim)", True, lambda term: term == "kl"),
    ("validation MPJPE", "MPJPE (mm)", False, lambda term: term.startswith("mpjpe_")),
)
_SPLIT_STYLES = {"train": {"ls": "-"}, "val": {"ls": "--", "marker": "o"}}
_SPLIT_NAMES = {"train": "training", "val": "validation"}
# Series with at most this many points are drawn with markers: a short run is still visible.
_MARKERS_UP_TO = 30


def _loss_series(rows: Sequence[Mapping]) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """term -> split -> [(step, value)] for every train/val loss term and validation error."""
    series: dict[str, dict[str, list[tuple[int, float]]]] = {}
    for row in rows:
        for key, value in row.items():
            split, _, term = key.partition("/")
            if split in _SPLIT_STYLES and any(p[3](term) for p in _LOSS_PANELS):
                series.setdefault(term, {}).setdefault(split, []).append((row["step"], value))
    return series


def _term_colours(terms: Sequence[str]) -> dict[str, tuple]:
    """One distinct colour per term (tab10, then tab20 for more than 10)."""
    cmap = plt.get_cmap("tab10" if len(terms) <= 10 else "tab20")
    return {term: cmap(i % cmap.N) for i, term in enumerate(terms)}


def _plain_log_scale(ax) -> None:
    """A log y axis labelled in plain numbers: the decades, plus 2 and 5 within a short range."""
    ax.set_yscale("log")
    low, high = ax.get_ylim()
    plain = FuncFormatter(lambda value, _: f"{value:g}")
    ax.yaxis.set_major_formatter(plain)
    if high / low < 100:
        ax.yaxis.set_minor_locator(LogLocator(subs=(2.0, 5.0)))
        ax.yaxis.set_minor_formatter(plain)
    else:
        ax.yaxis.set_minor_formatter(NullFormatter())


def plot_loss_curves(metrics_path: Path, out_path: Path) -> Path | None:
    """`loss_figure` of a run's metrics.jsonl written to `out_path`; None when there is nothing
    to plot."""
    rows = read_metrics(metrics_path) if Path(metrics_path).exists() else []
    fig = loss_figure(rows)
    return None if fig is None else _save(fig, out_path)


def loss_figure(rows: Sequence[Mapping]) -> plt.Figure | None:
    """Loss terms and validation MPJPE against step, one panel per unit (normalised MSE, world
    errors, KL in nats, MPJPE in mm): one colour per term, training solid and validation
    dashed, legends beside the panels, markers on short series. None when `rows` (metrics.jsonl
    lines) hold no loss term."""
    series = _loss_series(rows)
    panels = [(p, [t for t in sorted(series) if p[3](t)]) for p in _LOSS_PANELS]
    panels = [(p, terms) for p, terms in panels if terms]
    if not panels:
        return None
    last_step = max(
        step for splits in series.values() for pts in splits.values() for step, _ in pts
    )
    fig, axes = plt.subplots(
        len(panels), 1, figsize=(9, 2.6 * len(panels)), sharex=True, squeeze=False
    )
    for ax, ((title, ylabel, log, _), terms) in zip(axes[:, 0], panels):
        colours = _term_colours(terms)
        splits = set()
        for term in terms:
            for split, pts in series[term].items():
                style = dict(_SPLIT_STYLES[split])
                if len(pts) <= _MARKERS_UP_TO:
                    style.setdefault("marker", ".")
                ax.plot(*zip(*pts), color=colours[term], ms=4, lw=1.3, **style)
                splits.add(split)
        if log and all(v > 0 for line in ax.lines for v in line.get_ydata()):
            _plain_log_scale(ax)
        ax.set_title(title, fontsize=9)
        ax.set_ylabel(ylabel, fontsize=8)
        ax.tick_params(labelsize=7, which="both")
        ax.grid(alpha=0.3)
        handles = [Line2D([], [], color=colours[t], lw=2, label=t) for t in terms] + [
            Line2D([], [], color="0.3", label=_SPLIT_NAMES[s], **_SPLIT_STYLES[s])
            for s in _SPLIT_STYLES
            if s in splits
        ]
        _legend_beside(ax, handles=handles, fontsize=7)
    ax = axes[-1, 0]
    ax.set_xlabel("step")
    ax.set_xlim(0, max(last_step, 1) * 1.02)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return fig


def _check_joints(name: str, joints_m: np.ndarray) -> np.ndarray:
    joints_m = np.asarray(joints_m, dtype=np.float64)
    if joints_m.ndim != 3 or joints_m.shape[1:] != (len(JOINT_NAMES), 3):
        raise ValueError(
            f"{name} must be (T, {len(JOINT_NAMES)}, 3) joints, found {joints_m.shape}"
        )
    return joints_m


def _check_pair(gt_m: np.ndarray, pred_m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    gt_m, pred_m = _check_joints("gt_m", gt_m), _check_joints("pred_m", pred_m)
    if gt_m.shape != pred_m.shape:
        raise ValueError(f"gt_m {gt_m.shape} and pred_m {pred_m.shape} differ")
    return gt_m, pred_m


def _body_view(
    gt_m: np.ndarray, pred_m: np.ndarray, frames: Sequence[int]
) -> tuple[np.ndarray, float, tuple[float, float]]:
    """The camera of a figure: the truth's pelvis (x, y) at each frame (F, 2), one horizontal
    half-width around it holding both bodies at every frame, and one height range."""
    frames = list(frames)
    centres = gt_m[frames, ROOT, :2]  # (F, 2)
    both = np.concatenate([gt_m[frames], pred_m[frames]], axis=1)  # (F, 46, 3)
    reach = np.abs(both[..., :2] - centres[:, None]).max()
    half = max(float(reach) + 0.1, 0.5)
    z_lo, z_hi = float(both[..., 2].min()), float(both[..., 2].max())
    pad = max(0.05, 0.5 * (2 * half - (z_hi - z_lo)))  # height spans at least the width
    return centres, half, (z_lo - pad, z_hi + pad)


def _new_skeleton_axes(fig: plt.Figure, position, half: float, z_range, relative: bool):
    """A 3D panel spanning +-`half` horizontally and `z_range` vertically: equal scale on the
    three axes, three ticks per axis, labelled in metres."""
    ax = fig.add_subplot(position, projection="3d")
    ax.set_xlim(-half, half)
    ax.set_ylim(-half, half)
    ax.set_zlim(*z_range)
    ax.set_box_aspect((2 * half, 2 * half, z_range[1] - z_range[0]))
    ax.view_init(elev=15, azim=-60)
    for axis in (ax.xaxis, ax.yaxis, ax.zaxis):
        axis.set_major_locator(MaxNLocator(nbins=3))
    ax.tick_params(labelsize=7, pad=0)
    what = " from pelvis" if relative else ""
    ax.set_xlabel(f"x{what} (m)", fontsize=8, labelpad=-4)
    ax.set_ylabel(f"y{what} (m)", fontsize=8, labelpad=-4)
    ax.set_zlabel("height (m)", fontsize=8, labelpad=-3)
    return ax


def _bone_lines(ax, joints_m: np.ndarray, color: str, alpha: float = 1.0, lw: float = 2.0) -> list:
    """One Line3D per bone of the (23, 3) pose; returned so animations can move them."""
    return [
        ax.plot(*joints_m[[child, parent]].T, color=color, alpha=alpha, lw=lw)[0]
        for child, parent in BONES
    ]


def _legend_handles() -> list[Line2D]:
    return [
        Line2D([], [], color=GT_COLOR, lw=2, label="ground truth"),
        Line2D([], [], color=PRED_COLOR, lw=2, label="reconstruction"),
    ]


def plot_skeleton_frames(
    gt_m: np.ndarray,
    pred_m: np.ndarray,
    frames: Sequence[int],
    out_path: Path,
    title: str = "",
    gt_head_m: np.ndarray | None = None,
    pred_head_m: np.ndarray | None = None,
) -> Path:
    """`skeleton_figure` written to `out_path`."""
    fig = skeleton_figure(gt_m, pred_m, frames, title, gt_head_m, pred_head_m)
    # tight_layout measures every 3D tick label: slow, and the fixed grid needs no fitting.
    return _save(fig, out_path, dpi=100, tight=False)


def skeleton_figure(
    gt_m: np.ndarray,
    pred_m: np.ndarray,
    frames: Sequence[int],
    title: str = "",
    gt_head_m: np.ndarray | None = None,
    pred_head_m: np.ndarray | None = None,
) -> plt.Figure:
    """One window: ground truth (blue) and reconstruction (red) overlaid at the given frames.

    Every panel has the same axis limits: x and y are measured from the truth's pelvis at that
    panel's frame (the camera follows the body, so it stays large), z is the height. With head
    positions (T, 3), a last panel shows the head trajectory from above in window coordinates
    (truth vs reconstruction, circles at the start): the motion the panels leave out.
    """
    gt_m, pred_m = _check_pair(gt_m, pred_m)
    frames = list(frames)
    with_head = gt_head_m is not None and pred_head_m is not None
    centres, half, z_range = _body_view(gt_m, pred_m, frames)
    cols = len(frames) + int(with_head)
    fig = plt.figure(figsize=(2.9 * cols, 3.5))
    grid = fig.add_gridspec(1, cols, left=0.02, right=0.97, bottom=0.16, top=0.86, wspace=0.4)
    for col, (t, centre) in enumerate(zip(frames, centres)):
        ax = _new_skeleton_axes(fig, grid[0, col], half, z_range, relative=True)
        shift = np.array([*centre, 0.0])
        _bone_lines(ax, gt_m[t] - shift, GT_COLOR, lw=1.8)
        _bone_lines(ax, pred_m[t] - shift, PRED_COLOR, alpha=0.8, lw=1.4)
        ax.set_title(f"frame {t}", fontsize=8)
    if with_head:
        ax = fig.add_subplot(grid[0, cols - 1])
        for head, color in ((gt_head_m, GT_COLOR), (pred_head_m, PRED_COLOR)):
            head = np.asarray(head)
            ax.plot(head[:, 0], head[:, 1], color=color, lw=1.5)
            ax.plot(head[0, 0], head[0, 1], "o", color=color, ms=4)
        ax.set_aspect("equal", adjustable="datalim")
        ax.set_xlabel("x (m)", fontsize=8)
        ax.set_ylabel("y (m)", fontsize=8, labelpad=1)
        ax.xaxis.set_major_locator(MaxNLocator(nbins=4))
        ax.yaxis.set_major_locator(MaxNLocator(nbins=4))
        ax.set_title("head path, top view", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    fig.legend(handles=_legend_handles(), loc="lower center", ncol=2, fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=9)
    return fig


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
        ax.axvline(
            t - 0.5,
            color="0.8",
            lw=0.6,
            ls=":",
            zorder=0,
            label="latent boundary" if t == 0 else None,
        )
    ax.set(
        xlabel="frame index inside the window", ylabel="MPJPE (mm)", title="error by frame position"
    )
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlim(-0.5, T - 0.5)
    ax.set_ylim(bottom=0)
    _legend_beside(ax, fontsize=8)
    return _save(fig, out_path)


def plot_per_joint_error(
    errors_mm: Mapping[str, np.ndarray], out_path: Path, names: Sequence[str] = JOINT_NAMES
) -> Path:
    """`per_joint_figure` written to `out_path`."""
    return _save(per_joint_figure(errors_mm, names), out_path)


def per_joint_figure(
    errors_mm: Mapping[str, np.ndarray], names: Sequence[str] = JOINT_NAMES
) -> plt.Figure:
    """Horizontal bars of each joint's error (mm), in skeleton order: one panel per metric
    (e.g. world and head-frame MPJPE) side by side on the same joints, each on its own mm
    scale (a world error dominated by head drift would flatten the head-frame one)."""
    errors = {label: np.asarray(values, dtype=np.float64) for label, values in errors_mm.items()}
    for label, values in errors.items():
        if values.shape != (len(names),):
            raise ValueError(
                f"{label}: one value per joint ({len(names)}) expected, found {values.shape}"
            )
    fig, axes = plt.subplots(
        1,
        len(errors),
        figsize=(3.6 * len(errors) + 1, 0.26 * len(names) + 1.3),
        sharey=True,
        squeeze=False,
    )
    y = np.arange(len(names))
    colours = _term_colours(list(errors))
    for ax, (label, values) in zip(axes[0], errors.items()):
        ax.barh(y, np.nan_to_num(values), color=colours[label])
        ax.set_title(f"{label} per joint\n(mean {np.nanmean(values):.1f} mm)", fontsize=9)
        ax.set_xlabel("mm", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(axis="x", alpha=0.3)
    axes[0, 0].set_yticks(y, names)
    axes[0, 0].invert_yaxis()
    return fig


def animate_skeletons(
    gt_m: np.ndarray, pred_m: np.ndarray, out_path: Path, fps: float, frame_step: int = 2
) -> Path:
    """`skeleton_animation` written as a GIF played at real speed."""
    fig, draw, frames = skeleton_animation(gt_m, pred_m, frame_step)
    animation = FuncAnimation(fig, draw, frames=frames, blit=False)
    out_path = Path(out_path)
    animation.save(out_path, writer=PillowWriter(fps=max(1.0, fps / frame_step)))
    plt.close(fig)
    return out_path


def skeleton_animation(
    gt_m: np.ndarray, pred_m: np.ndarray, frame_step: int = 2
) -> tuple[plt.Figure, Callable[[int], list], list[int]]:
    """Ground truth and reconstruction overlaid in one panel: the figure, the function that
    draws frame t, and the frames to draw (every `frame_step`-th). The camera follows the
    truth's pelvis (axes in world metres, one span for the whole window); the pelvis paths
    so far are drawn on the floor."""
    gt_m, pred_m = _check_pair(gt_m, pred_m)
    centres, half, z_range = _body_view(gt_m, pred_m, range(len(gt_m)))
    fig = plt.figure(figsize=(4.2, 4.2))
    ax = _new_skeleton_axes(fig, 111, half, z_range, relative=False)
    trails = [ax.plot([], [], [], color=c, lw=1, alpha=0.6)[0] for c in (GT_COLOR, PRED_COLOR)]
    lines = [
        (_bone_lines(ax, gt_m[0], GT_COLOR), gt_m),
        (_bone_lines(ax, pred_m[0], PRED_COLOR, alpha=0.8), pred_m),
    ]
    fig.legend(handles=_legend_handles(), loc="lower center", ncol=2, fontsize=8, frameon=False)
    caption = fig.suptitle("", fontsize=8)
    fig.subplots_adjust(left=0.05, right=0.92, bottom=0.1, top=0.95)

    def draw(t: int) -> list:
        (x, y), floor = centres[t], z_range[0]
        ax.set_xlim(x - half, x + half)
        ax.set_ylim(y - half, y + half)
        for trail, (_, joints) in zip(trails, lines):
            path = joints[: t + 1, ROOT]
            trail.set_data_3d(path[:, 0], path[:, 1], np.full(len(path), floor))
        for bone_lines, joints in lines:
            for line, (child, parent) in zip(bone_lines, BONES):
                segment = joints[t, [child, parent]]  # (2, 3)
                line.set_data_3d(segment[:, 0], segment[:, 1], segment[:, 2])
        caption.set_text(f"frame {t}")
        return [*trails, *(line for bone_lines, _ in lines for line in bone_lines)]

    return fig, draw, list(range(0, len(gt_m), frame_step))
