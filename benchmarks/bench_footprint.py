"""What a full-scale build needs: frames/s, peak memory, disk footprint, and what --resume redoes.

    python -m benchmarks.bench_footprint [--recordings 300 --clips-per-recording 10
                                          --video-clips 3 --video-size 1408]

Data: `recordings x clips-per-recording` small synthetic clips (16 px stand-in video) plus
`video-clips` clips whose `egoview_RGB` is a real-size (N, 3, 1408, 1408) uint8 dataset of
incompressible pixels (~0.9 GB each on disk), so the build meets files of the real size (the
video is never read; a build's cost must not depend on it).

Each build runs as `python -m preprocess build --scheduler synchronous` in a subprocess (one
core; its peak RSS from wait4), while a thread samples the bytes under STORE.build/ every 0.1 s.
Reported: frames/s; peak memory at half and all of the clips (its growth per frame is what the
extrapolation uses); the staging directory's peak bytes per frame, beside what the previous
design kept (every per-file result until publish, plus the store); the store's bytes per frame;
a build killed half-way through writing frames and resumed (seconds and frames recomputed, vs
the whole feature stage before); and the extrapolation to the real dataset (~130,000 clips,
32M frames).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import h5py
import hdf5plugin
import numpy as np

from benchmarks.bench_preprocess import subset
from preprocess import nymeria_format, synth
from preprocess.build import BuildPaths
from preprocess.clip_cache import decode_record
from preprocess.discover import discover_clip_files
from shared.remote import store_size_bytes
from shared.store import open_store

REPO_ROOT = Path(__file__).resolve().parents[1]
REAL_CLIPS = 130_000
REAL_FRAMES = 32_000_000
SAMPLE_S = 0.1


def tree_bytes(root: Path) -> int:
    total = 0
    stack = [root]
    while stack:
        try:
            entries = list(os.scandir(stack.pop()))
        except FileNotFoundError:
            continue
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(Path(entry.path))
                else:
                    total += entry.stat(follow_symlinks=False).st_size
            except FileNotFoundError:
                continue
    return total


@dataclass
class BuildRun:
    seconds: float
    peak_rss_bytes: int
    peak_staging_bytes: int
    peak_results_bytes: int  # per-file results alone (clips/ without its index)
    stage1_seconds: float  # until the per-file index exists


def run_build(
    data: Path, out: Path, *extra: str, kill_at_fraction: float | None = None
) -> BuildRun:
    """One synchronous build in a subprocess, sampled; optionally SIGKILLed once its recorded
    progress passes `kill_at_fraction` of the frames."""
    paths = BuildPaths(out)
    build = [sys.executable, "-m", "preprocess", "build", str(data), "--out", str(out)]
    process = subprocess.Popen(
        [*build, "--scheduler", "synchronous", "--no-progress", *extra],
        cwd=REPO_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    started = time.perf_counter()
    peak = {"staging": 0, "results": 0, "stage1": 0.0}
    done = threading.Event()
    total_frames = [0]

    def sample() -> None:
        while not done.is_set():
            staging = tree_bytes(paths.build_dir)
            results = tree_bytes(paths.clips)
            if paths.clips.joinpath("entries.index").exists():
                peak["stage1"] = peak["stage1"] or time.perf_counter() - started
                results -= paths.clips.joinpath("entries.index").stat().st_size
            peak["staging"] = max(peak["staging"], staging)
            peak["results"] = max(peak["results"], results)
            if kill_at_fraction is not None and paths.progress.exists() and total_frames[0]:
                try:
                    meta, _ = decode_record(paths.progress.read_bytes(), ())
                except (OSError, ValueError):
                    meta = {"rows_written": 0}
                if meta["rows_written"] >= kill_at_fraction * total_frames[0]:
                    process.send_signal(signal.SIGKILL)
                    return
            time.sleep(SAMPLE_S)

    if kill_at_fraction is not None:
        total_frames[0] = _frames_of(data)
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    done.set()
    sampler.join()
    process.returncode = os.waitstatus_to_exitcode(status)
    stderr = process.stderr.read().decode()
    if kill_at_fraction is None and process.returncode != 0:
        raise RuntimeError(f"build failed ({process.returncode}): {stderr[-2000:]}")
    return BuildRun(
        seconds, usage.ru_maxrss * 1024, peak["staging"], peak["results"], peak["stage1"]
    )


_frames_cache: dict[Path, int] = {}


def _frames_of(data: Path) -> int:
    if data not in _frames_cache:
        total = 0
        for file in discover_clip_files(data).files:
            with h5py.File(data / file, "r") as f:
                total += f[nymeria_format.KEY_TIMESTAMP_NS].shape[0]
        _frames_cache[data] = total
    return _frames_cache[data]


def add_real_size_video(path: Path, size: int, seed: int) -> None:
    """Replace the clip's stand-in video by an (N, 3, size, size) uint8 dataset of noise, one
    LZ4 chunk per frame (as large on disk as real footage; written frame by frame)."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, size=(nymeria_format.EGOVIEW_CHANNELS, size, size), dtype=np.uint8)
    with h5py.File(path, "r+") as f:
        frames = f[nymeria_format.KEY_TIMESTAMP_NS].shape[0]
        del f[nymeria_format.KEY_EGOVIEW]
        video = f.create_dataset(
            nymeria_format.KEY_EGOVIEW,
            shape=(frames, *base.shape),
            dtype=np.uint8,
            chunks=(1, *base.shape),
            **hdf5plugin.LZ4(),
        )
        for t in range(frames):
            video[t] = np.roll(base, t, axis=-1)


