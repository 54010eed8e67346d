"""Regression tests for the hostile and unusual inputs of issue 10: real exporter files (skipped
frames, inclusive end_idx, no video), attributes of the wrong type, links, sparse files, clips at
another frame rate, long holes, absurd values and odd directory trees. Each either is used (and
what it lacks recorded) or becomes a problem record; no file stops a build."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner
from store_testing import (
    MOTION_KEYS,
    cli_build,
    raw_recordings,
    read_raw,
    reference_features,
    stitched,
    synchronous_build,
    write_variant,
)

import shared.store
from preprocess import nymeria_format, synth
from preprocess.cli import main
from preprocess.discover import discover_clip_files
from preprocess.info import format_info, store_info
from preprocess.read_clip import read_clip
from preprocess.verify import verify_sequences
from shared.layout import JP
from shared.store import open_store

ONLY_H5 = "only '.h5' files are read; rename it to include it"


@pytest.fixture
def two_recordings(synthetic_dataset: Path, tmp_path: Path) -> tuple[Path, dict[str, list[dict]]]:
    """A copy of the first two recordings (3 clips each) of the shared synthetic dataset."""
    recordings = dict(list(raw_recordings(synthetic_dataset).items())[:2])
    root = tmp_path / "data"
    root.mkdir()
    for clips in recordings.values():
        for clip in clips:
            shutil.copy(synthetic_dataset / clip["file"], root / clip["file"])
    return root, recordings


# --- the exporter's format ----------------------------------------------------------------------


def test_exporter_files_with_skipped_frames_are_used_and_filled(tmp_path: Path):
    """Skipped frames (a few per clip, no video, inclusive end_idx): every file used, the holes
    filled by interpolation on the 30 fps grid, every frame the attributes declare stored."""
    data = tmp_path / "hdf5"
    synth.generate_dataset(
        data,
        recordings=3,
        clips_per_recording=3,
        seed=5,
        video_size=None,
        drop_frame_probability=0.03,
    )
    full = tmp_path / "full"
    synth.generate_dataset(full, recordings=3, clips_per_recording=3, seed=5, video_size=None)
    summary = synchronous_build(data, tmp_path / "s.zarr", max_fill_frames=8)
    assert summary.problems == () and summary.stitch.gaps == 0
    declared = 0
    for path in sorted(data.glob("*.h5")):
        with h5py.File(path, "r") as f:
            declared += int(f.attrs[nymeria_format.ATTR_NUM_FRAMES])
            assert nymeria_format.KEY_EGOVIEW not in f
    store = open_store(tmp_path / "s.zarr")
    assert summary.stitch.filled_frames > 10
    discrepancies = store.attrs[shared.store.ATTR_DISCREPANCIES]
    assert {d["kind"] for d in discrepancies} == {"missing_frames", "num_frames_attribute"}
    held_short = sum(d["count"] for d in discrepancies if d["kind"] == "num_frames_attribute")
    # Every declared frame is stored but those skipped at the very ends of a recording.
    assert declared - held_short + summary.stitch.filled_frames == store.num_frames
    assert 0 <= declared - store.num_frames <= 3
    # Filled frames are the interpolation of their neighbours; held frames are exact.
    reference = raw_recordings(full)
    for record in store.sequences:
        raw = stitched(reference[record.name])
        ts = np.asarray(store.timestamp_ns[record.start : record.stop])
        first = int(np.searchsorted(raw[nymeria_format.KEY_TIMESTAMP_NS], ts[0]))
        raw = {key: raw[key][first : first + len(ts)] for key in MOTION_KEYS}
        np.testing.assert_array_equal(ts, raw[nymeria_format.KEY_TIMESTAMP_NS])  # the whole grid
        features = store.read_features(record.start, record.stop)
        expected = reference_features(raw)
        held_ns = stitched(raw_recordings(data)[record.name])[nymeria_format.KEY_TIMESTAMP_NS]
        held = np.isin(ts, held_ns)
        # Velocities next to a hole differ (the neighbour was interpolated): compare poses.
        np.testing.assert_allclose(features[held][:, JP], expected[held][:, JP], atol=2e-6)
        assert np.abs(features[~held][:, JP] - expected[~held][:, JP]).max() < 0.05
    info = store_info(store)
    assert info["discrepancies"] == discrepancies
    assert f"notes        {len(discrepancies)} on used files" in format_info(info)
    report = verify_sequences(store, data, sample=3, seed=0)  # re-plans the same filled holes
    assert report.ok and len(report.checked) == 3, report.mismatches


def test_attributes_of_the_wrong_type_are_recorded_not_fatal(two_recordings, tmp_path: Path):
    root, recordings = two_recordings
    first, second, third = (c["file"] for c in next(iter(recordings.values())))
    for file, value in ((first, "150"), (second, np.array([150, 151]))):
        with h5py.File(root / file, "a") as f:
            f.attrs[nymeria_format.ATTR_NUM_FRAMES] = value
    with h5py.File(root / third, "a") as f:  # an exclusive end_idx (the old synthetic files)
        f.attrs[nymeria_format.ATTR_END_IDX] = f.attrs[nymeria_format.ATTR_END_IDX] + 1
    for file in (first, second, third):
        assert read_clip(root, file).ok
    summary = synchronous_build(root, tmp_path / "s.zarr")
    assert summary.problems == () and summary.files_used == 6
    notes = {(d.file, d.kind): d for d in summary.discrepancies}
    reasons = {key: note.reason for key, note in notes.items()}
    assert "'num_frames' is str '150', expected an integer" in reasons[first, "bad_attribute"]
    assert "attribute 'num_frames' is ndarray array([150, 151])" in reasons[second, "bad_attribute"]
    assert notes[third, "index_range"].count == 1
    assert "frames (both inclusive)" in reasons[third, "index_range"]
    stored = open_store(tmp_path / "s.zarr").attrs[shared.store.ATTR_DISCREPANCIES]
    assert {(d["file"], d["kind"]) for d in stored} == set(notes)


@pytest.mark.parametrize("fps", [None, 15.0])
def test_clips_of_any_length_down_to_one_frame(
    two_recordings, synthetic_dataset: Path, tmp_path: Path, fps
):
    root, recordings = two_recordings
    donor = next(iter(recordings.values()))[0]
    for frames in (1, 2):
        name = f"20230607_s0_tom_becker_act{frames}_short{frames}"
        cut = {key: donor[key][:frames] for key in MOTION_KEYS}
        attrs = {nymeria_format.ATTR_SEQUENCE_NAME: name, nymeria_format.ATTR_NUM_FRAMES: frames}
        write_variant(synthetic_dataset / donor["file"], root / f"{name}_00000.h5", cut, attrs)
    summary = synchronous_build(root, tmp_path / "s.zarr", fps=fps)
    assert summary.problems == () and summary.files_used == 8
    store = open_store(tmp_path / "s.zarr")
    lengths = {r.name: r.length for r in store.sequences if "short" in r.name}
    expected = {1: 1, 2: 2 if fps is None else 1}  # 2 frames span 1/30 s: one 15 fps frame
    assert lengths == {f"20230607_s0_tom_becker_act{n}_short{n}": expected[n] for n in (1, 2)}


# --- links, sizes, values -----------------------------------------------------------------------


def test_external_links_and_sparse_files_are_problems_before_any_allocation(
    synthetic_dataset: Path, tmp_path: Path
):
    donor = min(synthetic_dataset.glob("*.h5"))
    root = tmp_path / "data"
    dangling, resolving, sparse = (root / f"{n}_00000.h5" for n in ("dangling", "ext", "sparse"))
    write_variant(donor, dangling, {nymeria_format.KEY_CPF_TRANSLATION: None})
    write_variant(donor, resolving, {nymeria_format.KEY_CPF_TRANSLATION: None})
    with h5py.File(dangling, "a") as f:
        f[nymeria_format.KEY_CPF_TRANSLATION] = h5py.ExternalLink("missing.h5", "/cpf")
    with h5py.File(resolving, "a") as f:
        f[nymeria_format.KEY_CPF_TRANSLATION] = h5py.ExternalLink(str(donor), "/cpf_translation")
    write_variant(donor, sparse, {nymeria_format.KEY_TIMESTAMP_NS: None})
    with h5py.File(sparse, "a") as f:  # 8 GB contiguous, one value written: a sparse file
        f.create_dataset(nymeria_format.KEY_TIMESTAMP_NS, shape=(10**9,), dtype=np.int64)[-1] = 1
    assert sparse.stat().st_size > 8e9 > 1000 * sparse.stat().st_blocks * 512
    for path in (dangling, resolving):
        problem = read_clip(root, path.name).problem
        assert problem.kind == "bad_link" and problem.key == nymeria_format.KEY_CPF_TRANSLATION
        assert "is an external link to" in problem.reason
    problem = read_clip(root, sparse.name).problem
    assert (problem.kind, problem.key) == ("bad_size", nymeria_format.KEY_TIMESTAMP_NS)
    assert "declares 1000000000 frames (8000000000 bytes)" in problem.reason


def test_problem_records_name_key_and_frame(synthetic_dataset: Path, tmp_path: Path):
    donor = min(synthetic_dataset.glob("*.h5"))
    raw = read_raw(donor)
    rotations = raw[nymeria_format.KEY_CPF_ORIENTATION].copy()
    rotations[12] *= -1  # det -1
    write_variant(donor, tmp_path / "x_00000.h5", {nymeria_format.KEY_CPF_ORIENTATION: rotations})
    problem = read_clip(tmp_path, "x_00000.h5").problem
    assert (problem.kind, problem.key, problem.frame) == ("not_rotation", "cpf_orientation", 12)
    assert problem.to_json() == {
        "file": "x_00000.h5",
        "kind": "not_rotation",
        "reason": problem.reason,
        "key": "cpf_orientation",
        "frame": 12,
    }


# --- frame rates and holes ----------------------------------------------------------------------


def test_a_60_fps_clip_is_a_problem_without_fps_and_resampled_with_it(
    two_recordings, synthetic_dataset: Path, tmp_path: Path
):
    """It used to be stored as 30 fps: time stretched, velocities halved."""
    root, recordings = two_recordings
    raw = list(recordings.values())[1][0]
    fast_file = raw["file"]
    ts = raw[nymeria_format.KEY_TIMESTAMP_NS]
    fast_ts = ts[0] + (ts - ts[0]) // 2  # the same poses, twice as fast
    fast = {nymeria_format.KEY_TIMESTAMP_NS: fast_ts}
    write_variant(synthetic_dataset / fast_file, root / fast_file, fast)

    result = cli_build(root, tmp_path / "30.zarr")
    assert result.exit_code == 0, result.output
    assert (
        f"skipped [frame_rate] {fast_file}: dataset 'timestamp_ns': the clip runs at 60 fps"
        in result.output
    )
    store = open_store(tmp_path / "30.zarr")
    assert [(p["file"], p["key"]) for p in store.attrs[shared.store.ATTR_PROBLEMS]] == [
        (fast_file, "timestamp_ns")
    ]
    assert all(fast_file not in r.source_files for r in store.sequences)

    summary = synchronous_build(root, tmp_path / "resampled.zarr", fps=30.0)
    assert summary.problems == ()
    assert [d.kind for d in summary.discrepancies if d.file == fast_file] == ["other_frame_rate"]
    store = open_store(tmp_path / "resampled.zarr")
    (record,) = [r for r in store.sequences if r.source_files[0] == fast_file]
    assert record.length == (len(ts) - 1) // 2 + 1  # half the duration at 30 fps
    stored_ts = np.asarray(store.timestamp_ns[record.start : record.start + record.length])
    assert np.abs(np.diff(stored_ts) - 1e9 / 30).max() <= 1
    # Every stored frame falls (to a few ns) on every other source frame: the same pose there.
    features = store.read_features(record.start, record.stop)
    expected = reference_features({k: v[::2] for k, v in raw.items() if k in MOTION_KEYS})
    np.testing.assert_allclose(features[:, JP], expected[:, JP], atol=1e-4)


def test_a_10_s_hole_inside_a_clip_splits_it_with_and_without_fps(
    two_recordings, synthetic_dataset: Path, tmp_path: Path
):
    """It used to be stored as continuous (`gaps: 0`); with --fps it invented 300 frames."""
    root, recordings = two_recordings
    name, clips = next(iter(recordings.items()))
    raw = clips[1]
    ts = raw[nymeria_format.KEY_TIMESTAMP_NS].copy()
    cut = len(ts) // 2
    ts[cut:] += 10 * 10**9  # 10 s of frames missing in the middle of clip 1 ...
    holed = {nymeria_format.KEY_TIMESTAMP_NS: ts}
    write_variant(synthetic_dataset / raw["file"], root / raw["file"], holed)
    later = clips[2][nymeria_format.KEY_TIMESTAMP_NS] + 10 * 10**9  # ... so clip 2 starts later
    write_variant(
        synthetic_dataset / clips[2]["file"],
        root / clips[2]["file"],
        {nymeria_format.KEY_TIMESTAMP_NS: later},
    )
    held = sum(len(c[nymeria_format.KEY_TIMESTAMP_NS]) for cs in recordings.values() for c in cs)
    for fps in (None, 30.0):
        summary = synchronous_build(root, tmp_path / f"{fps}.zarr", fps=fps)
        assert summary.stitch.gaps == 1 and summary.stitch.filled_frames == 0
        store = open_store(tmp_path / f"{fps}.zarr")
        # No frame invented: resampling each side of the hole at most loses its last frame.
        assert held - 3 <= store.num_frames <= held
        pieces = [r for r in store.sequences if r.name.startswith(name)]
        assert [r.name for r in pieces] == [name, f"{name}#1"]
        assert pieces[0].source_files == (clips[0]["file"], raw["file"])
        assert pieces[1].source_files == (raw["file"], clips[2]["file"])
        (note,) = [d for d in summary.discrepancies if d.kind == "missing_frames"]
        assert (note.file, note.frame, note.count) == (raw["file"], cut, 300)
        assert "0 filled by interpolation, 300 at gaps that split the sequence" in note.reason


# --- what is found under DATA -------------------------------------------------------------------


def test_links_loops_and_odd_names_under_data(two_recordings, tmp_path: Path):
    """Symlinked directories used to be ignored silently (their clips lost), as were dangling
    links, loops, `.hdf5`/`.H5` files and a directory named `x.h5`."""
    root, recordings = two_recordings
    first, second = (clips for clips in recordings.values())
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    for clip in second:  # the second recording lives outside DATA, reached through a link
        shutil.move(root / clip["file"], outside / clip["file"])
    os.symlink(outside, root / "linked")
    os.symlink(outside, root / "linked_again")  # the same directory twice: read once
    os.symlink(root, outside / "back_to_data")  # a loop through DATA itself
    os.symlink(root / "nothing.h5", root / "dangling.h5")
    shutil.copy(root / first[0]["file"], root / "renamed_00000.hdf5")
    shutil.copy(root / first[0]["file"], root / "shouting_00000.H5")
    (root / "folder.h5").mkdir()
    (root / "clip_00000.mp4").write_bytes(b"video")

    discovery = discover_clip_files(root)
    assert discovery.files == sorted(
        [c["file"] for c in first] + [f"linked/{c['file']}" for c in second]
    )
    reasons = {i.path: i.reason for i in discovery.ignored}
    assert reasons == {
        "dangling.h5": f"dangling link to {root / 'nothing.h5'}",
        "folder.h5": "a directory, not a clip file (its contents are read)",
        "linked/back_to_data": "link loop: leads back to .",
        "linked_again": "same directory as linked, already read",
        "renamed_00000.hdf5": f"extension '.hdf5': {ONLY_H5}",
        "shouting_00000.H5": f"extension '.H5': {ONLY_H5}",
    }
    assert discovery.other_files == {".mp4": 1}

    result = cli_build(root, tmp_path / "s.zarr")
    assert result.exit_code == 0, result.output
    assert "6 used, 0 skipped" in result.output and "6 candidates not read" in result.output
    for path, reason in reasons.items():
        assert f"not read: {path}: {reason}" in result.output
    assert "not read, not clip files: 1 .mp4" in result.output
    store = open_store(tmp_path / "s.zarr")
    assert len(store.sequences) == 2
    source = store.attrs[shared.store.ATTR_SOURCE]
    assert {i["path"] for i in source["ignored"]} == set(reasons)


def test_nothing_to_read_names_what_was_not_read(tmp_path: Path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "clip_00000.hdf5").write_bytes(b"x")
    result = cli_build(tmp_path / "data", tmp_path / "s.zarr")
    assert result.exit_code == 1
    assert "no *.h5 files under" in result.output
    assert "not read: clip_00000.hdf5 (extension '.hdf5'" in result.output


# --- issue 20: values after the cast, wrapped timestamps, odd names ------------------------------


def test_values_that_overflow_float32_or_timestamps_that_wrap_are_refused(
    two_recordings, synthetic_dataset: Path, tmp_path: Path
):
    """A float64 1e39 is finite but becomes inf as the stored float32 (it used to be published,
    and `verify` then rejected the store); int64 timestamps wrapping past the maximum looked
    increasing (their int64 differences wrap too) and were stored."""
    root, recordings = two_recordings
    first, second = (clips[0] for clips in recordings.values())
    contact = first[nymeria_format.KEY_CONTACT_INFORMATION].astype(np.float64)
    contact[7, 2] = 1e39
    write_variant(
        synthetic_dataset / first["file"],
        root / first["file"],
        {nymeria_format.KEY_CONTACT_INFORMATION: contact},
    )
    n = len(second[nymeria_format.KEY_TIMESTAMP_NS])
    period = nymeria_format.EXPORTER_FRAME_PERIOD_NS
    with np.errstate(over="ignore"):
        wrapped = np.int64(np.iinfo(np.int64).max - 3 * period) + np.arange(n) * np.int64(period)
    assert (np.diff(wrapped) > 0).all() and wrapped[4] < 0  # what the old check saw
    write_variant(
        synthetic_dataset / second["file"],
        root / second["file"],
        {nymeria_format.KEY_TIMESTAMP_NS: wrapped},
    )

    out = tmp_path / "s.zarr"
    result = cli_build(root, out)
    assert result.exit_code == 0, result.output
    problems = {p["file"]: p for p in open_store(out).attrs[shared.store.ATTR_PROBLEMS]}
    cast = problems[first["file"]]
    assert (cast["kind"], cast["key"], cast["frame"]) == ("out_of_range", "contact_information", 7)
    assert "value 1e+39 overflows float32 (the stored dtype" in cast["reason"]
    wrap = problems[second["file"]]
    assert (wrap["kind"], wrap["key"], wrap["frame"]) == ("out_of_range", "timestamp_ns", 0)
    assert "is outside [0, 2^62] ns (negative, or wrapped around int64)" in wrap["reason"]
    verified = CliRunner().invoke(main, ["verify", str(out), "--no-progress"])
    assert verified.exit_code == 0, verified.output


def test_a_file_named_h5_is_read_and_a_name_that_is_not_utf8_is_listed(
    two_recordings, synthetic_dataset: Path, tmp_path: Path
):
    """A file named exactly `.h5` was neither read nor listed; a name that is not valid UTF-8
    stopped the whole build with a UnicodeEncodeError."""
    root, _ = two_recordings
    third = list(raw_recordings(synthetic_dataset).values())[2][0]
    shutil.copy(synthetic_dataset / third["file"], root / ".h5")
    undecodable = os.fsdecode(b"caf\xe9_00000.h5")  # Latin-1, not UTF-8
    shutil.copy(synthetic_dataset / third["file"], root / undecodable)
    (root / os.fsdecode(b"dir\xff")).mkdir()
    shutil.copy(synthetic_dataset / third["file"], root / os.fsdecode(b"dir\xff") / "x_00000.h5")
    os.symlink(root / os.fsdecode(b"gone\xff.h5"), root / "dangling.h5")

    discovery = discover_clip_files(root)
    assert ".h5" in discovery.files and undecodable not in discovery.files
    reasons = {i.path: i.reason for i in discovery.ignored}
    assert reasons.pop("dangling.h5") == f"dangling link to {root}/gone\\xff.h5"
    assert set(reasons) == {"caf\\xe9_00000.h5", "dir\\xff"}
    assert all(r.startswith("name is not valid UTF-8") for r in reasons.values())

    out = tmp_path / "s.zarr"
    result = cli_build(root, out)
    assert result.exit_code == 0, result.output
    assert "7 used, 0 skipped" in result.output
    assert "not read: caf\\xe9_00000.h5: name is not valid UTF-8" in result.output
    store = open_store(out)
    assert any(".h5" in r.source_files for r in store.sequences)
    ignored = store.attrs[shared.store.ATTR_SOURCE]["ignored"]
    assert {i["path"] for i in ignored} == {*reasons, "dangling.h5"}


def test_unwritten_chunks_and_impossible_speeds_are_refused(
    synthetic_dataset: Path, tmp_path: Path
):
    """Unwritten HDF5 chunks read as zeros (the head at the origin for half a clip) and joints
    jumping 99 km between frames were accepted."""
    donor = min(synthetic_dataset.glob("*.h5"))
    raw = read_raw(donor)
    half = len(raw[nymeria_format.KEY_TIMESTAMP_NS]) // 2
    write_variant(donor, tmp_path / "holes_00000.h5")
    with h5py.File(tmp_path / "holes_00000.h5", "a") as f:
        del f[nymeria_format.KEY_CPF_TRANSLATION]
        cpf = raw[nymeria_format.KEY_CPF_TRANSLATION]
        written = f.create_dataset(
            nymeria_format.KEY_CPF_TRANSLATION, shape=cpf.shape, dtype=cpf.dtype, chunks=(8, 3)
        )
        written[: half // 8 * 8] = cpf[: half // 8 * 8]
    jumping = raw[nymeria_format.KEY_JOINT_TRANSLATION].copy()
    jumping[half::2, 9, 1] += 99_000.0  # +-99 km every other frame
    write_variant(
        donor, tmp_path / "jumps_00000.h5", {nymeria_format.KEY_JOINT_TRANSLATION: jumping}
    )
    holes = read_clip(tmp_path, "holes_00000.h5").problem
    assert (holes.kind, holes.key, holes.frame) == (
        "unwritten_data",
        nymeria_format.KEY_CPF_TRANSLATION,
        half // 8 * 8,
    )
    jumps = read_clip(tmp_path, "jumps_00000.h5").problem
    assert (jumps.kind, jumps.key, jumps.frame) == (
        "implausible_motion",
        nymeria_format.KEY_JOINT_TRANSLATION,
        half,
    )
    assert f"frame {half}, joint 9: moves 9.9e+04 m in 0.0333 s" in jumps.reason
    assert "faster than 30 m/s" in jumps.reason
