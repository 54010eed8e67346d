"""Preprocessing throughput: `preprocess build` vs the reference path, on the same clip files.

    python -m benchmarks.bench_preprocess [--recordings 8 --clips-per-recording 4
                                           --video-size 512 --repeats 3 --workers N]

Reference path (what the old trainer did every epoch): open each clip with h5py, read EVERY
dataset including the `egoview_RGB` video, and compute features per clip with the torch code
(`shared.features.world_to_features` on float32 tensors). Ours: the whole build (read motion
only, stitch, features, canonical-window stats, write the Zarr store), once synchronously on one
core (same resources as the reference) and once on a local Dask cluster.

The synthetic video is `--video-size` pixels square (default 512); the real Nymeria video is
1408x1408, 7.6x the pixels per frame (and camera footage compresses far worse than the synthetic
colour bands), so on real data the reference path is dominated even more by video decoding: the
measured ratio is a lower bound. The table also splits the reference into its motion and video
parts and scales the video part to 1408x1408 by pixel count (an estimate, labelled as such).

Also reported: bytes per frame (uncompressed vs zstd), build time as the number of files
doubles (should grow ~linearly), the chunk-size sweep behind DEFAULT_CHUNK_FRAMES (build time
and memory-mapped 152-frame window reads), and how far stats with the default stride are from
stride 1. Target (docs/design.md "Performance targets"): build frames/s >= 5x the reference.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import h5py
import hdf5plugin  # noqa: F401  (LZ4 clips)
import numpy as np
import torch
import zarr
from distributed import LocalCluster

from preprocess import nymeria_format, synth
from preprocess.build import BuildConfig, build
from preprocess.discover import discover_clip_files
from preprocess.executor import default_workers
from preprocess.stats import default_stride, sequence_moments
from shared.features import world_to_features
from shared.layout import FEATURE_DIM
from shared.moments import Moments
from shared.remote import store_size_bytes
from shared.store import ChunkMemmapArray, memmap_array, open_store

WINDOW_FRAMES = 152
REAL_VIDEO_SIZE = 1408
CHUNK_SWEEP = (1024, 4096, 8192, 32768)
SWEEP_FRAMES = 1 << 17  # 131072 frames = 154 MB of features per sweep store
SWEEP_WINDOWS = 20_000


def reference_pass(data: Path, files: list[str], with_video: bool = True) -> int:
    """The old per-epoch path (every dataset, video included); returns frames processed.
    `with_video=False` skips the video, to split the reference's cost into motion and video."""
    frames = 0
    for file in files:
        with h5py.File(data / file, "r") as f:
            arrays = {
                key: f[key][()] for key in f if with_video or key != nymeria_format.KEY_EGOVIEW
            }
        features = world_to_features(
            torch.from_numpy(arrays[nymeria_format.KEY_CPF_TRANSLATION]),
            torch.from_numpy(arrays[nymeria_format.KEY_CPF_ORIENTATION]),
            torch.from_numpy(arrays[nymeria_format.KEY_JOINT_TRANSLATION]),
            torch.from_numpy(arrays[nymeria_format.KEY_JOINT_ORIENTATION]),
        )
        frames += features.shape[0]
    return frames


def build_once(data: Path, out: Path, **options: object) -> float:
    """Seconds for one fresh build (start-up of a local cluster included)."""
    shutil.rmtree(out, ignore_errors=True)
    started = time.perf_counter()
    build(BuildConfig(data=data, out=out, **options), progress=False)
    return time.perf_counter() - started


def median_seconds(run: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def subset(data: Path, files: list[str], target: Path) -> Path:
    """A folder of symlinks to `files`."""
    target.mkdir(parents=True)
    for file in files:
        (target / file).parent.mkdir(parents=True, exist_ok=True)
        (target / file).symlink_to(data / file)
    return target


def window_reads_per_s(features: ChunkMemmapArray | zarr.Array, count: int, seed: int = 0) -> float:
    """Random 152-frame windows copied into a batch buffer, as the trainer does."""
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, features.shape[0] - WINDOW_FRAMES, count)
    buffer = np.empty((WINDOW_FRAMES, FEATURE_DIM), np.float32)
    started = time.perf_counter()
    for start in starts:
        buffer[:] = features[start : start + WINDOW_FRAMES]
    return count / (time.perf_counter() - started)