@dataclass
class _Measured:
    """What one benchmark run measured: builds of half and all of the clips, and a resume."""

    clips: int
    half_clips: int
    half: BuildRun
    full: BuildRun
    half_frames: int
    stored_frames: int
    store_bytes: int
    killed_meta: dict  # the progress record the killed build left
    resumed: BuildRun


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--recordings", type=int, default=300)
    parser.add_argument("--clips-per-recording", type=int, default=10)
    parser.add_argument("--video-clips", type=int, default=3)
    parser.add_argument("--video-size", type=int, default=1408)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench_footprint_") as tmp:
        workdir = Path(tmp)
        files = _make_data(args, workdir / "data")
        measured = _measure(workdir, workdir / "data", files)
    _print_results(measured)


def _make_data(args: argparse.Namespace, data: Path) -> list[str]:
    """The synthetic clips (a few with a real-size video) under `data`, described; their files."""
    started = time.perf_counter()
    synth.generate_dataset(
        data / "small",
        recordings=args.recordings,
        seed=0,
        clips_per_recording=args.clips_per_recording,
    )
    big = synth.generate_dataset(
        data / "video", recordings=args.video_clips, seed=1, clips_per_recording=1
    )
    for i, path in enumerate(big):
        add_real_size_video(path, args.video_size, seed=i)
    files = discover_clip_files(data).files
    print(
        f"# {len(files)} clips ({args.recordings} x {args.clips_per_recording} with a 16 px "
        f"video, {args.video_clips} with a real-size (N, 3, {args.video_size}, "
        f"{args.video_size}) video), {_frames_of(data)} frames, {tree_bytes(data) / 1e9:.2f} GB "
        f"on disk; generated in {time.perf_counter() - started:.0f} s; builds: --scheduler "
        f"synchronous (1 core), {os.cpu_count()} cores on the machine",
        flush=True,
    )
    return files


