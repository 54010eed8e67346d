"""Evaluate a checkpoint on fixed windows of a split: metrics.json, a printed table, pictures.

Windows are those of validation during training (`WindowIndex.evenly_spaced`), canonicalised
and normalised exactly as in training (`prepare_batch` with the checkpoint's statistics), the
model in eval mode (z = posterior mean). Metric definitions and units: docs/metrics.md.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from shared.errors import InputError
from shared.skeleton import JOINT_NAMES
from shared.store import FeatureStore, open_store
from train.config import RunConfig
from train.data import Normalizer, PreparedBatch, WindowIndex, prepare_batch, read_windows
from train.device import resolve_device
from train.inference import config_from_checkpoint, load_for_inference, warn_if_other_store
from train.loss import (
    FOOT_CONTACT_VELOCITY,
    HEAD_FRAME_POSITION,
    HEAD_ORIENTATION,
    KL,
    WORLD_POSITION,
    WORLD_VELOCITY,
    loss_sums,
    mse_key,
    training_loss,
    world_points_m,
)
from train.metrics import (
    CONTACT_HEIGHT_M,
    CONTACT_SPEED_M_S,
    MPJPE_HEAD_BY_FRAME,
    MPJPE_HEAD_PER_JOINT,
    MPJPE_WORLD_BY_FRAME,
    MPJPE_WORLD_PER_JOINT,
    RECON_LOSS,
    MaskedSum,
    contact_speed_m_per_frame,
    pool,
    reconstruction_errors,
)
from train.model import FRAMES_PER_LATENT, MotionVAE, latent_mask
from train.plots import (
    animate_skeletons,
    plot_error_by_frame,
    plot_loss_curves,
    plot_per_joint_error,
    plot_skeleton_frames,
)

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"
META = "meta"

# Per-joint metrics, each a {joint name: value} dict, with the label of their plot panel.
PER_JOINT = {MPJPE_WORLD_PER_JOINT: "world MPJPE", MPJPE_HEAD_PER_JOINT: "head-frame MPJPE"}

NUM_EXAMPLE_WINDOWS = 3
FRAMES_PER_EXAMPLE = 4

# Scalar metrics in table order, with the label printed for each (units are in the keys).
TABLE_ROWS: dict[str, str] = {
    mse_key("head_6D"): "MSE head_6D (normalised)",
    mse_key("head_3D"): "MSE head_3D (normalised)",
    mse_key("joint_3D"): "MSE joint_3D (normalised)",
    mse_key("joint_6D"): "MSE joint_6D (normalised)",
    RECON_LOSS: "reconstruction loss (mean of groups)",
    KL: "KL per latent dim (nats)",
    WORLD_POSITION: "world loss: joint + head position (m)",
    WORLD_VELOCITY: "world loss: joint + head velocity (m/frame)",
    HEAD_FRAME_POSITION: "world loss: joint position in the head frame (m)",
    FOOT_CONTACT_VELOCITY: "world loss: planted foot velocity (m/frame)",
    HEAD_ORIENTATION: "world loss: head orientation (rad)",
    "mpjpe_head_mm": "MPJPE, head frame (mm)",
    "mpjpe_world_mm": "MPJPE, world via predicted head pose (mm)",
    "pa_mpjpe_mm": "PA-MPJPE, per-frame similarity (mm)",
    "head_pos_error_mm": "head position error (mm)",
    "head_rot_error_deg": "head rotation error (deg)",
    "mpjre_deg": "MPJRE, 23 segment rotations (deg)",
    "accel_error_mm_per_frame2": "acceleration error (mm/frame^2)",
    "jitter_pred_mm_per_frame3": "jitter, reconstruction (mm/frame^3)",
    "jitter_gt_mm_per_frame3": "jitter, ground truth (mm/frame^3)",
    "foot_skating_pred_mm_per_frame": "foot skating, reconstruction (mm/frame)",
    "foot_skating_gt_mm_per_frame": "foot skating, ground truth (mm/frame)",
    "foot_contact_fraction": "foot contact fraction (ground truth)",
    "head_drift_pos_mm": "head drift at window end, position (mm)",
    "head_drift_rot_deg": "head drift at window end, rotation (deg)",
}


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


def summarize(sums: dict[str, MaskedSum]) -> dict:
    """Pooled sums -> JSON-ready metrics: scalars, per-frame lists and a per-joint dict.

    A metric with nothing to average (e.g. no foot contact at all) is None.
    """
    metrics: dict = {}
    for key, value in sums.items():
        mean = value.mean().tolist()
        if key in PER_JOINT:
            metrics[key] = {
                name: _finite_or_none(v) for name, v in zip(JOINT_NAMES, mean, strict=True)
            }
        elif isinstance(mean, list):
            metrics[key] = [_finite_or_none(v) for v in mean]
        else:
            metrics[key] = _finite_or_none(mean)
    return metrics


def _format_value(key: str, value: float | None) -> str:
    """A table cell: errors in mm and degrees to 0.1 (their useful precision); rates (mm per
    frame, small for smooth motion) to 3 significant digits; other units (normalised MSE,
    metres, nats, fractions) to 4."""
    if value is None:
        return "n/a"
    if key.endswith(("_mm", "_deg")):
        return f"{value:.1f}"
    return f"{value:.3g}" if "_mm_per_" in key else f"{value:.4g}"


def format_table(metrics: dict) -> str:
    """The scalar metrics as an aligned two-column table, plus the boundary effect and worst
    joints."""
    width = max(len(label) for label in TABLE_ROWS.values()) + 2
    lines = []
    meta = metrics.get(META)
    if meta:
        lines.append(
            f"{meta['split']} split: {meta['num_windows']} windows of "
            f"{meta['window_frames']} frames ({meta['fps']:g} fps), "
            f"checkpoint step {meta['checkpoint_step']}"
        )
    for key, label in TABLE_ROWS.items():
        if key in metrics:
            lines.append(f"{label:<{width}}{_format_value(key, metrics[key]):>10}")
    by_frame = [v for v in metrics.get(MPJPE_WORLD_BY_FRAME, []) if v is not None]
    if len(by_frame) >= 2 * FRAMES_PER_LATENT:
        first, last = np.mean(by_frame[:FRAMES_PER_LATENT]), np.mean(by_frame[-FRAMES_PER_LATENT:])
        lines.append(
            f"{'world MPJPE, first / last 4 frames (mm)':<{width}}{first:10.1f} / {last:.1f}"
        )
    for key, name in PER_JOINT.items():
        per_joint = {k: v for k, v in metrics.get(key, {}).items() if v is not None}
        if per_joint:
            worst = sorted(per_joint.items(), key=lambda kv: -kv[1])[:3]
            lines.append(
                f"{f'worst joints, {name} (mm)':<{width}}"
                + ", ".join(f"{k} {v:.1f}" for k, v in worst)
            )
    return "\n".join(lines)


@torch.no_grad()
def evaluate_batch(
    model: MotionVAE,
    prep: PreparedBatch,
    normalizer: Normalizer,
    config: RunConfig,
    contact_speed_m_per_frame: float,
) -> tuple[dict[str, MaskedSum], torch.Tensor]:
    """One batch through the model: every loss term and metric as poolable sums, and the
    reconstruction (B, T, 294) in canonical physical units. Validation and `train eval` both
    run this, so their numbers agree by construction."""
    out = model(prep.x)
    terms = training_loss(out, prep, normalizer, config, contact_speed_m_per_frame)
    num_latents = int(latent_mask(prep.mask, out["mean"].shape[1]).sum())
    recon = normalizer.denormalize(out["recon"].float())
    sums = reconstruction_errors(
        recon,
        prep.canonical,
        prep.mask,
        contact_speed_m_per_frame,
        head_blend=config.train.decode_head_blend,
    )
    return sums | loss_sums(terms, int(prep.mask.sum()), num_latents), recon


@torch.no_grad()
def evaluate(
    ckpt_path: Path,
    store_url: str,
    split: str,
    out_dir: Path,
    max_windows: int = 256,
    animate: bool = False,
    device: str = "auto",
    batch_size: int = 32,
    windows: np.ndarray | None = None,
) -> dict:
    """Metrics of the checkpoint on up to `max_windows` evenly spaced windows of `split`, or on
    the given `windows` (numbers of `WindowIndex(store.split(split), seq_len)`).

    Writes `out_dir/metrics.json` and the pictures (skeletons_window*.png, error_by_frame.png,
    per_joint_error.png, loss_curves.png when the run's metrics.jsonl is next to the
    checkpoints folder, reconstruction.gif with `animate`); returns the metrics dict.
    """
    if max_windows < 1:
        raise ValueError(f"max_windows must be >= 1, found {max_windows}")
    ckpt_path, out_dir = Path(ckpt_path), Path(out_dir)
    torch_device = resolve_device(device)
    ckpt, model, normalizer = load_for_inference(ckpt_path, torch_device)
    config = config_from_checkpoint(ckpt)
    store = open_store(store_url)
    warn_if_other_store(ckpt, store)
    records = store.split(split)
    if not records:
        raise InputError(f"store {store.url} has no sequences in split {split!r}")
    T = model.config.seq_len
    index = WindowIndex(records, T)
    windows, examples = _windows_and_examples(index, max_windows, windows)
    speed_m_per_frame = contact_speed_m_per_frame(store.fps)

    batches: list[dict[str, MaskedSum]] = []
    examples_m: list[tuple[int, np.ndarray, np.ndarray]] = []  # (window, gt, recon) canonical
    for start in tqdm(range(0, len(windows), batch_size), desc=f"eval {split}", unit="batch"):
        chunk = windows[start : start + batch_size]
        prep = prepare_batch(read_windows(store, index, chunk).to(torch_device), normalizer)
        sums, recon = evaluate_batch(model, prep, normalizer, config, speed_m_per_frame)
        batches.append(sums)
        examples_m += _example_points(chunk, examples, prep, recon, config)

    metrics = summarize(pool(batches))
    out_dir.mkdir(parents=True, exist_ok=True)
    pictures = _write_pictures(metrics, examples_m, ckpt_path, out_dir, store.fps, animate)
    metrics[META] = {
        "checkpoint": str(ckpt_path),
        "checkpoint_step": ckpt.step,
        **_store_meta(store, split, len(windows), T),
        "pictures": [p.name for p in pictures],
    }
    (out_dir / METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n")
    logger.info(
        "evaluated %d windows of %s: metrics in %s", len(windows), split, out_dir / METRICS_FILE
    )
    return metrics


def _windows_and_examples(
    index: WindowIndex, max_windows: int, windows: np.ndarray | None
) -> tuple[np.ndarray, set[int]]:
    """The windows to evaluate (`windows`, else `max_windows` evenly spaced) and the
    `NUM_EXAMPLE_WINDOWS` of them, evenly spaced, whose pictures are drawn."""
    windows = (
        index.evenly_spaced(max_windows) if windows is None else np.asarray(windows, dtype=np.int64)
    )
    picks = np.linspace(0, len(windows) - 1, NUM_EXAMPLE_WINDOWS).round().astype(int)
    return windows, set(windows[picks].tolist())


def _example_points(
    chunk: np.ndarray,
    examples: set[int],
    prep: PreparedBatch,
    recon: torch.Tensor,
    config: RunConfig,
) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """(window, gt, recon) world points (T, 24, 3: 23 joints, then the head) of the windows of
    `chunk` that are `examples`, valid frames only."""
    points = []
    for b, k in enumerate(chunk.tolist()):
        if k in examples:
            valid = int(prep.mask[b].sum())
            gt = world_points_m(prep.canonical[b : b + 1, :valid], 0.0)[0].cpu().numpy()
            blend = config.train.decode_head_blend
            pred = world_points_m(recon[b : b + 1, :valid], blend)[0].cpu().numpy()
            points.append((k, gt, pred))
    return points


def _store_meta(store: FeatureStore, split: str, num_windows: int, window_frames: int) -> dict:
    """What `metrics.json` records of the windows evaluated and the contact thresholds."""
    return {
        "store_url": store.url,
        "store_fingerprint": store.fingerprint,
        "split": split,
        "num_windows": num_windows,
        "window_frames": window_frames,
        "fps": store.fps,
        "contact_height_m": CONTACT_HEIGHT_M,
        "contact_speed_m_s": CONTACT_SPEED_M_S,
    }


def _write_pictures(
    metrics: dict,
    examples_m: list[tuple[int, np.ndarray, np.ndarray]],
    ckpt_path: Path,
    out_dir: Path,
    fps: float,
    animate: bool,
) -> list[Path]:
    pictures = []
    for i, (k, gt, pred) in enumerate(examples_m):
        frames = np.linspace(0, len(gt) - 1, FRAMES_PER_EXAMPLE).round().astype(int).tolist()
        path = out_dir / f"skeletons_window{i}.png"
        pictures.append(
            plot_skeleton_frames(
                gt[:, :-1],
                pred[:, :-1],
                frames,
                path,
                title=f"window {k}",
                gt_head_m=gt[:, -1],
                pred_head_m=pred[:, -1],
            )
        )
    curves = {
        "world MPJPE": np.array(metrics[MPJPE_WORLD_BY_FRAME], dtype=float),
        "head-frame MPJPE": np.array(metrics[MPJPE_HEAD_BY_FRAME], dtype=float),
    }
    pictures.append(plot_error_by_frame(curves, out_dir / "error_by_frame.png", FRAMES_PER_LATENT))
    per_joint = {
        label: np.array([metrics[key][name] for name in JOINT_NAMES], dtype=float)
        for key, label in PER_JOINT.items()
    }
    pictures.append(plot_per_joint_error(per_joint, out_dir / "per_joint_error.png"))
    run_metrics = ckpt_path.parent.parent / "metrics.jsonl"
    loss_curves = plot_loss_curves(run_metrics, out_dir / "loss_curves.png")
    if loss_curves is not None:
        pictures.append(loss_curves)
    else:
        logger.info("no training metrics at %s: no loss curves", run_metrics)
    if animate:
        _, gt, pred = examples_m[0]
        pictures.append(
            animate_skeletons(gt[:, :-1], pred[:, :-1], out_dir / "reconstruction.gif", fps)
        )
    return pictures
