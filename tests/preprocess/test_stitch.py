"""Clips -> sequences: contiguous clips stitched, gaps split, overlapping/duplicate frames
dropped."""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from store_testing import (
    raw_recordings,
    reference_features,
    stitched,
    synchronous_build,
    write_variant,
)

import shared.store
from preprocess import nymeria_format
from preprocess.stitch import (
    ClipTimeline,
    Piece,
    clip_period_ns,
    detect_frame_period_ns,
    hole_discrepancies,
    is_other_rate,
    plan_recording,
    plan_sequences,
    recording_of,
    segment_name,
)
from shared.layout import HP_DOT, HR_DOT, JV
from shared.store import open_store

P = 33_333_333  # frame period, ns
REC = "20230607_s0_james_johnson_act0_e72nhq"


def clip(file: str, first_frame: int, frames: int, recording: str = REC) -> ClipTimeline:
    ts = (np.arange(first_frame, first_frame + frames) * P).astype(np.int64)
    return ClipTimeline(file, recording, "james_johnson", ts)


def test_contiguous_clips_are_stitched_in_time_order():
    clips = [clip("b.h5", 10, 10), clip("a.h5", 0, 10), clip("c.h5", 20, 5)]
    plan = plan_recording(clips, P)
    plans = plan.sequences
    assert len(plans) == 1 and plan.dropped_frames == 0 and plan.fully_dropped_files == []
    assert plan.holes == []
    assert plans[0].name == REC and plans[0].source_files == ("a.h5", "b.h5", "c.h5")
    assert plans[0].length == 25
    np.testing.assert_array_equal(plans[0].timestamp_ns, np.arange(25) * P)


def test_gap_starts_a_new_sequence():
    plans = plan_recording([clip("a.h5", 0, 10), clip("c.h5", 20, 5)], P).sequences
    assert [p.name for p in plans] == [REC, f"{REC}#1"]
    assert [p.length for p in plans] == [10, 5]
    assert recording_of(plans[1].name) == REC == recording_of(REC)
    assert segment_name(REC, 2) == f"{REC}#2"


def test_tolerance_decides_contiguity():
    jittered = clip("b.h5", 10, 5)
    late = ClipTimeline("b.h5", REC, "james_johnson", jittered.timestamp_ns + int(0.4 * P))
    assert len(plan_recording([clip("a.h5", 0, 10), late], P).sequences) == 1
    later = ClipTimeline("b.h5", REC, "james_johnson", jittered.timestamp_ns + int(0.6 * P))
    assert len(plan_recording([clip("a.h5", 0, 10), later], P, max_fill_frames=0).sequences) == 2
    assert len(plan_recording([clip("a.h5", 0, 10), later], P, tolerance=0.7).sequences) == 1


def test_overlapping_frames_are_dropped_by_timestamp():
    plan = plan_recording([clip("a.h5", 0, 10), clip("b.h5", 7, 10)], P)
    plans = plan.sequences
    assert len(plans) == 1 and plan.dropped_frames == 3 and plan.fully_dropped_files == []
    assert plans[0].pieces[1].start == 3 and plans[0].length == 17
    np.testing.assert_array_equal(plans[0].timestamp_ns, np.arange(17) * P)


def test_duplicate_clip_contributes_nothing():
    clips = [clip("a.h5", 0, 10), clip("copy/a.h5", 0, 10), clip("b.h5", 10, 10)]
    plan = plan_recording(clips, P)
    plans = plan.sequences
    assert plan.dropped_frames == 10 and plan.fully_dropped_files == ["copy/a.h5"]
    assert plans[0].source_files == ("a.h5", "b.h5") and plans[0].length == 20


def clip_with_holes(file: str, frames: list[int]) -> ClipTimeline:
    return ClipTimeline(file, REC, "james_johnson", np.array(frames, dtype=np.int64) * P)


