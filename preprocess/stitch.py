"""Clips -> continuous sequences: order by time, stitch where contiguous, fill short holes, split
at long ones.

Pure planning on timestamps; the arrays are joined later (`plan.pieces` says which frames of
which clip, in order; `plan.timestamp_ns` the times the sequence will have), so the planner
never holds the motion of the whole dataset.

Rules, with `P` a clip's frame period (`clip_period_ns`) and `tol` the tolerance as a fraction
of P (default 0.5):
- clips of one recording (same `sequence_name`) are ordered by first timestamp (then file);
- frames of a clip earlier than `last + (1 - tol) * P`, with `last` the sequence's last kept
  timestamp, repeat time already covered (overlap or duplicate clip) and are dropped;
- a kept frame at most `last + (1 + tol) * P` continues the sequence. A longer step is a hole
  of `round(step / P) - 1` missing frames (at least 1), inside a clip or between two clips:
  up to `max_fill_frames` of them are filled (their times are planned here, evenly spaced; the
  motion is interpolated later by `preprocess.resample`), a longer hole starts a new sequence,
  named `<sequence_name>#<k>` for the k-th split of the recording.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import groupby

import numpy as np

from preprocess.read_clip import Discrepancy

STITCH_TOLERANCE_PERIODS = 0.5
DEFAULT_MAX_FILL_FRAMES = 3
MIN_FRAMES_FOR_CLIP_RATE = 5
"""A clip's own frame period is its median step once it has this many frames; shorter clips
are taken to run at the dataset's rate (a hole in a 3-frame clip is not a new frame rate)."""
FRAME_RATE_TOLERANCE = 0.05
"""Relative difference of frame periods beyond which a clip runs at another rate (a 30 fps
clock with jitter or a few skipped frames keeps its median step well within it)."""
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
class Hole:
    """Frames missing between two consecutive kept frames of a recording."""

    file: str  # clip holding the frame after the hole
    frame: int  # index of that frame in `file`
    previous_file: str  # clip holding the frame before the hole (`file`: inside one clip)
    missing_frames: int
    filled: bool  # True: interpolated; False: a new sequence starts after it

    @property
    def inside_clip(self) -> bool:
        return self.file == self.previous_file


@dataclass(frozen=True)
class SequencePlan:
    """One continuous sequence: the clip pieces it is made of, in time order."""

    name: str
    recording: str  # the clips' sequence_name
    participant: str
    pieces: tuple[Piece, ...]
    timestamp_ns: np.ndarray  # (length,) int64: the pieces' times plus the filled holes'

    @property
    def length(self) -> int:
        return int(self.timestamp_ns.shape[0])

    @property
    def source_frames(self) -> int:
        return sum(p.length for p in self.pieces)

    @property
    def filled_frames(self) -> int:
        return self.length - self.source_frames

    @property
    def source_files(self) -> tuple[str, ...]:
        return tuple(p.file for p in self.pieces)


@dataclass(frozen=True)
class RecordingPlan:
    """`plan_recording`'s answer for one recording."""

    sequences: list[SequencePlan]
    dropped_frames: int  # overlapping or duplicate frames dropped
    fully_dropped_files: list[str]  # clips that contributed no frame at all
    holes: list[Hole]


@dataclass(frozen=True)
class StitchReport:
    """What stitching changed, for the store's attributes and the build summary."""

    recordings: int
    sequences: int
    gaps: int  # sequences started because of a hole longer than max_fill_frames
    dropped_frames: int  # overlapping or duplicate frames dropped
    fully_dropped_files: tuple[str, ...]  # clips whose every frame was already covered
    filled_holes: int = 0
    filled_frames: int = 0  # frames interpolated into holes of at most max_fill_frames
    holes: tuple[Hole, ...] = field(default=(), repr=False)

    def to_json(self) -> dict:
        return {
            "recordings": self.recordings,
            "sequences": self.sequences,
            "gaps": self.gaps,
            "dropped_frames": self.dropped_frames,
            "fully_dropped_files": list(self.fully_dropped_files),
            "filled_holes": self.filled_holes,
            "filled_frames": self.filled_frames,
            "missing_frames_at_gaps": sum(h.missing_frames for h in self.holes if not h.filled),
        }


