"""Per-sequence work of a build: stitched world motion -> stored arrays (+ stats moments).

Pure: the build runs it on Dask workers, `verify` and the tests run it in-process.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from preprocess.clip_cache import ClipCache
from preprocess.motion import Motion, concatenate, motion_features
from preprocess.resample import interpolate_motion, resample_timestamps
from preprocess.stats import sequence_moments
from preprocess.stitch import Piece
from shared.moments import Moments


@dataclass(frozen=True)
class StatsWindows:
    """How statistics windows are taken (see preprocess.stats)."""

    window_frames: int
    stride_frames: int


@dataclass(frozen=True)
class SequenceArrays:
    """What the store keeps of one sequence."""

    features: np.ndarray  # (T, 294) float32
    timestamp_ns: np.ndarray  # (T,) int64
    contact: np.ndarray  # (T, 4) float32
    moments: Moments | None  # over its canonical windows, for train sequences

    def __len__(self) -> int:
        return len(self.timestamp_ns)


def stored_timestamps(planned_ns: np.ndarray, fps: float | None) -> np.ndarray:
    """Times of the stored frames of a planned sequence: the plan's (source frames plus filled
    holes), or with `fps` a new grid over the same span."""
    return planned_ns if fps is None else resample_timestamps(planned_ns, fps)


def compute_sequence(
    motion: Motion, timestamp_ns: np.ndarray, stats_windows: StatsWindows | None
) -> SequenceArrays:
    """Interpolate `motion` at `timestamp_ns` where they differ (filled holes, `--fps`),
    compute features on the whole sequence, and (if `stats_windows`) the moments of its
    canonical windows, taken from the float32 features as stored."""
    if not np.array_equal(motion.timestamp_ns, timestamp_ns):
        motion = interpolate_motion(motion, timestamp_ns)
    features = motion_features(motion)
    moments = None
    if stats_windows is not None:
        moments = sequence_moments(
            features, stats_windows.window_frames, stats_windows.stride_frames
        )
    return SequenceArrays(
        features=features,
        timestamp_ns=motion.timestamp_ns.astype(np.int64),
        contact=motion.contact.astype(np.float32),
        moments=moments,
    )


def compute_planned_sequence(
    results_dir: Path,
    pieces: tuple[Piece, ...],
    timestamp_ns: np.ndarray,
    stats_windows: StatsWindows | None,
) -> SequenceArrays:
    """Stage-3 task: join the pieces from the persisted per-file results, then
    `compute_sequence` at the stored times. Only the stored arrays travel back to the build
    process."""
    results = ClipCache(results_dir)
    motion = concatenate([results.load_motion(p.file).slice(p.start, p.stop) for p in pieces])
    return compute_sequence(motion, timestamp_ns, stats_windows)
