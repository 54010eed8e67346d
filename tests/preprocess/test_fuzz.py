"""Fuzzing the input side: copies of a real synthetic clip with random bytes overwritten or cut
short at random offsets (fixed seeds). `read_clip` never raises and what it accepts is sound;
one real build over a mix finishes with every good file in the store and every bad one
recorded with the kind `read_clip` gave it. A seeded subset of the fuzz campaign
(`preprocess.fuzz`, value mutations too) publishes nothing bad and crashes nowhere."""

from __future__ import annotations

import shutil
import traceback
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner
from store_testing import cli_build

import shared.store
from preprocess import nymeria_format, synth
from preprocess.cli import main
from preprocess.fuzz import BUILD_OPTIONS, corrupt, implausible_values, run_campaign
from preprocess.read_clip import MAX_ABS_POSITION_M, PROBLEM_KINDS, read_clip
from shared.rotations import is_rotation
from shared.store import open_store

READ_CASES = 300
BUILD_CASES = 40  # corrupted copies in the one build (plus the good originals)
CAMPAIGN_FILES = 60  # the seeded subset of `python -m benchmarks fuzz` (1,000 files)


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Three one-clip recordings (distinct names), small video: most bytes are motion or
    metadata."""
    root = tmp_path_factory.mktemp("fuzz_source")
    return synth.generate_dataset(root, recordings=3, clips_per_recording=1, seed=7, video_size=4)


def assert_sound(result) -> None:
    """What read_clip accepts is what the features need."""
    motion = result.motion
    n = len(motion)
    assert n > 0 and all(len(a) == n for a in motion.arrays().values())
    assert (np.diff(motion.timestamp_ns) > 0).all()
    for name, values in motion.arrays().items():
        assert np.isfinite(values).all(), name
    assert np.abs(motion.joint_translation).max() <= MAX_ABS_POSITION_M
    assert is_rotation(motion.joint_orientation.astype(np.float64), atol=1e-3).all()


def test_read_clip_never_raises_on_corrupted_copies(clips: list[Path], tmp_path: Path):
    data = clips[0].read_bytes()
    kinds: dict[str, int] = {}
    for seed in range(READ_CASES):
        file = f"{seed}/{clips[0].name}"
        (tmp_path / file).parent.mkdir()
        (tmp_path / file).write_bytes(corrupt(data, seed))
        result = read_clip(tmp_path, file)  # must not raise
        if result.ok:
            assert_sound(result)
            kinds["ok"] = kinds.get("ok", 0) + 1
            continue
        problem = result.problem
        assert problem.kind in PROBLEM_KINDS and problem.reason.startswith(f"{file}: ")
        kinds[problem.kind] = kinds.get(problem.kind, 0) + 1
    # The corruptions reach every layer: metadata, compressed chunks, values.
    assert kinds.get("ok", 0) >= 5 and kinds.get("unreadable", 0) >= READ_CASES // 2
    assert len(kinds) >= 4, kinds


def _renamed_copy(source: Path, target: Path, index: int) -> None:
    """A copy of `source` as its own recording (same-length name, so the layout barely moves)."""
    data = source.read_bytes()
    target.write_bytes(data)
    with h5py.File(target, "r+") as f:
        name = str(f.attrs[nymeria_format.ATTR_SEQUENCE_NAME])
        f.attrs[nymeria_format.ATTR_SEQUENCE_NAME] = name[:-6] + f"{index:06d}"


def test_a_build_over_good_and_corrupted_files_records_every_bad_one(
    clips: list[Path], tmp_path: Path
):
    root = tmp_path / "data"
    (root / "good").mkdir(parents=True)
    (root / "fuzzed").mkdir()
    for clip in clips:
        (root / "good" / clip.name).write_bytes(clip.read_bytes())
    expected: dict[str, str] = {}  # fuzzed file -> "ok" or its problem kind from read_clip
    # Seeds are drawn until the mix holds a few files that stay readable (about 1 in 15
    # corrupted copies does, depending on the data) beside the refused ones, so a change of
    # the synthetic data cannot leave the test without either kind.
    wanted = {"ok": 3, "problem": BUILD_CASES - 3}
    for seed in range(10_000):
        if not any(wanted.values()):
            break
        template = tmp_path / "template.h5"
        _renamed_copy(clips[seed % len(clips)], template, seed)
        file = f"fuzzed/fuzz{seed:04d}_00000.h5"
        (root / file).write_bytes(corrupt(template.read_bytes(), 10_000 + seed))
        result = read_clip(root, file)
        kind = "ok" if result.ok else "problem"
        if wanted[kind]:
            wanted[kind] -= 1
            expected[file] = "ok" if result.ok else result.problem.kind
        else:
            (root / file).unlink()
    assert not any(wanted.values()), f"no mix of readable and refused copies: {wanted} missing"

    result = cli_build(root, tmp_path / "s.zarr", "--split", "1,0,0")
    assert result.exit_code == 0, result.output
    store = open_store(tmp_path / "s.zarr")
    used = {f for record in store.sequences for f in record.source_files}
    problems = {p["file"]: p["kind"] for p in store.attrs[shared.store.ATTR_PROBLEMS]}
    assert {f"good/{clip.name}" for clip in clips} <= used
    assert problems == {f: kind for f, kind in expected.items() if kind != "ok"}
    assert used == {f"good/{c.name}" for c in clips} | {f for f, k in expected.items() if k == "ok"}
    for file, kind in problems.items():
        assert f"skipped [{kind}] {file}: " in result.output
    features = store.read_features(0, store.num_frames)
    assert np.isfinite(features).all()


def _in_process(*args: str) -> tuple[int, str]:
    """The CLI in this process (fast): an exception it lets out is a crash, with traceback."""
    result = CliRunner().invoke(main, list(args))
    output = result.output
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        output += "".join(traceback.format_exception(result.exception))
        return -1, output
    return result.exit_code, output


def test_a_seeded_fuzz_campaign_has_no_crash_and_no_bad_publication(
    clips: list[Path], tmp_path: Path
):
    """Value mutations (1e39 float64, wrapped timestamps, 100 km jumps, unwritten chunks, odd
    names, ...) beside byte damage: each file is used, refused or listed, and the published
    store passes verify and holds nothing implausible."""
    report = run_campaign(
        clips,
        tmp_path,
        files=CAMPAIGN_FILES,
        batch=CAMPAIGN_FILES,
        seed=1,
        build=lambda data, out: _in_process("build", str(data), "--out", str(out), *BUILD_OPTIONS),
        verify=lambda store: _in_process("verify", str(store), "--no-progress"),
    )
    assert report.crashes == [] and report.bad_publications == []
    assert report.files == CAMPAIGN_FILES == sum(report.outcomes.values()) and report.published == 1
    assert len(report.mutations) >= 15 and len(report.outcomes) >= 10, report
    for kind in ("used", "implausible_motion", "unwritten_data", "out_of_range"):
        assert report.outcomes[kind] > 0, report.outcomes


def test_implausible_values_finds_a_store_that_moves_too_fast(clips: list[Path], tmp_path: Path):
    """The campaign's own check can fail: a store built by a reader without the speed check."""
    root = tmp_path / "data"
    root.mkdir()
    for clip in clips:
        shutil.copy(clip, root / clip.name)
    result = cli_build(root, tmp_path / "s.zarr", "--split", "1,0,0")
    assert result.exit_code == 0, result.output
    store = open_store(tmp_path / "s.zarr")
    assert implausible_values(store) == []
    slow = open_store(tmp_path / "s.zarr")
    slow.timestamp_ns = np.asarray(store.timestamp_ns) // 100  # the same motion, 100x faster
    assert any("moves at" in found for found in implausible_values(slow))