def detect_frame_period_ns(timestamps_ns: Sequence[np.ndarray]) -> float:
    """Median frame period over all consecutive frames of all clips (ns)."""
    steps = [np.diff(ts) for ts in timestamps_ns if len(ts) > 1]
    if not steps:
        raise ValueError("cannot detect the frame rate: no clip has two or more frames; pass --fps")
    return float(np.median(np.concatenate(steps)))


def clip_period_ns(timestamp_ns: np.ndarray, dataset_period_ns: float) -> float:
    """A clip's own frame period: its median step, or the dataset's for short clips."""
    if len(timestamp_ns) < MIN_FRAMES_FOR_CLIP_RATE:
        return dataset_period_ns
    return float(np.median(np.diff(timestamp_ns)))


def is_other_rate(period_ns: float, dataset_period_ns: float) -> bool:
    """Whether a clip's period differs from the dataset's by more than `FRAME_RATE_TOLERANCE`."""
    return abs(period_ns - dataset_period_ns) > FRAME_RATE_TOLERANCE * dataset_period_ns


def segment_name(recording: str, index: int) -> str:
    """Name of the `index`-th continuous segment of a recording (0: the recording's name)."""
    return recording if index == 0 else f"{recording}{SEGMENT_SEPARATOR}{index}"


def recording_of(sequence: str) -> str:
    """Inverse of `segment_name`: the recording a sequence was cut from."""
    head, separator, tail = sequence.rpartition(SEGMENT_SEPARATOR)
    return head if separator and tail.isdigit() else sequence


def _missing_frames(step_ns: int, period_ns: float) -> int:
    return max(1, round(step_ns / period_ns) - 1)


def _fill_times(before_ns: int, after_ns: int, count: int) -> np.ndarray:
    """`count` evenly spaced times strictly between two frames (int64 ns)."""
    fractions = np.arange(1, count + 1) / (count + 1)
    return before_ns + np.round(fractions * (after_ns - before_ns)).astype(np.int64)


class _Segment:
    """A sequence being planned: its pieces and its times (source and filled)."""

    def __init__(self) -> None:
        self.pieces: list[Piece] = []
        self.times: list[np.ndarray] = []

    def add(self, clip: ClipTimeline, start: int, stop: int) -> None:
        if stop > start:
            self.pieces.append(Piece(clip.file, start, stop))
            self.times.append(clip.timestamp_ns[start:stop])


def plan_recording(
    clips: Sequence[ClipTimeline],
    frame_period_ns: float,
    tolerance: float = STITCH_TOLERANCE_PERIODS,
    max_fill_frames: int = DEFAULT_MAX_FILL_FRAMES,
) -> RecordingPlan:
    """Stitch the clips of one recording (see the module doc for the rules)."""
    _check_stitch_args(clips, tolerance, max_fill_frames)
    ordered = sorted(clips, key=lambda c: (int(c.timestamp_ns[0]), c.file))
    segments: list[_Segment] = []
    holes: list[Hole] = []
    dropped, fully_dropped = 0, []
    last_ns, last_file = None, ""
    for clip in ordered:
        ts = clip.timestamp_ns
        period = clip_period_ns(ts, frame_period_ns)
        start = 0
        if last_ns is not None:
            start = int(np.searchsorted(ts, last_ns + (1 - tolerance) * period, "left"))
        dropped += start
        if start == len(ts):
            fully_dropped.append(clip.file)
            continue
        # Steps into every kept frame: the seam with the sequence so far, then inside the clip.
        inside = start + 1 + np.flatnonzero(np.diff(ts[start:]) > (1 + tolerance) * period)
        if last_ns is None:
            segments.append(_Segment())
        elif ts[start] > last_ns + (1 + tolerance) * period:
            inside = np.concatenate([[start], inside])
        piece_start = start
        for frame in (int(i) for i in inside):
            before_ns = last_ns if frame == start else int(ts[frame - 1])
            before_file = last_file if frame == start else clip.file
            missing = _missing_frames(int(ts[frame]) - before_ns, period)
            filled = missing <= max_fill_frames
            holes.append(Hole(clip.file, frame, before_file, missing, filled))
            segments[-1].add(clip, piece_start, frame)
            piece_start = frame
            if filled:
                segments[-1].times.append(_fill_times(before_ns, int(ts[frame]), missing))
            else:
                segments.append(_Segment())
        segments[-1].add(clip, piece_start, len(ts))
        last_ns, last_file = int(ts[-1]), clip.file

    return RecordingPlan(_sequence_plans(ordered[0], segments), dropped, fully_dropped, holes)


