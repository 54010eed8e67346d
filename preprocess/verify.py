"""Whether a store still matches its sources and its own statistics (`preprocess verify`)."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

import shared.store
from preprocess.motion import concatenate
from preprocess.read_clip import DEFAULT_ROTATION_ATOL, read_clip
from preprocess.sequence import SequenceArrays, compute_sequence, stored_timestamps
from preprocess.stats import default_stride, sequence_moments
from preprocess.stitch import (
    DEFAULT_MAX_FILL_FRAMES,
    STITCH_TOLERANCE_PERIODS,
    ClipTimeline,
    plan_recording,
    recording_of,
)
from shared.layout import FEATURE_DIM, field_of_dim
from shared.moments import Moments
from shared.store import FeatureStore

FEATURE_ATOL = 1e-5
"""Largest |stored - recomputed| feature difference accepted (float32 rounding is ~1e-7 of the
value; the margin allows for a different numpy/BLAS build)."""
STATS_RTOL = 1e-9
"""Relative tolerance (of std) between stored and recomputed mean and std."""


@dataclass
class VerifyReport:
    checked: list[str] = field(default_factory=list)
    mismatches: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.mismatches


def verify_sequences(store: FeatureStore, data: Path, sample: int, seed: int) -> VerifyReport:
    """Recompute `sample` randomly chosen sequences from the source files and compare."""
    report = VerifyReport()
    config = store.attrs.get(shared.store.ATTR_BUILD_CONFIG, {})
    stitching = store.attrs.get(shared.store.ATTR_STITCHING, {})
    period_ns = stitching.get("frame_period_ns")
    if period_ns is None:
        report.mismatches.append("store lacks stitching.frame_period_ns; cannot re-stitch")
        return report
    tolerance = config.get("stitch_tolerance", STITCH_TOLERANCE_PERIODS)
    atol = config.get("rotation_atol", DEFAULT_ROTATION_ATOL)
    fps = config.get("fps")
    max_fill = config.get("max_fill_frames", DEFAULT_MAX_FILL_FRAMES)
    records = list(store.sequences)
    chosen = sorted(random.Random(seed).sample(range(len(records)), min(sample, len(records))))
    for index in chosen:
        record = records[index]
        report.checked.append(record.name)
        recording = recording_of(record.name)
        siblings = [r for r in records if recording_of(r.name) == recording]
        files = sorted({f for r in siblings for f in r.source_files})
        clips, motions, failed = [], {}, False
        for file in files:
            result = read_clip(data, file, atol)
            if not result.ok:
                report.mismatches.append(f"{record.name}: source {result.problem.reason}")
                failed = True
                continue
            times = result.motion.timestamp_ns
            clips.append(ClipTimeline(file, result.sequence_name, result.participant, times))
            motions[file] = result.motion
        if failed:
            continue
        plans = plan_recording(clips, period_ns, tolerance, max_fill).sequences
        plan = next((p for p in plans if p.name == record.name), None)
        if plan is None or plan.source_files != record.source_files:
            report.mismatches.append(
                f"{record.name}: re-stitching the source files gives sequences "
                f"{[p.name for p in plans]} with files {[p.source_files for p in plans]}, the "
                f"store has files {record.source_files}"
            )
            continue
        motion = concatenate([motions[p.file].slice(p.start, p.stop) for p in plan.pieces])
        expected = compute_sequence(motion, stored_timestamps(plan.timestamp_ns, fps), None)
        _compare_sequence(store, record, expected, report)
    return report


def _compare_sequence(
    store: FeatureStore,
    record: shared.store.SequenceRecord,
    expected: SequenceArrays,
    report: VerifyReport,
) -> None:
    name = record.name
    if len(expected) != record.length:
        report.mismatches.append(
            f"{name}: source gives {len(expected)} frames, the store has {record.length}"
        )
        return
    stored_ts = np.asarray(store.timestamp_ns[record.start : record.stop])
    if not np.array_equal(stored_ts, expected.timestamp_ns):
        frame = int(np.argmax(stored_ts != expected.timestamp_ns))
        report.mismatches.append(
            f"{name}: timestamp_ns differs first at frame {frame} (store frame "
            f"{record.start + frame}): {int(stored_ts[frame])} vs source "
            f"{int(expected.timestamp_ns[frame])}"
        )
    stored_contact = np.asarray(store.contact[record.start : record.stop])
    if not np.array_equal(stored_contact, expected.contact):
        report.mismatches.append(f"{name}: contact differs from the source")
    stored = store.read_features(record.start, record.stop)
    diff = np.abs(stored.astype(np.float64) - expected.features.astype(np.float64))
    diff = np.where(np.isnan(diff), np.inf, diff)
    if diff.max() > FEATURE_ATOL:
        frame, dim = np.unravel_index(int(np.argmax(diff)), diff.shape)
        report.mismatches.append(
            f"{name}: features differ at {int((diff > FEATURE_ATOL).sum())} values (tolerance "
            f"{FEATURE_ATOL:g}); largest {diff[frame, dim]:.3g} at frame {int(frame)} (store frame "
            f"{record.start + int(frame)}), dim {int(dim)} ({field_of_dim(int(dim))}): store "
            f"{stored[frame, dim]:.7g} vs source {expected.features[frame, dim]:.7g}"
        )


def verify_stats(store: FeatureStore) -> list[str]:
    """Recompute the normalisation stats from the store's train features; differences found."""
    window = store.stats.window_frames
    stride = int(
        store.stats_attrs.get(shared.store.STATS_ATTR_STRIDE_FRAMES) or default_stride(window)
    )
    floor = float(store.stats_attrs.get(shared.store.STATS_ATTR_STD_FLOOR, 0.0))
    moments = Moments.empty(FEATURE_DIM)
    for record in store.split("train"):
        features = store.read_features(record.start, record.stop)
        moments = moments.merge(sequence_moments(features, window, stride))
    problems = []
    if moments.count != store.stats.count:
        problems.append(
            f"stats: count {store.stats.count} in the store, {moments.count} recomputed"
        )
        return problems
    mean, std = moments.mean_std(floor)
    for label, stored, recomputed in (
        ("mean", store.stats_mean_f64, mean),
        ("std", store.stats_std_f64, std),
    ):
        rel = np.abs(stored - recomputed) / std
        if rel.max() > STATS_RTOL:
            dim = int(np.argmax(rel))
            problems.append(
                f"stats: {label} differs (relative to std) by up to {rel[dim]:.3g} at "
                f"{int((rel > STATS_RTOL).sum())} dims; "
                f"largest at dim {dim} ({field_of_dim(dim)}): "
                f"store {stored[dim]:.10g} vs recomputed {recomputed[dim]:.10g}"
            )
    return problems