def chunk_sweep(workdir: Path, data: Path, repeats: int) -> list[tuple[int, float, float, float]]:
    """(chunk_frames, build s, memmap windows/s, fraction of windows crossing a chunk)."""
    rng = np.random.default_rng(0)
    features = rng.normal(size=(SWEEP_FRAMES, FEATURE_DIM)).astype(np.float32)
    rows = []
    for chunk_frames in CHUNK_SWEEP:
        out = workdir / "sweep_build.zarr"
        seconds = statistics.median(
            build_once(data, out, scheduler="synchronous", chunk_frames=chunk_frames)
            for _ in range(repeats)
        )
        path = workdir / f"sweep_{chunk_frames}.zarr"
        array = zarr.create_array(
            path,
            shape=features.shape,
            chunks=(chunk_frames, FEATURE_DIM),
            dtype="float32",
            compressors=None,
            fill_value=0.0,
        )
        array[:] = features
        mapped = memmap_array(array)
        window_reads_per_s(mapped, 2000)  # fault the pages in
        rate = window_reads_per_s(mapped, SWEEP_WINDOWS)
        crossing = (WINDOW_FRAMES - 1) / chunk_frames
        rows.append((chunk_frames, seconds, rate, crossing))
        shutil.rmtree(path)
    return rows


