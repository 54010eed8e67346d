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
    detect_frame_period_ns,
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
    plans, dropped, fully = plan_recording(clips, P)
    assert len(plans) == 1 and dropped == 0 and fully == []
    assert plans[0].name == REC and plans[0].source_files == ("a.h5", "b.h5", "c.h5")
    assert plans[0].length == 25
    np.testing.assert_array_equal(plans[0].timestamp_ns, np.arange(25) * P)


def test_gap_starts_a_new_sequence():
    plans, _, _ = plan_recording([clip("a.h5", 0, 10), clip("c.h5", 20, 5)], P)
    assert [p.name for p in plans] == [REC, f"{REC}#1"]
    assert [p.length for p in plans] == [10, 5]
    assert recording_of(plans[1].name) == REC == recording_of(REC)
    assert segment_name(REC, 2) == f"{REC}#2"


def test_tolerance_decides_contiguity():
    jittered = clip("b.h5", 10, 5)
    late = ClipTimeline("b.h5", REC, "james_johnson", jittered.timestamp_ns + int(0.4 * P))
    assert len(plan_recording([clip("a.h5", 0, 10), late], P)[0]) == 1
    later = ClipTimeline("b.h5", REC, "james_johnson", jittered.timestamp_ns + int(0.6 * P))
    assert len(plan_recording([clip("a.h5", 0, 10), later], P)[0]) == 2
    assert len(plan_recording([clip("a.h5", 0, 10), later], P, tolerance=0.7)[0]) == 1


def test_overlapping_frames_are_dropped_by_timestamp():
    plans, dropped, fully = plan_recording([clip("a.h5", 0, 10), clip("b.h5", 7, 10)], P)
    assert len(plans) == 1 and dropped == 3 and fully == []
    assert plans[0].pieces[1].start == 3 and plans[0].length == 17
    np.testing.assert_array_equal(plans[0].timestamp_ns, np.arange(17) * P)


def test_duplicate_clip_contributes_nothing():
    clips = [clip("a.h5", 0, 10), clip("copy/a.h5", 0, 10), clip("b.h5", 10, 10)]
    plans, dropped, fully = plan_recording(clips, P)
    assert dropped == 10 and fully == ["copy/a.h5"]
    assert plans[0].source_files == ("a.h5", "b.h5") and plans[0].length == 20


def test_plan_sequences_orders_recordings_and_counts():
    other = "20230608_s0_maria_garcia_act0_abcdef"
    clips = [
        clip("x.h5", 0, 5, other), clip("a.h5", 0, 10), clip("c.h5", 20, 5), clip("d.h5", 22, 5)
    ]  # fmt: skip
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
            key: np.concatenate([f0[key][-early:], f1[key][()]]) for key in nymeria_format.MOTION_DATASETS
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