def test_short_holes_are_filled_long_ones_split_inside_and_between_clips():
    # a.h5 lacks frames 3-4 (filled) and 10-19 (10 frames: split); a.h5 -> b.h5 lacks frame 25
    # (filled); b.h5 -> c.h5 lacks frames 31-34 (4 > 3: split).
    a = clip_with_holes("a.h5", [0, 1, 2, 5, 6, 7, 8, 9, 20, 21, 22, 23, 24])
    b = clip_with_holes("b.h5", [26, 27, 28, 29, 30])
    c = clip_with_holes("c.h5", [35, 36])
    plan = plan_recording([c, b, a], P, max_fill_frames=3)
    assert [(h.file, h.frame, h.previous_file, h.missing_frames, h.filled) for h in plan.holes] == [
        ("a.h5", 3, "a.h5", 2, True),
        ("a.h5", 8, "a.h5", 10, False),
        ("b.h5", 0, "a.h5", 1, True),
        ("c.h5", 0, "b.h5", 4, False),
    ]
    first, second, third = plan.sequences
    assert (first.name, second.name, third.name) == (REC, f"{REC}#1", f"{REC}#2")
    np.testing.assert_array_equal(first.timestamp_ns, np.arange(10) * P)
    assert first.pieces == (Piece("a.h5", 0, 3), Piece("a.h5", 3, 8))
    assert (first.source_frames, first.filled_frames) == (8, 2)
    np.testing.assert_array_equal(second.timestamp_ns, np.arange(20, 31) * P)
    assert second.pieces == (Piece("a.h5", 8, 13), Piece("b.h5", 0, 5))
    assert second.filled_frames == 1
    assert third.pieces == (Piece("c.h5", 0, 2),) and third.filled_frames == 0

    _, report = plan_sequences([a, b, c], P, max_fill_frames=3)
    assert (report.gaps, report.filled_holes, report.filled_frames) == (2, 2, 3)
    assert report.to_json()["missing_frames_at_gaps"] == 14
    (record,) = hole_discrepancies(report.holes)  # holes between clips are not a file's
    found = (record.file, record.kind, record.count, record.frame)
    assert found == ("a.h5", "missing_frames", 12, 3)
    assert "12 frames missing in 2 holes" in record.reason and "2 filled" in record.reason

    everything = plan_recording([a, b, c], P, max_fill_frames=10)
    assert len(everything.sequences) == 1 and everything.sequences[0].length == 37 - 0
    nothing = plan_recording([a, b, c], P, max_fill_frames=0)
    assert len(nothing.sequences) == 5


def test_filled_times_are_evenly_spaced_between_the_neighbours():
    jittered = ClipTimeline("a.h5", REC, "james_johnson", np.array([0, P, 4 * P + 3], np.int64))
    (sequence,) = plan_recording([jittered], P).sequences
    np.testing.assert_array_equal(sequence.timestamp_ns, [0, P, 2 * P + 1, 3 * P + 2, 4 * P + 3])