def stride_error(store_path: Path) -> tuple[int, float, float]:
    """Default-stride stats vs stride 1 on the train split: (stride, max |d mean| / std,
    max |d std| / std)."""
    store = open_store(store_path)
    stride = default_stride(WINDOW_FRAMES)
    results = {}
    for s in (stride, 1):
        moments = Moments.empty(FEATURE_DIM)
        for record in store.split("train"):
            features = store.read_features(record.start, record.stop)
            moments = moments.merge(sequence_moments(features, WINDOW_FRAMES, s))
        results[s] = moments.mean_std(1e-3)
    (mean_s, std_s), (mean_1, std_1) = results[stride], results[1]
    mean_err = float(np.max(np.abs(mean_s - mean_1) / std_1))
    std_err = float(np.max(np.abs(std_s - std_1) / std_1))
    return stride, mean_err, std_err


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--recordings", type=int, default=8)
    parser.add_argument("--clips-per-recording", type=int, default=4)
    parser.add_argument("--video-size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=default_workers())
    parser.add_argument(
        "--workdir", type=Path, default=None, help="Scratch folder [default: a temp dir]."
    )
    args = parser.parse_args(argv)

    workdir = Path(tempfile.mkdtemp(prefix="bench_preprocess_", dir=args.workdir))
    try:
        _run(args, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _row(label: str, seconds: float, frames: int, ref_s: float) -> str:
    return f"{label:<60}{seconds:>9.2f}{frames / seconds:>11.0f}{ref_s / seconds:>8.1f}"


def _throughput(args: argparse.Namespace, data: Path, files: list[str], out: Path) -> None:
    reference_pass(data, files)  # page cache warm for both paths
    frames = reference_pass(data, files)
    ref_s = median_seconds(lambda: reference_pass(data, files), args.repeats)
    motion_s = median_seconds(lambda: reference_pass(data, files, with_video=False), args.repeats)
    # Video decoding scales with pixels: the same path on 1408x1408 video, estimated.
    real_ref_s = motion_s + (ref_s - motion_s) * (REAL_VIDEO_SIZE / args.video_size) ** 2
    sync_s = statistics.median(
        build_once(data, out, scheduler="synchronous") for _ in range(args.repeats)
    )
    cluster_s = statistics.median(
        build_once(data, out, workers=args.workers) for _ in range(args.repeats)
    )
    with LocalCluster(
        n_workers=args.workers, threads_per_worker=1, processes=True, dashboard_address=None
    ) as cluster:
        running_s = statistics.median(
            build_once(data, out, scheduler=cluster.scheduler_address) for _ in range(args.repeats)
        )
    size = REAL_VIDEO_SIZE
    print("\n## Throughput (frames/s, higher is better; x ref = speed relative to the reference)")
    print(f"{'path':<60}{'seconds':>9}{'frames/s':>11}{'x ref':>8}")
    print(_row("reference: h5py all datasets + torch features, 1 core", ref_s, frames, ref_s))
    print(_row("  same without the video (motion datasets only)", motion_s, frames, ref_s))
    print(_row(f"  estimate with {size}x{size} video (pixel-scaled)", real_ref_s, frames, ref_s))
    print(_row("build, --scheduler synchronous (1 core)", sync_s, frames, ref_s))
    print(
        _row(
            f"build, new local cluster ({args.workers} workers, start-up incl.)",
            cluster_s,
            frames,
            ref_s,
        )
    )
    print(_row("build, running local cluster (--scheduler ADDRESS)", running_s, frames, ref_s))
    print(
        f"{frames} frames per pass; target >= 5x. Against the estimated {size}x{size} reference: "
        f"synchronous {real_ref_s / sync_s:.0f}x, running cluster {real_ref_s / running_s:.0f}x, "
        f"new cluster {real_ref_s / cluster_s:.1f}x"
    )


def _bytes_per_frame(data: Path, out: Path) -> None:
    print("\n## Bytes per frame (whole store / frames; chunks of 1024 frames: little edge padding)")
    sizes = {}
    for compression in ("none", "zstd"):
        build_once(data, out, scheduler="synchronous", compression=compression, chunk_frames=1024)
        sizes[compression] = store_size_bytes(str(out)) / open_store(out).num_frames
    ratio = sizes["zstd"] / sizes["none"]
    payload = FEATURE_DIM * 4 + 8 + 4 * 4
    print(f"{'none (default, memory-mapped)':<32}{sizes['none']:>7.0f} B/frame")
    print(f"{'zstd level 3':<32}{sizes['zstd']:>7.0f} B/frame  ({ratio:.2f} of none)")
    print(f"{'raw payload':<32}{payload:>7d} B/frame  (features + timestamp + contact)")


def _scaling(args: argparse.Namespace, data: Path, files: list[str], workdir: Path) -> None:
    print("\n## Scaling with the number of files (synchronous build, 1 core)")
    print(f"{'files':>6}{'frames':>9}{'seconds':>10}{'s / file':>10}{'x prev':>8}")
    quarter = max(1, len(files) // 4)
    counts, times = [], []
    for count in (quarter, 2 * quarter, 4 * quarter):
        part = subset(data, files[:count], workdir / f"subset_{count}")
        out = workdir / "scale.zarr"
        seconds = statistics.median(
            build_once(part, out, scheduler="synchronous") for _ in range(args.repeats)
        )
        growth = f"{seconds / times[-1]:>8.2f}" if times else ""
        frames = open_store(out).num_frames
        print(f"{count:>6}{frames:>9}{seconds:>10.2f}{seconds / count:>10.4f}{growth}")
        counts.append(count)
        times.append(seconds)
    per_file_s, fixed_s = np.polyfit(counts, times, 1)
    worst = max(abs(fixed_s + per_file_s * c - t) / t for c, t in zip(counts, times, strict=True))
    print(
        f"linear fit: {fixed_s:.3f} s fixed + {per_file_s * 1e3:.2f} ms per file "
        f"(largest deviation {worst:.0%})"
    )


def _chunks(args: argparse.Namespace, data: Path, files: list[str], workdir: Path) -> None:
    print(
        f"\n## Chunk size (build of the {len(files)} clips; random {WINDOW_FRAMES}-frame window "
        f"reads through the chunk memmaps of a {SWEEP_FRAMES}-frame store)"
    )
    print(f"{'chunk_frames':>12}{'MB/chunk':>10}{'build s':>9}{'windows/s':>11}{'crossing':>10}")
    for chunk_frames, seconds, rate, crossing in chunk_sweep(workdir, data, args.repeats):
        mb = chunk_frames * FEATURE_DIM * 4 / 1e6
        print(f"{chunk_frames:>12}{mb:>10.1f}{seconds:>9.2f}{rate:>11.0f}{crossing:>10.1%}")
    array = zarr.create_array(
        workdir / "zarr_reads.zarr",
        shape=(SWEEP_FRAMES, FEATURE_DIM),
        chunks=(8192, FEATURE_DIM),
        dtype="float32",
        compressors=None,
        fill_value=0.0,
    )
    array[:] = np.random.default_rng(1).normal(size=array.shape).astype(np.float32)
    rate = window_reads_per_s(array, 500)
    print(f"(the same windows sliced through zarr.Array, chunks of 8192: {rate:.0f} windows/s)")


def _run(args: argparse.Namespace, workdir: Path) -> None:
    data = workdir / "clips"
    started = time.perf_counter()
    synth.generate_dataset(
        data,
        recordings=args.recordings,
        clips_per_recording=args.clips_per_recording,
        video_size=args.video_size,
        seed=0,
    )
    files = discover_clip_files(data).files
    data_mb = sum((data / f).stat().st_size for f in files) / 1e6
    v = args.video_size
    print(
        f"# {len(files)} synthetic clips ({args.recordings} recordings x "
        f"{args.clips_per_recording}), video {v}x{v} (real Nymeria: {REAL_VIDEO_SIZE}x"
        f"{REAL_VIDEO_SIZE}), {data_mb:.0f} MB on disk, generated in "
        f"{time.perf_counter() - started:.0f} s; {os.cpu_count()} cores, median of {args.repeats}"
    )
    out = workdir / "store.zarr"
    _throughput(args, data, files, out)
    _bytes_per_frame(data, out)
    _scaling(args, data, files, workdir)
    _chunks(args, data, files, workdir)
    build_once(data, out, scheduler="synchronous")
    stride, mean_err, std_err = stride_error(out)
    print(
        f"\n## Stats stride {stride} vs stride 1 (train split): max |d mean| = {mean_err:.3g} "
        f"std, max |d std| = {std_err:.3g} std"
    )


if __name__ == "__main__":
    main()
