"""End-to-end builds on synthetic clips: the real command into a temp store, reopened and checked
against features, stats and splits recomputed independently (h5py + numpy) in the test."""

from __future__ import annotations

from dataclasses import fields
from datetime import datetime
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from distributed import LocalCluster
from store_testing import (
    cli_build,
    content_files,
    feature_chunk_files,
    raw_recordings,
    reference_features,
    stitched,
    synchronous_build,
)

import shared.store
from preprocess import nymeria_format
from preprocess.build import BuildConfig, BuildRuntime, BuildSettings, plan_build
from preprocess.cli import main
from shared.features import canonicalize
from shared.layout import FEATURE_DIM, HP, HP_DOT, layout_description
from shared.store import open_store

CHUNK_FRAMES = 500
WINDOW, STRIDE, STD_FLOOR = 152, 38, 1e-3


def numpy_stats(store: shared.store.FeatureStore) -> tuple[np.ndarray, np.ndarray, int]:
    """Mean/std over canonical train windows, all stacked in one numpy array."""
    windows = []
    for record in store.split("train"):
        features = np.asarray(store.zarr_arrays[shared.store.FEATURES][record.start : record.stop])
        if record.length < WINDOW:
            starts, width = [0], record.length
        else:
            starts, width = range(0, record.length - WINDOW + 1, STRIDE), WINDOW
        for start in starts:
            canonical, _ = canonicalize(features[start : start + width].astype(np.float64))
            windows.append(canonical)
    samples = np.concatenate(windows)
    return samples.mean(0), np.maximum(samples.std(0), STD_FLOOR), len(samples)