def _measure(workdir: Path, data: Path, files: list[str]) -> _Measured:
    """Build half the clips, all of them, and all of them again killed halfway and resumed."""
    half_files = files[: len(files) // 2]
    half = run_build(subset(data, half_files, workdir / "half"), workdir / "half.zarr")
    full = run_build(data, workdir / "full.zarr")
    killed_out = workdir / "killed.zarr"
    run_build(data, killed_out, kill_at_fraction=0.5)
    meta, _ = decode_record(BuildPaths(killed_out).progress.read_bytes(), ())
    return _Measured(
        clips=len(files),
        half_clips=len(half_files),
        half=half,
        full=full,
        half_frames=open_store(workdir / "half.zarr").num_frames,
        stored_frames=open_store(workdir / "full.zarr").num_frames,
        store_bytes=store_size_bytes(str(workdir / "full.zarr")),
        killed_meta=meta,
        resumed=run_build(data, killed_out, "--resume"),
    )


def _print_results(m: _Measured) -> None:
    full, stored_frames = m.full, m.stored_frames
    rss_growth = full.peak_rss_bytes - m.half.peak_rss_bytes
    rss_per_frame = rss_growth / max(stored_frames - m.half_frames, 1)
    rss_base = full.peak_rss_bytes - rss_per_frame * stored_frames
    staging_pf = full.peak_staging_bytes / stored_frames
    results_pf = full.peak_results_bytes / stored_frames
    store_pf = m.store_bytes / stored_frames
    before_pf = results_pf + store_pf  # every result kept until publish, beside the store

    print("\n## Full build (synchronous, 1 core)")
    print(f"{'clips':>7}{'frames':>10}{'seconds':>9}{'frames/s':>10}{'peak RSS MB':>13}")
    for count, run, n_frames in (
        (m.half_clips, m.half, m.half_frames),
        (m.clips, full, stored_frames),
    ):
        print(
            f"{count:>7}{n_frames:>10}{run.seconds:>9.1f}{n_frames / run.seconds:>10.0f}"
            f"{run.peak_rss_bytes / 1e6:>13.0f}"
        )
    print(f"peak RSS grows {rss_per_frame:.1f} B per frame over a {rss_base / 1e6:.0f} MB base")

    print("\n## Disk (bytes per stored frame)")
    print(f"{'per-file results, all written (end of stage 1)':<56}{results_pf:>8.0f}")
    print(f"{'staging directory at its peak (results + store so far)':<56}{staging_pf:>8.0f}")
    print(f"{'published store (uncompressed)':<56}{store_pf:>8.0f}")
    print(f"{'peak, this design (staging peak)':<56}{staging_pf:>8.0f}")
    print(f"{'peak, before (all results kept beside the store)':<56}{before_pf:>8.0f}")

    print("\n## Resume after a kill at half of the frame writing")
    print(
        f"killed with {m.killed_meta['rows_written']} of {stored_frames} frames durable "
        f"(sequence {m.killed_meta['next_sequence']})"
    )
    print(
        f"resume took {m.resumed.seconds:.1f} s; a full build {full.seconds:.1f} s, of which "
        f"reading clips {full.stage1_seconds:.1f} s and the feature stage "
        f"{full.seconds - full.stage1_seconds:.1f} s (before: a resume redid the whole feature "
        f"stage)"
    )

    fps = stored_frames / full.seconds
    hours = REAL_FRAMES / fps / 3600
    real = f"{REAL_CLIPS:,} clips, {REAL_FRAMES / 1e6:.0f}M frames"
    print(f"\n## Extrapolation to the real dataset ({real})")
    print(
        f"build time: {hours:.1f} h on 1 core at {fps:.0f} frames/s (~{hours / 8:.1f} h on 8 "
        f"workers if reading scales)"
    )
    peak_rss = rss_base + rss_per_frame * REAL_FRAMES
    print(f"peak memory of the build process: {peak_rss / 1e9:.1f} GB")
    print(
        f"store: {store_pf * REAL_FRAMES / 1e9:.0f} GB; free space a build needs (its staging "
        f"peak, which becomes the store): {staging_pf * REAL_FRAMES / 1e9:.0f} GB (before: "
        f"{before_pf * REAL_FRAMES / 1e9:.0f} GB)"
    )


if __name__ == "__main__":
    main()
