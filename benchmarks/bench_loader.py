"""Loader throughput: training windows/s from a page-cached store, one process, one core.

    python -m benchmarks.bench_loader [--recordings 24 --clips-per-recording 8 --seconds 3
                                       --train-steps 12 --chunks 4000 --chunk-frames 64]

Rates are windows per CPU-second of this process (`time.process_time`): "on one core", and
steadier than wall time on a machine shared with other work; memcpy and ours are timed in
alternating bursts, so a change in the machine's load hits both alike.

Small store (default 8192-frame chunks, a few chunks per array), side by side in one run, each
a median over repeats:
- memcpy: copying the same bytes out of one in-memory array (the ceiling);
- ours: `train.data.read_windows` (uniform starts, memory-mapped uncompressed chunks);
- zarr: the same windows sliced through `zarr.Array` (what a plain zarr reader gets);
- reference: the old path, per clip: h5py read of every dataset, video included, and the
  per-batch torch feature code (`bench_preprocess.reference_pass`), counted as one
  window per clip (generous to it: a clip is ~150 frames, about one window). The
  synthetic video is 256 px square by default; the real one is 1408, so on real files
  the reference is slower still.
Target (docs/design.md "Performance targets"): >= 30,000 windows/s of 152 x 294 float32 on one core.

Many-chunk store (`--chunks` per array at `--chunk-frames`, default 4,000 x 64 frames): the
real dataset has ~3,900 chunks of 8,192 frames (~32M frames); small chunks give that chunk
count from ~260k synthetic frames. Side by side: memcpy of the same windows; ours (every chunk
mapped once and kept); the same windows through an evicting cache of 256 maps (the previous
design); windows of one train sequence only (the same chunk size, few chunks), which shows
whether the chunk count itself costs anything; and the one-off cost of mapping every chunk.
With 64-frame chunks a 152-frame window is copied in ~3.4 pieces, with 8,192-frame chunks in
~1.02, so the real dataset reads at least as fast as this store (see BENCHMARKS.md).

Then the data-wait share of CPU training (`train fit`, default model, batch 32,
DataLoader workers), as reported by the trainer itself. Target: < 2% of step time.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from benchmarks.bench_preprocess import reference_pass
from preprocess import synth
from preprocess.build import BuildConfig, build
from preprocess.discover import discover_clip_files
from shared.store import ChunkMemmapArray, FeatureStore, open_store
from train.data import WindowIndex, read_windows

WINDOW_FRAMES = 152
BATCH = 32
TARGET_WINDOWS_PER_S = 30_000


def _burst(read_batch: Callable[[int], object], seconds: float, first_batch: int) -> float:
    """Windows per CPU-second of `read_batch` over about `seconds` of CPU time."""
    n, t0 = 0, time.process_time()
    while time.process_time() - t0 < seconds:
        read_batch(first_batch + n)
        n += 1
    return n * BATCH / (time.process_time() - t0)


def windows_per_s(read_batch: Callable[[int], object], seconds: float, repeats: int = 5) -> float:
    """Median windows per CPU-second over `repeats` bursts of about `seconds / repeats` each."""
    return statistics.median(
        _burst(read_batch, seconds / repeats, r * 1_000_000) for r in range(repeats)
    )


def interleaved_rates(
    readers: dict[str, Callable[[int], object]], seconds: float, repeats: int = 5
) -> dict[str, float]:
    """`windows_per_s` of each reader, with their bursts taken in turns, so a change in the
    shared machine's load hits every reader alike."""
    rates: dict[str, list[float]] = {name: [] for name in readers}
    for r in range(repeats):
        for name, read_batch in readers.items():
            rates[name].append(_burst(read_batch, seconds / repeats, r * 1_000_000))
    return {name: statistics.median(values) for name, values in rates.items()}


def print_rates(title: str, rates: dict[str, float], ours: str) -> None:
    print(f"\n{title:<52} {'windows/s':>11} {'ours is':>10}")
    for name, rate in rates.items():
        print(f"{name:<52} {rate:>11,.0f} {rates[ours] / rate:>9.2f}x")
    verdict = "meets" if rates[ours] >= TARGET_WINDOWS_PER_S else "MISSES"
    print(
        f"target {TARGET_WINDOWS_PER_S:,} windows/s: ours {verdict} it "
        f"({rates[ours] / TARGET_WINDOWS_PER_S:.2f}x)"
    )