@pytest.fixture(scope="module")
def cluster_store(synthetic_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real command on a real 2-worker `distributed.LocalCluster`."""
    out = tmp_path_factory.mktemp("cluster") / "nymeria.zarr"
    result = CliRunner().invoke(
        main,
        [
            "build",
            str(synthetic_dataset),
            "--out",
            str(out),
            "--workers",
            "2",
            "--chunk-frames",
            str(CHUNK_FRAMES),
            "--no-progress",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "18 used, 0 skipped" in result.output
    return out


@pytest.mark.slow
def test_cluster_build_sizes_chunks_and_attributes(cluster_store: Path, synthetic_dataset: Path):
    recordings = raw_recordings(synthetic_dataset)
    total_frames = sum(
        len(c[nymeria_format.KEY_TIMESTAMP_NS]) for clips in recordings.values() for c in clips
    )
    store = open_store(cluster_store)
    assert store.num_frames == total_frames
    assert store.is_memory_mapped
    assert len(store.sequences) == len(recordings) == 6
    for name in shared.store.FRAME_ARRAYS:
        assert store.zarr_arrays[name].chunks[0] == CHUNK_FRAMES
    assert store.zarr_arrays[shared.store.FEATURES].chunks == (CHUNK_FRAMES, FEATURE_DIM)
    assert store.zarr_arrays[shared.store.FEATURES].dtype == np.float32
    assert store.zarr_arrays[shared.store.TIMESTAMP_NS].dtype == np.int64
    chunk_files = feature_chunk_files(cluster_store)
    assert len(chunk_files) == -(-total_frames // CHUNK_FRAMES)
    # raw, then the crc32c checksum
    assert {p.stat().st_size for p in chunk_files} == {CHUNK_FRAMES * FEATURE_DIM * 4 + 4}

    attrs = store.attrs
    assert attrs[shared.store.ATTR_SCHEMA] == {
        "name": "nymeria-motion-features",
        "version": 2,
    }
    assert attrs[shared.store.ATTR_LAYOUT] == layout_description()
    assert attrs[shared.store.ATTR_COMPLETE] is True
    assert store.fps == attrs[shared.store.ATTR_SOURCE_FPS] == pytest.approx(30.0)
    assert attrs[shared.store.ATTR_PACKAGE_VERSION] == metadata.version("nymeria-mvae")
    assert attrs[shared.store.ATTR_GIT_REVISION]
    assert attrs[shared.store.ATTR_SOURCE] == {
        "root": str(synthetic_dataset.resolve()),
        "file_count": 18,
        "files_used": 18,
        "ignored": [],
        "other_files": {},
    }
    assert attrs[shared.store.ATTR_PROBLEMS] == attrs[shared.store.ATTR_DISCREPANCIES] == []
    stitching = attrs[shared.store.ATTR_STITCHING]
    assert stitching["gaps"] == stitching["dropped_frames"] == stitching["filled_frames"] == 0
    assert stitching["max_fill_frames"] == 3
    config = attrs[shared.store.ATTR_BUILD_CONFIG]
    assert config["workers"] == 2 and config["chunk_frames"] == CHUNK_FRAMES
    assert config["compression"] == "none" and config["scheduler"] is None
    assert config["split"] == [0.8, 0.1, 0.1] and config["stats_stride"] == STRIDE
    assert datetime.fromisoformat(attrs[shared.store.ATTR_CREATED]).tzinfo is not None
    assert attrs[shared.store.ATTR_FINGERPRINT] == store.fingerprint


@pytest.mark.slow
def test_cluster_build_features_match_stitched_raw_clips(
    cluster_store: Path, synthetic_dataset: Path
):
    store = open_store(cluster_store)
    recordings = raw_recordings(synthetic_dataset)
    for record in store.sequences:
        clips = recordings[record.name]
        assert record.source_files == tuple(c["file"] for c in clips)
        raw = stitched(clips)
        expected = reference_features(raw)
        stored = store.read_features(record.start, record.stop)
        np.testing.assert_allclose(stored, expected, atol=2e-6, rtol=1e-6)
        frames = slice(record.start, record.stop)
        np.testing.assert_array_equal(
            store.timestamp_ns[frames], raw[nymeria_format.KEY_TIMESTAMP_NS]
        )
        np.testing.assert_array_equal(
            store.contact[frames], raw[nymeria_format.KEY_CONTACT_INFORMATION]
        )
    # Velocities are continuous across clip seams: the first frame of the second clip has the
    # real head displacement, not the zero of a sequence start.
    record = store.sequences[0]
    seam = len(recordings[record.name][0][nymeria_format.KEY_TIMESTAMP_NS])
    features = store.read_features(record.start, record.stop)
    hp, hp_dot = features[:, HP], features[:, HP_DOT]
    np.testing.assert_allclose(hp_dot[seam], hp[seam] - hp[seam - 1], atol=1e-6)
    assert np.abs(hp_dot[seam]).max() > 0


@pytest.mark.slow
def test_cluster_build_stats_equal_numpy(cluster_store: Path):
    store = open_store(cluster_store)
    mean, std, count = numpy_stats(store)
    assert store.stats.count == count
    assert store.stats.window_frames == WINDOW
    np.testing.assert_allclose(store.stats_mean_f64, mean, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(store.stats_std_f64, std, rtol=1e-9, atol=1e-9)
    assert store.stats.std.min() >= STD_FLOOR * (1 - 1e-6)
    assert store.stats.mean.dtype == np.float32


@pytest.mark.slow
def test_cluster_build_splits_by_participant(cluster_store: Path):
    store = open_store(cluster_store)
    people = {split: {r.participant for r in store.split(split)} for split in shared.store.SPLITS}
    assert all(people[s] for s in shared.store.SPLITS)  # 4 participants: every split gets one
    assert not people["train"] & people["val"]
    assert not people["train"] & people["test"]
    assert not people["val"] & people["test"]
    for record in store.sequences:
        assert record.participant == nymeria_format.participant_from_sequence_name(record.name)


@pytest.mark.slow
def test_synchronous_build_is_byte_identical_to_cluster_build(
    cluster_store: Path, synthetic_dataset: Path, tmp_path: Path
):
    out = tmp_path / "sync.zarr"
    synchronous_build(synthetic_dataset, out, chunk_frames=CHUNK_FRAMES)
    assert content_files(out) == content_files(cluster_store)
    assert open_store(out).fingerprint == open_store(cluster_store).fingerprint


def test_zstd_store_has_the_same_content(synthetic_dataset: Path, tmp_path: Path):
    raw_store, zstd_store = tmp_path / "raw.zarr", tmp_path / "zstd.zarr"
    synchronous_build(synthetic_dataset, raw_store, chunk_frames=CHUNK_FRAMES)
    synchronous_build(synthetic_dataset, zstd_store, chunk_frames=CHUNK_FRAMES, compression="zstd")
    raw, compressed = open_store(raw_store), open_store(zstd_store)
    assert not compressed.is_memory_mapped
    np.testing.assert_array_equal(
        compressed.read_features(0, compressed.num_frames), raw.read_features(0, raw.num_frames)
    )
    assert compressed.fingerprint == raw.fingerprint
    assert sum(p.stat().st_size for p in feature_chunk_files(zstd_store)) < sum(
        p.stat().st_size for p in feature_chunk_files(raw_store)
    )


def test_resampling_to_15_fps(synthetic_dataset: Path, tmp_path: Path):
    out = tmp_path / "15fps.zarr"
    summary = synchronous_build(synthetic_dataset, out, fps=15.0)
    store = open_store(out)
    assert store.fps == 15.0 and store.attrs[shared.store.ATTR_SOURCE_FPS] == pytest.approx(30.0)
    assert summary.frames == store.num_frames
    recordings = raw_recordings(synthetic_dataset)
    for record in store.sequences:
        raw = stitched(recordings[record.name])
        source_ns = raw[nymeria_format.KEY_TIMESTAMP_NS]
        assert record.length == (len(source_ns) - 1) // 2 + 1
        ts = np.asarray(store.timestamp_ns[record.start : record.stop])
        assert np.abs(np.diff(ts) - 1e9 / 15).max() <= 1
        # Every 15 fps frame falls on an even source frame, but for the exporter's step
        # int(1e9 / 30), 1/3 ns short of 30 fps: the same pose there, to a few ns.
        drift_ns = np.arange(len(ts)) * 2 / 3
        assert np.abs(ts - source_ns[::2] - drift_ns).max() <= 1
        features = store.read_features(record.start, record.stop)
        expected = reference_features({k: v[::2] for k, v in raw.items()})
        np.testing.assert_allclose(features, expected, atol=1e-5)


def test_existing_store_is_replaced_only_with_overwrite(synthetic_dataset: Path, tmp_path: Path):
    out = tmp_path / "store.zarr"
    assert cli_build(synthetic_dataset, out).exit_code == 0
    before = open_store(out).attrs[shared.store.ATTR_CREATED]
    refused = cli_build(synthetic_dataset, out)
    assert refused.exit_code == 1
    assert "already exists" in refused.output and "--overwrite" in refused.output
    replaced = cli_build(synthetic_dataset, out, "--overwrite", "--chunk-frames", "1000")
    assert replaced.exit_code == 0, replaced.output
    store = open_store(out)
    assert store.chunk_frames == 1000 and store.attrs[shared.store.ATTR_CREATED] >= before
    assert not list(tmp_path.glob("store.zarr.*"))  # no lock, build dir or replaced copy left


def test_plan_prints_what_the_build_writes_and_writes_nothing(
    synthetic_dataset: Path, tmp_path: Path
):
    out = tmp_path / "store.zarr"
    planned = cli_build(synthetic_dataset, out, "--plan", "--chunk-frames", "500")
    assert planned.exit_code == 0, planned.output
    assert list(tmp_path.iterdir()) == []  # no store, no STORE.build/, no lock

    synchronous_build(synthetic_dataset, out, chunk_frames=500)
    store, printed = open_store(out), planned.output
    lines = printed.splitlines()
    assert lines[0] == f"build plan for {out} from {synthetic_dataset.resolve()}"
    assert "files: 18 found, 18 used, 0 unusable" in lines[1]
    assert f"frames: {store.num_frames} (" in lines[2]
    assert f"in {len(store.sequences)} sequences from 6 recordings" in lines[2]
    for split in shared.store.SPLITS:
        records = store.split(split)
        participants = len({r.participant for r in records})
        frames = sum(r.length for r in records)
        assert (
            f"{split} {participants} participants / {len(records)} sequences / {frames} frames"
            in lines[3]
        )
    assert store.stats.count % WINDOW == 0  # every train sequence is longer than a window
    assert lines[4] == (
        f"statistics: {store.stats.count // WINDOW} canonical windows of {WINDOW} frames every "
        f"{STRIDE} frames over the train split"
    )
    chunks = -(-store.num_frames // 500)
    assert lines[5] == (
        f"chunks: {chunks} of 500 frames per array (features, timestamp_ns, contact), "
        f"compression none"
    )
    chunk_bytes = sum(
        f.stat().st_size
        for name in shared.store.FRAME_ARRAYS
        for f in (out / name / "c").rglob("*")
        if f.is_file()
    )
    assert lines[6].endswith(f"({chunk_bytes} bytes of chunk files)")
    assert lines[7] == "executor: synchronous (plain loop)"
    assert lines[9:] == [
        f"  {r.start:>10} {r.length:>8}  {r.split:<5}  {r.participant}  {r.name}  "
        f"{len(r.source_files)}"
        for r in store.sequences
    ]

    # The same value from Python.
    config = BuildConfig(synthetic_dataset, out, scheduler="synchronous", chunk_frames=500)
    plan = plan_build(config, progress=False)
    assert str(plan) == printed.rstrip("\n") and plan.records() == list(store.sequences)


def test_build_executes_the_plan_it_prints(synthetic_dataset: Path, tmp_path: Path, monkeypatch):
    """A build plans once, with the code `--plan` prints from, and hands that plan object to the
    write stage: its summary records it, it prints as `--plan` did, and the store holds it."""
    import preprocess.build.run

    out = tmp_path / "store.zarr"
    printed = cli_build(synthetic_dataset, out, "--plan", "--chunk-frames", "500")
    assert printed.exit_code == 0, printed.output
    executed, write_store = [], preprocess.build.run.write_store

    def recording_write_store(plan: object, *args: object) -> None:
        executed.append(plan)
        write_store(plan, *args)

    monkeypatch.setattr(preprocess.build.run, "write_store", recording_write_store)
    summary = synchronous_build(synthetic_dataset, out, chunk_frames=500)
    assert len(executed) == 1 and executed[0] is summary.plan
    assert str(summary.plan) == printed.output.rstrip("\n")
    store = open_store(out)
    assert summary.plan.records() == list(store.sequences)
    np.testing.assert_array_equal(np.concatenate(summary.plan.timestamps), store.timestamp_ns[:])


def test_refuses_to_replace_something_that_is_not_a_store(synthetic_dataset: Path, tmp_path: Path):
    out = tmp_path / "precious"
    out.mkdir()
    (out / "thesis.tex").write_text("do not delete")
    result = cli_build(synthetic_dataset, out, "--overwrite")
    assert result.exit_code == 1 and "is not a Zarr store" in result.output
    assert (out / "thesis.tex").exists()


def test_bad_options_are_usage_errors(synthetic_dataset: Path, tmp_path: Path):
    runner = CliRunner()
    base = ["build", str(synthetic_dataset), "--out", str(tmp_path / "s.zarr")]
    result = runner.invoke(main, [*base, "--split", "0.5,0.6,0.1"])
    assert result.exit_code == 2 and "sum to 1" in result.output
    result = runner.invoke(main, [*base, "--worker-timeout", "0"])
    assert result.exit_code == 2 and "--worker-timeout" in result.output


@pytest.mark.slow
def test_build_on_an_existing_cluster(cluster_store: Path, synthetic_dataset: Path, tmp_path: Path):
    out = tmp_path / "existing.zarr"
    with LocalCluster(
        n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None
    ) as cluster:
        result = CliRunner().invoke(
            main,
            [
                "build",
                str(synthetic_dataset),
                "--out",
                str(out),
                "--scheduler",
                cluster.scheduler_address,
                "--chunk-frames",
                str(CHUNK_FRAMES),
                "--no-progress",
            ],
        )
    assert result.exit_code == 0, result.output
    assert content_files(out) == content_files(cluster_store)
    assert (
        open_store(out).attrs[shared.store.ATTR_BUILD_CONFIG]["scheduler"]
        == cluster.scheduler_address
    )


def test_build_options_from_a_config_file(synthetic_dataset: Path, tmp_path: Path):
    """`build --config FILE` sets options by field name; options on the command line win."""
    config = tmp_path / "build.toml"
    config.write_text('chunk_frames = 500\nsplit = [0.5, 0.25, 0.25]\nscheduler = "synchronous"\n')
    out = tmp_path / "s.zarr"
    args = ["build", str(synthetic_dataset), "--out", str(out), "--config", str(config)]
    result = CliRunner().invoke(main, [*args, "--chunk-frames", "700", "--no-progress"])
    assert result.exit_code == 0, result.output
    recorded = open_store(out).attrs[shared.store.ATTR_BUILD_CONFIG]
    assert recorded["chunk_frames"] == 700 and recorded["split"] == [0.5, 0.25, 0.25]
    assert recorded["scheduler"] == "synchronous"
    config.write_text("chunk_frame = 500\n")
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2 and "unknown options ['chunk_frame']" in result.output


def test_build_config_file_in_sections_and_resume_outside_them(
    synthetic_dataset: Path, tmp_path: Path
):
    """The tables [build] (what it computes) and [runtime] (how it runs) of `--config` are what
    the store records; --resume and --overwrite are the command's alone, never recorded."""
    config = tmp_path / "build.yaml"
    config.write_text(
        "build:\n  chunk_frames: 600\n  split_seed: 3\nruntime:\n  scheduler: synchronous\n"
    )
    out = tmp_path / "s.zarr"
    args = ["build", str(synthetic_dataset), "--out", str(out), "--config", str(config)]
    result = CliRunner().invoke(main, [*args, "--split-seed", "4", "--no-progress"])
    assert result.exit_code == 0, result.output
    recorded = open_store(out).attrs[shared.store.ATTR_BUILD_CONFIG]
    assert (recorded["chunk_frames"], recorded["split_seed"]) == (600, 4)
    assert recorded["scheduler"] == "synchronous" and recorded["strict"] is False
    sections = (BuildSettings, BuildRuntime)
    assert set(recorded) == {f.name for section in sections for f in fields(section)}
    again = CliRunner().invoke(main, [*args, "--resume"])
    assert again.exit_code == 0 and "nothing to resume" in again.output
    config.write_text("resume: true\n")
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2 and "unknown options ['resume']" in result.output
    assert "in the tables [build], [runtime]" in result.output
