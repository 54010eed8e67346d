"""Stage 2 of a build: the frame period detected (median over all clips; a clip at another rate
is resampled with `--fps`, else recorded as a problem), clips stitched into sequences (holes of
up to `--max-fill-frames` filled, longer ones split: preprocess.stitch), splits assigned by
participant (preprocess.split). The result, a `BuildPlan`, is a printable value (`preprocess build
--plan`) and all that stage 3 is told about what to write."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

import shared.store
from preprocess.build.config import BuildConfig, describe_executor
from preprocess.build.errors import BuildError
from preprocess.build.paths import STORE_BYTES_PER_FRAME
from preprocess.clip_cache import CachedClip
from preprocess.discover import Discovery
from preprocess.read_clip import Discrepancy, Problem
from preprocess.sequence import stored_timestamps
from preprocess.split import assign_splits
from preprocess.stats import window_starts
from preprocess.stitch import (
    ClipTimeline,
    SequencePlan,
    StitchReport,
    clip_period_ns,
    detect_frame_period_ns,
    hole_discrepancies,
    is_other_rate,
    plan_sequences,
)
from shared.diskspace import format_bytes

logger = logging.getLogger(__package__)  # one logger for the whole build

FPS_DECIMALS = 4


def _check_frame_rates(
    usable: list[CachedClip], config: BuildConfig
) -> tuple[float | None, list[CachedClip], list[Problem]]:
    """The dataset's frame period (median step over all usable clips), the clips the build
    uses, and a problem for each clip at another rate when there is no `--fps` to resample it."""
    if not usable:
        return None, [], []
    try:
        period_ns = detect_frame_period_ns([e.timestamp_ns for e in usable])
    except ValueError as error:
        raise BuildError(f"{error} (all {len(usable)} usable clips have a single frame)") from None
    if config.fps is not None:
        return period_ns, usable, []
    kept, problems = [], []
    for entry in usable:
        own_ns = clip_period_ns(entry.timestamp_ns, period_ns)
        if not is_other_rate(own_ns, period_ns):
            kept.append(entry)
            continue
        problems.append(
            Problem(
                entry.file,
                "frame_rate",
                f"{entry.file}: dataset 'timestamp_ns': the clip runs at {1e9 / own_ns:.4g} fps "
                f"(median step {own_ns:.0f} ns), the other clips at {1e9 / period_ns:.4g} fps; "
                f"pass --fps to resample every clip to one rate",
                "timestamp_ns",
            )
        )
    return period_ns, kept, problems


@dataclass(frozen=True)
class BuildPlan:
    """Stage 2: what the store will hold and how it will be written, decided before any feature
    is computed. `str(plan)` (or `preprocess build --plan`) shows it; stage 3 writes exactly
    this (its sequences, their stored frame times, splits and the config's chunking)."""

    config: BuildConfig = field(repr=False)
    data: Path  # DATA, resolved
    discovery: Discovery = field(repr=False)  # every file found under DATA, and the rest
    clips: tuple[CachedClip, ...] = field(repr=False)  # the usable clips the store is made of
    problems: tuple[Problem, ...] = field(repr=False)  # files not used, one each
    discrepancies: tuple[Discrepancy, ...] = field(repr=False)  # notes on used files
    period_ns: float  # detected source frame period
    source_fps: float
    fps: float  # of the stored frames
    sequences: tuple[SequencePlan, ...] = field(repr=False)
    timestamps: tuple[np.ndarray, ...] = field(repr=False)  # stored frame times per sequence
    splits: Mapping[str, str] = field(repr=False)  # participant -> split
    stitch: StitchReport

    @property
    def files_found(self) -> int:
        return len(self.discovery.files)

    @property
    def lengths(self) -> tuple[int, ...]:
        """Stored frames per sequence (after resampling)."""
        return tuple(len(t) for t in self.timestamps)

    @property
    def starts(self) -> list[int]:
        return [int(s) for s in np.concatenate([[0], np.cumsum(self.lengths)])[:-1]]

    @property
    def num_frames(self) -> int:
        return int(sum(self.lengths))

    @property
    def num_chunks(self) -> int:
        """Chunks of each frame array (features, timestamp_ns, contact)."""
        return -(-self.num_frames // self.config.chunk_frames)

    @property
    def estimated_bytes(self) -> int:
        """Bytes of the frame arrays' chunk files: exact for raw chunks (each stored full-size,
        with its checksum), an upper bound for zstd."""
        chunk_bytes = self.config.chunk_frames * STORE_BYTES_PER_FRAME
        checksums = len(shared.store.FRAME_ARRAYS) * shared.store.CHECKSUM_BYTES
        return self.num_chunks * (chunk_bytes + checksums)

    @property
    def stats_windows(self) -> int:
        """Canonical windows the normalisation statistics are taken over (train split)."""
        W, S = self.config.window_frames, self.config.stride_frames
        return sum(len(window_starts(r.length, W, S)) for r in self.records() if r.split == "train")

    def records(self) -> list[shared.store.SequenceRecord]:
        """The store's sequence table."""
        return [
            shared.store.SequenceRecord(
                name=sequence.name,
                participant=sequence.participant,
                start=start,
                length=length,
                split=self.splits[sequence.participant],
                source_files=sequence.source_files,
            )
            for sequence, start, length in zip(
                self.sequences, self.starts, self.lengths, strict=True
            )
        ]

    @property
    def split_participants(self) -> dict[str, int]:
        counts = dict.fromkeys(shared.store.SPLITS, 0)
        for split in self.splits.values():
            counts[split] += 1
        return counts

    @property
    def split_frames(self) -> dict[str, int]:
        frames = dict.fromkeys(shared.store.SPLITS, 0)
        for record in self.records():
            frames[record.split] += record.length
        return frames

    def describe(self) -> str:
        """The plan as a user reads it: files, frames, splits, statistics windows, chunks, size,
        executor, then one line per sequence."""
        config, stitch, records = self.config, self.stitch, self.records()
        sequences_of = {s: sum(1 for r in records if r.split == s) for s in shared.store.SPLITS}
        splits = ", ".join(
            f"{s} {self.split_participants[s]} participants / {sequences_of[s]} sequences / "
            f"{self.split_frames[s]} frames"
            for s in shared.store.SPLITS
        )
        bound = "at most " if config.compression != "none" else ""
        lines = [
            f"build plan for {config.out} from {self.data}",
            (
                f"files: {self.files_found} found, {len(self.clips)} used, {len(self.problems)} "
                f"unusable, {len(self.discrepancies)} notes on used files, "
                f"{len(self.discovery.ignored)} candidates not read"
            ),
            (
                f"frames: {self.num_frames} ({self.num_frames / self.fps / 3600:.3f} h at "
                f"{self.fps:g} fps, source {self.source_fps:g} fps) in {len(records)} sequences "
                f"from {stitch.recordings} recordings ({stitch.gaps} gaps, {stitch.filled_frames} "
                f"missing frames filled in {stitch.filled_holes} holes, {stitch.dropped_frames} "
                f"overlapping frames dropped)"
            ),
            f"splits: {splits}",
            (
                f"statistics: {self.stats_windows} canonical windows of {config.window_frames} "
                f"frames every {config.stride_frames} frames over the train split"
            ),
            (
                f"chunks: {self.num_chunks} of {config.chunk_frames} frames per array "
                f"({', '.join(shared.store.FRAME_ARRAYS)}), compression {config.compression}"
            ),
            (
                f"size: {bound}{format_bytes(self.estimated_bytes)} ({bound}"
                f"{self.estimated_bytes} bytes of chunk files)"
            ),
            f"executor: {describe_executor(config)}",
            "sequences: start, frames, split, participant, name, clip files",
        ]
        lines += [
            f"  {r.start:>10} {r.length:>8}  {r.split:<5}  {r.participant}  {r.name}  "
            f"{len(r.source_files)}"
            for r in records
        ]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.describe()


def _usable_clips(
    entries: Mapping[str, CachedClip], data: Path, config: BuildConfig, strict: bool
) -> tuple[list[CachedClip], float, tuple[Problem, ...]]:
    """The clips the store is made of, the dataset's frame period and a problem for every file
    not used; BuildError when no file is usable (or, `strict`, when any is not)."""
    files = list(entries)
    usable = [entries[f] for f in files if entries[f].ok]
    period_ns, usable, rate_problems = _check_frame_rates(usable, config)
    read_problems = [entries[f].problem for f in files if not entries[f].ok]
    problems = tuple(sorted(read_problems + rate_problems, key=lambda p: p.file))
    if not usable:
        raise BuildError(f"no usable clip file among the {len(files)} under {data}", problems)
    if strict and problems:
        raise BuildError(
            f"--strict: {len(problems)} of {len(files)} files are unusable; nothing was "
            f"published (fix or remove them, then rerun with --resume)",
            problems,
        )
    return usable, period_ns, problems


def make_plan(
    config: BuildConfig,
    data: Path,
    discovery: Discovery,
    entries: Mapping[str, CachedClip],
    strict: bool,
) -> BuildPlan:
    """Stage 2 (see `_usable_clips` for `strict`)."""
    usable, period_ns, problems = _usable_clips(entries, data, config, strict)
    timelines = [
        ClipTimeline(e.file, e.sequence_name, e.participant, e.timestamp_ns) for e in usable
    ]
    # Integer-ns timestamps of a 30 fps clock give 30.0000003; the period itself is recorded too.
    source_fps = round(1e9 / period_ns, FPS_DECIMALS)
    sequences, stitch = plan_sequences(
        timelines, period_ns, config.stitch_tolerance, config.max_fill_frames
    )
    splits = assign_splits((p.participant for p in sequences), config.split, config.split_seed)
    timestamps = tuple(stored_timestamps(p.timestamp_ns, config.fps) for p in sequences)
    plan = BuildPlan(
        config,
        data,
        discovery,
        tuple(usable),
        problems,
        _discrepancies(usable, stitch, period_ns, config),
        period_ns,
        source_fps,
        config.fps or source_fps,
        tuple(sequences),
        timestamps,
        splits,
        stitch,
    )
    logger.info(
        "%d usable clips -> %d sequences, %d frames at %.3f fps (source %.3f fps); %d gaps, "
        "%d overlapping frames dropped",
        len(usable),
        len(plan.sequences),
        plan.num_frames,
        plan.fps,
        plan.source_fps,
        plan.stitch.gaps,
        plan.stitch.dropped_frames,
    )
    return plan


def _discrepancies(
    usable: list[CachedClip], stitch: StitchReport, period_ns: float, config: BuildConfig
) -> tuple[Discrepancy, ...]:
    """What the used files declare or lack, by file: attribute disagreements (read_clip), holes
    inside clips (stitching) and, with --fps, clips resampled from another rate."""
    records = [d for e in usable for d in e.discrepancies]
    records += hole_discrepancies(stitch.holes)
    for entry in usable if config.fps is not None else ():
        own_ns = clip_period_ns(entry.timestamp_ns, period_ns)
        if is_other_rate(own_ns, period_ns):
            records.append(
                Discrepancy(
                    entry.file,
                    "other_frame_rate",
                    f"{entry.file}: dataset 'timestamp_ns': the clip runs at {1e9 / own_ns:.4g} "
                    f"fps, the other clips at {1e9 / period_ns:.4g} fps; resampled to "
                    f"--fps {config.fps:g}",
                    count=len(entry.timestamp_ns),
                )
            )
    return tuple(sorted(records, key=lambda d: (d.file, d.kind)))