def memcpy_reader(store: FeatureStore, index: WindowIndex) -> Callable[[int], None]:
    """Copies of the windows `read_windows` would read, out of one in-memory array."""
    source = np.asarray(store.features[: store.num_frames]).copy()
    out = np.empty((BATCH, WINDOW_FRAMES, source.shape[1]), np.float32)

    def memcpy(i: int) -> None:
        _, first, _ = index.locate(index.sample(0, 0, i, BATCH))
        for b, s in enumerate(first.tolist()):
            out[b] = source[s : s + WINDOW_FRAMES]

    return memcpy


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--recordings", type=int, default=24)
    parser.add_argument("--clips-per-recording", type=int, default=8)
    parser.add_argument(
        "--video-size",
        type=int,
        default=256,
        help="synthetic video side in pixels (real Nymeria: 1408)",
    )
    parser.add_argument("--seconds", type=float, default=3.0, help="timing budget per contender")
    parser.add_argument(
        "--train-steps", type=int, default=12, help="steps of the data-wait measurement (0 skips)"
    )
    parser.add_argument(
        "--chunks",
        type=int,
        default=4000,
        help="chunks per array of the many-chunk store (0 skips)",
    )
    parser.add_argument(
        "--chunk-frames", type=int, default=64, help="frames per chunk of the many-chunk store"
    )
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench_loader_") as tmp:
        _run(args, Path(tmp))
        if args.chunks:
            _many_chunks(args, Path(tmp))


def _run(args: argparse.Namespace, workdir: Path) -> None:
    data, store_path = workdir / "hdf5", workdir / "store.zarr"
    synth.generate_dataset(
        data,
        recordings=args.recordings,
        seed=0,
        clips_per_recording=args.clips_per_recording,
        video_size=args.video_size,
    )
    build(BuildConfig(data=data, out=store_path, scheduler="synchronous"), progress=False)
    store = open_store(store_path)
    zarr_store = open_store(store_path, memory_map=False)
    index = WindowIndex(store.split("train"), WINDOW_FRAMES)
    np.asarray(store.features[: store.num_frames])  # page-cache the store
    print(
        f"store: {store.num_frames} frames, {len(index.sequences)} train sequences, "
        f"{index.num_windows} train windows; "
        f"memory-mapped: {store.is_memory_mapped}"
    )

    memcpy = memcpy_reader(store, index)

    def ours(i: int) -> None:
        read_windows(store, index, index.sample(0, 0, i, BATCH))

    def via_zarr(i: int) -> None:
        read_windows(zarr_store, index, index.sample(0, 0, i, BATCH))

    files = discover_clip_files(data).files

    def reference(i: int) -> None:
        k = i % max(1, len(files) - BATCH)
        reference_pass(data, files[k : k + BATCH])

    rates = {
        **interleaved_rates(
            {"memcpy (ceiling)": memcpy, "ours: read_windows (memmap)": ours}, args.seconds
        ),
        "zarr.Array slicing": windows_per_s(via_zarr, min(args.seconds, 2.0), repeats=3),
        "reference: h5py clip + torch features": windows_per_s(
            reference, min(args.seconds, 3.0), repeats=3
        ),
    }
    print_rates(
        "loader (1 process, batch 32 x 152 x 294 float32)", rates, "ours: read_windows (memmap)"
    )
    if args.train_steps:
        _data_wait(store_path, workdir / "run", args.train_steps)