def test_a_clip_at_another_rate_keeps_its_own_period():
    fast = ClipTimeline("fast.h5", REC, "james_johnson", np.arange(20, dtype=np.int64) * (P // 2))
    assert clip_period_ns(fast.timestamp_ns, P) == P // 2
    assert is_other_rate(clip_period_ns(fast.timestamp_ns, P), P)
    assert is_other_rate(P * 1.2, P) and not is_other_rate(P * 1.02, P)
    plan = plan_recording([fast], P)
    assert plan.holes == [] and plan.sequences[0].length == 20  # not "overlapping" frames
    assert clip_period_ns(np.array([0, 5 * P]), P) == P  # too short to tell: the dataset's


def test_plan_sequences_orders_recordings_and_counts():
    other = "20230608_s0_maria_garcia_act0_abcdef"
    clips = [
        clip("x.h5", 0, 5, other),
        clip("a.h5", 0, 10),
        clip("c.h5", 20, 5),
        clip("d.h5", 22, 5),
    ]
    plans, report = plan_sequences(clips, P)
    assert [p.name for p in plans] == [REC, f"{REC}#1", other]
    assert (report.recordings, report.sequences, report.gaps, report.dropped_frames) == (2, 3, 1, 3)


def test_frame_period_is_the_median_step():
    steps = [np.array([0, 10, 20, 30, 45]), np.array([100, 110]), np.array([7])]
    assert detect_frame_period_ns(steps) == 10
    with pytest.raises(ValueError, match="pass --fps"):
        detect_frame_period_ns([np.array([1])])


# --- end to end -------------------------------------------------------------------------------


@pytest.fixture
def data_copy(synthetic_dataset: Path, tmp_path: Path) -> tuple[Path, dict[str, list[dict]]]:
    root = tmp_path / "data"
    shutil.copytree(synthetic_dataset, root)
    return root, raw_recordings(synthetic_dataset)


def test_deleted_middle_clip_splits_the_recording(data_copy, tmp_path: Path):
    root, recordings = data_copy
    name, clips = next(iter(recordings.items()))
    (root / clips[1]["file"]).unlink()
    summary = synchronous_build(root, tmp_path / "gap.zarr")
    assert summary.stitch.gaps == 1
    store = open_store(tmp_path / "gap.zarr")
    assert len(store.sequences) == len(recordings) + 1
    first, second = (r for r in store.sequences if recording_of(r.name) == name)
    assert (first.name, second.name) == (name, f"{name}#1")
    assert first.source_files == (clips[0]["file"],) and second.source_files == (clips[2]["file"],)
    assert first.participant == second.participant and first.split == second.split
    for record, part in ((first, clips[0]), (second, clips[2])):
        features = store.read_features(record.start, record.stop)
        np.testing.assert_allclose(features, reference_features(part), atol=2e-6, rtol=1e-6)
        # A new sequence starts at rest: zero velocities, identity rotation delta.
        np.testing.assert_array_equal(features[0, HP_DOT], 0)
        np.testing.assert_array_equal(features[0, JV], 0)
        np.testing.assert_array_equal(features[0, HR_DOT], [1, 0, 0, 0, 1, 0])


def test_overlapping_and_duplicate_clips_drop_frames(
    data_copy, synthetic_dataset: Path, tmp_path: Path
):
    root, recordings = data_copy
    name, clips = next(iter(recordings.items()))
    # Clip 1 rewritten to start 20 frames early (overlapping clip 0), and clip 2 duplicated.
    early = 20
    first, second = (synthetic_dataset / c["file"] for c in clips[:2])
    with h5py.File(first, "r") as f0, h5py.File(second, "r") as f1:
        overlapped = {
            key: np.concatenate([f0[key][-early:], f1[key][()]])
            for key in nymeria_format.MOTION_DATASETS
        }
    n = len(overlapped[nymeria_format.KEY_TIMESTAMP_NS])
    (root / clips[1]["file"]).unlink()
    write_variant(second, root / clips[1]["file"], overlapped, {nymeria_format.ATTR_NUM_FRAMES: n})
    (root / "duplicate").mkdir()
    shutil.copy(root / clips[2]["file"], root / "duplicate" / clips[2]["file"])

    summary = synchronous_build(root, tmp_path / "overlap.zarr")
    duplicate_frames = len(clips[2][nymeria_format.KEY_TIMESTAMP_NS])
    assert summary.stitch.dropped_frames == early + duplicate_frames
    assert summary.stitch.fully_dropped_files == (f"duplicate/{clips[2]['file']}",)
    assert summary.stitch.gaps == 0
    store = open_store(tmp_path / "overlap.zarr")
    attrs = store.attrs[shared.store.ATTR_STITCHING]
    assert attrs["dropped_frames"] == early + duplicate_frames
    record = next(r for r in store.sequences if r.name == name)
    assert record.source_files == tuple(c["file"] for c in clips)
    raw = stitched(clips)
    assert record.length == len(raw[nymeria_format.KEY_TIMESTAMP_NS])
    frames = slice(record.start, record.stop)
    np.testing.assert_array_equal(store.timestamp_ns[frames], raw[nymeria_format.KEY_TIMESTAMP_NS])
    features = store.read_features(record.start, record.stop)
    np.testing.assert_allclose(features, reference_features(raw), atol=2e-6, rtol=1e-6)