def _check_stitch_args(
    clips: Sequence[ClipTimeline], tolerance: float, max_fill_frames: int
) -> None:
    if not 0 < tolerance < 1:
        raise ValueError(f"stitch tolerance must be in (0, 1) frame periods, found {tolerance}")
    if max_fill_frames < 0:
        raise ValueError(f"max_fill_frames must be >= 0, found {max_fill_frames}")
    recordings = {c.sequence_name for c in clips}
    if len(recordings) != 1:
        raise ValueError(f"plan_recording needs clips of one recording, found {sorted(recordings)}")


def _sequence_plans(first: ClipTimeline, segments: list[_Segment]) -> list[SequencePlan]:
    """One sequence per segment, named after the recording of its `first` clip."""
    recording, participant = first.sequence_name, first.participant
    return [
        SequencePlan(
            name=segment_name(recording, k),
            recording=recording,
            participant=participant,
            pieces=tuple(segment.pieces),
            timestamp_ns=np.concatenate(segment.times),
        )
        for k, segment in enumerate(segments)
    ]


def plan_sequences(
    clips: Sequence[ClipTimeline],
    frame_period_ns: float,
    tolerance: float = STITCH_TOLERANCE_PERIODS,
    max_fill_frames: int = DEFAULT_MAX_FILL_FRAMES,
) -> tuple[list[SequencePlan], StitchReport]:
    """All sequences of all recordings, ordered by recording name then time."""
    by_recording = sorted(clips, key=lambda c: c.sequence_name)
    plans: list[SequencePlan] = []
    holes: list[Hole] = []
    dropped, fully_dropped, recordings = 0, [], 0
    for _, group in groupby(by_recording, key=lambda c: c.sequence_name):
        recording = plan_recording(list(group), frame_period_ns, tolerance, max_fill_frames)
        plans.extend(recording.sequences)
        holes.extend(recording.holes)
        dropped += recording.dropped_frames
        fully_dropped.extend(recording.fully_dropped_files)
        recordings += 1
    filled = [h for h in holes if h.filled]
    report = StitchReport(
        recordings=recordings,
        sequences=len(plans),
        gaps=len(plans) - recordings,
        dropped_frames=dropped,
        fully_dropped_files=tuple(sorted(fully_dropped)),
        filled_holes=len(filled),
        filled_frames=sum(h.missing_frames for h in filled),
        holes=tuple(holes),
    )
    return plans, report


def hole_discrepancies(holes: Sequence[Hole]) -> list[Discrepancy]:
    """One `missing_frames` record per clip with holes inside it (holes between two clips are
    counted in the report: which clip lost the frames is not known)."""
    by_file: dict[str, list[Hole]] = defaultdict(list)
    for hole in holes:
        if hole.inside_clip:
            by_file[hole.file].append(hole)
    records = []
    for file, file_holes in sorted(by_file.items()):
        missing = sum(h.missing_frames for h in file_holes)
        filled = sum(h.missing_frames for h in file_holes if h.filled)
        first = file_holes[0]
        records.append(
            Discrepancy(
                file=file,
                kind="missing_frames",
                reason=(
                    f"{file}: dataset 'timestamp_ns': {missing} frames missing in "
                    f"{len(file_holes)} holes (the first before frame {first.frame}); {filled} "
                    f"filled by interpolation, {missing - filled} at gaps that split the sequence"
                ),
                count=missing,
                frame=first.frame,
            )
        )
    return records