def _many_chunk_store(args: argparse.Namespace, workdir: Path) -> tuple[Path, WindowIndex]:
    """Builds a store of about `args.chunks` chunks per array; its path and train windows."""
    data, store_path = workdir / "many_hdf5", workdir / "many.zarr"
    recordings, mean_clip_frames = 16, sum(synth.CLIP_FRAMES_RANGE) / 2
    clips = int(1.1 * args.chunks * args.chunk_frames / (recordings * mean_clip_frames)) + 1
    started = time.perf_counter()
    synth.generate_dataset(
        data,
        recordings=recordings,
        seed=1,
        participants=8,
        clips_per_recording=clips,
        video_size=None,
    )
    config = BuildConfig(
        data=data, out=store_path, scheduler="synchronous", chunk_frames=args.chunk_frames
    )
    build(config, progress=False)
    store = open_store(store_path)
    index = WindowIndex(store.split("train"), WINDOW_FRAMES)
    features = store.features
    train_chunks = len(
        {s // features.chunk_frames for r in index.sequences for s in range(r.start, r.stop)}
    )
    print(
        f"\nmany-chunk store ({time.perf_counter() - started:.0f} s to make): "
        f"{store.num_frames} frames in {features.num_chunks} chunks of "
        f"{features.chunk_frames} frames per array ({train_chunks} holding train windows); "
        f"memory-mapped: {store.is_memory_mapped}"
    )
    return store_path, index


def _mapping_cost(features: ChunkMemmapArray) -> None:
    """Prints what mapping every chunk once costs a process, against a read of mapped chunks."""
    rows = np.empty((features.shape[0], *features.row_shape), features.dtype)
    t0 = time.process_time()
    features.read_into(rows, 0)  # maps every chunk (page-cached by the build)
    first = time.process_time() - t0
    t0 = time.process_time()
    features.read_into(rows, 0)
    again = time.process_time() - t0
    print(
        f"mapping every chunk: {1e3 * (first - again):.0f} ms once per process "
        f"({1e6 * (first - again) / features.num_chunks:.0f} us a chunk; "
        f"whole-store read {1e3 * again:.0f} ms)"
    )


def _many_chunks(args: argparse.Namespace, workdir: Path) -> None:
    """The loader on a store with `args.chunks` chunks per array (see the module doc)."""
    store_path, index = _many_chunk_store(args, workdir)
    store = open_store(store_path)
    features = store.features
    _mapping_cost(features)
    evicting = open_store(store_path)
    evicting.features = ChunkMemmapArray(
        features.array_dir,
        features.shape,
        features.chunk_frames,
        features.dtype,
        features.checksum_bytes,
        max_maps=256,
    )
    one = WindowIndex(index.sequences[:1], WINDOW_FRAMES)
    one_chunks = -(-index.sequences[0].length // features.chunk_frames)
    ours = f"ours: {features.num_chunks} chunks, every map kept"
    rates = interleaved_rates(
        {
            "memcpy of the same windows (ceiling)": memcpy_reader(store, index),
            ours: lambda i: read_windows(store, index, index.sample(0, 0, i, BATCH)),
            f"ours, windows within {one_chunks} chunks (1 sequence)": lambda i: read_windows(
                store, one, one.sample(0, 0, i, BATCH)
            ),
        },
        args.seconds,
    )
    rates["previous: evicting cache of 256 maps"] = windows_per_s(
        lambda i: read_windows(evicting, index, index.sample(0, 0, i, BATCH)),
        min(args.seconds, 2.0),
        repeats=3,
    )
    print_rates(
        f"loader at {features.num_chunks} chunks x {features.chunk_frames} frames", rates, ours
    )


def _data_wait(store_path: Path, run: Path, steps: int) -> None:
    """Train the default model for `steps` steps and report the trainer's own data-wait share."""
    cmd = [
        sys.executable,
        "-m",
        "train",
        "fit",
        "--store",
        str(store_path),
        "--out",
        str(run),
        "--steps",
        str(steps),
        "--log-every",
        "1",
        "--val-every",
        str(10 * steps),
        "--val-windows",
        "8",
        "--num-workers",
        "1",
        "--batch-size",
        str(BATCH),
    ]
    subprocess.run(
        cmd, check=True, capture_output=True, env={**os.environ, "PYTHONUNBUFFERED": "1"}
    )
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "perf/data_wait_share" in r][2:]  # skip start-up steps
    wait = statistics.median(r["perf/data_wait_share"] for r in rows)
    rate = statistics.median(r["perf/windows_per_s"] for r in rows)
    print(f"\ntraining on CPU (default model, batch {BATCH}, 1 loader worker, steps 3..{steps}):")
    print(
        f"  median data-wait share {100 * wait:.2f}% of step time (target < 2%), "
        f"{rate:.1f} windows/s trained"
    )


if __name__ == "__main__":
    main()
