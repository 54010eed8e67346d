"""Clips -> continuous sequences: order by time, stitch where contiguous, split at gaps.

Pure planning on timestamps; the arrays are joined later (`plan.pieces` says which frames of
which clip, in order), so the planner never holds the motion of the whole dataset.

Rules, with `P` the frame period and `tol` the tolerance as a fraction of P (default 0.5):
- clips of one recording (same `sequence_name`) are ordered by first timestamp (then file);
- frames of a clip earlier than `last + (1 - tol) * P`, with `last` the sequence's last kept
  timestamp, repeat time already covered (overlap or duplicate clip) and are dropped;
- the next kept frame continues the sequence if it is at most `last + (1 + tol) * P`;
  otherwise a gap starts a new sequence, named `<sequence_name>#<k>` for the k-th gap.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import groupby

import numpy as np

STITCH_TOLERANCE_PERIODS = 0.5
SEGMENT_SEPARATOR = "#"


@dataclass(frozen=True)
class ClipTimeline:
    """What the planner needs to know about one usable clip."""

    file: str
    sequence_name: str
    participant: str
    timestamp_ns: np.ndarray  # (T,) int64, strictly increasing


@dataclass(frozen=True)
class Piece:
    """Frames `[start, stop)` of clip `file`."""

    file: str
    start: int
    stop: int

    @property
    def length(self) -> int:
        return self.stop - self.start


@dataclass(frozen=True)
class SequencePlan:
    """One continuous sequence: the clip pieces it is made of, in time order."""

    name: str
    recording: str  # the clips' sequence_name
    participant: str
    pieces: tuple[Piece, ...]
    timestamp_ns: np.ndarray  # (length,) int64, the stitched timestamps

    @property
    def length(self) -> int:
        return int(self.timestamp_ns.shape[0])

    @property
    def source_files(self) -> tuple[str, ...]:
        return tuple(p.file for p in self.pieces)


@dataclass(frozen=True)
class StitchReport:
    """What stitching changed, for the store's attributes and the build summary."""

    recordings: int
    sequences: int
    gaps: int  # sequences started because of a gap inside a recording
    dropped_frames: int  # overlapping or duplicate frames dropped
    fully_dropped_files: tuple[str, ...]  # clips whose every frame was already covered

    def to_json(self) -> dict:
        return {
            "recordings": self.recordings,
            "sequences": self.sequences,
            "gaps": self.gaps,
            "dropped_frames": self.dropped_frames,
            "fully_dropped_files": list(self.fully_dropped_files),
        }


def detect_frame_period_ns(timestamps_ns: Sequence[np.ndarray]) -> float:
    """Median frame period over all consecutive frames of all clips (ns)."""
    steps = [np.diff(ts) for ts in timestamps_ns if len(ts) > 1]
    if not steps:
        raise ValueError(
            "cannot detect the frame rate: no clip has two or more frames; pass --fps"
        )
    return float(np.median(np.concatenate(steps)))


def segment_name(recording: str, index: int) -> str:
    """Name of the `index`-th continuous segment of a recording (0: the recording's name)."""
    return recording if index == 0 else f"{recording}{SEGMENT_SEPARATOR}{index}"


def recording_of(sequence: str) -> str:
    """Inverse of `segment_name`: the recording a sequence was cut from."""
    head, separator, tail = sequence.rpartition(SEGMENT_SEPARATOR)
    return head if separator and tail.isdigit() else sequence


def plan_recording(
    clips: Sequence[ClipTimeline], frame_period_ns: float, tolerance: float = STITCH_TOLERANCE_PERIODS
) -> tuple[list[SequencePlan], int, list[str]]:
    """Stitch the clips of one recording.

    Returns the sequences, the number of dropped frames, and the files that contributed no
    frame at all.
    """
    if not 0 < tolerance < 1:
        raise ValueError(f"stitch tolerance must be in (0, 1) frame periods, found {tolerance}")
    recordings = {c.sequence_name for c in clips}
    if len(recordings) != 1:
        raise ValueError(f"plan_recording needs clips of one recording, found {sorted(recordings)}")
    ordered = sorted(clips, key=lambda c: (int(c.timestamp_ns[0]), c.file))
    segments: list[list[tuple[ClipTimeline, int, int]]] = []
    dropped, fully_dropped = 0, []
    last_ns: int | None = None
    for clip in ordered:
        ts = clip.timestamp_ns
        start = 0
        if last_ns is not None:
            start = int(np.searchsorted(ts, last_ns + (1 - tolerance) * frame_period_ns, "left"))
        dropped += start
        if start == len(ts):
            fully_dropped.append(clip.file)
            continue
        contiguous = (
            last_ns is not None and ts[start] <= last_ns + (1 + tolerance) * frame_period_ns
        )
        if not contiguous:
            segments.append([])
        segments[-1].append((clip, start, len(ts)))
        last_ns = int(ts[-1])

    recording = ordered[0].sequence_name
    participant = ordered[0].participant
    plans = [
        SequencePlan(
            name=segment_name(recording, k),
            recording=recording,
            participant=participant,
            pieces=tuple(Piece(c.file, a, b) for c, a, b in parts),
            timestamp_ns=np.concatenate([c.timestamp_ns[a:b] for c, a, b in parts]),
        )
        for k, parts in enumerate(segments)
    ]
    return plans, dropped, fully_dropped


def plan_sequences(
    clips: Sequence[ClipTimeline], frame_period_ns: float, tolerance: float = STITCH_TOLERANCE_PERIODS
) -> tuple[list[SequencePlan], StitchReport]:
    """All sequences of all recordings, ordered by recording name then time."""
    by_recording = sorted(clips, key=lambda c: c.sequence_name)
    plans: list[SequencePlan] = []
    dropped, fully_dropped, recordings = 0, [], 0
    for _, group in groupby(by_recording, key=lambda c: c.sequence_name):
        recording_plans, recording_dropped, recording_fully = plan_recording(
            list(group), frame_period_ns, tolerance
        )
        plans.extend(recording_plans)
        dropped += recording_dropped
        fully_dropped.extend(recording_fully)
        recordings += 1
    report = StitchReport(
        recordings=recordings,
        sequences=len(plans),
        gaps=len(plans) - recordings,
        dropped_frames=dropped,
        fully_dropped_files=tuple(sorted(fully_dropped)),
    )
    return plans, report
