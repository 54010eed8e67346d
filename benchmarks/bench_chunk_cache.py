"""Training from a URL through the chunk cache: time to the first batch and windows/s, beside the
same store read locally and beside pulling the whole store first (the previous `train fit
--store URL`), all against moto's S3 server on 127.0.0.1 in one run.

    python -m benchmarks chunk_cache [--recordings 12 --clips-per-recording 30
                                      --chunk-frames 256 --batches 40 --seconds 3]

The training loader itself (`train.data.TrainWindows`, batch 32 x 152 frames, one process, its
read-ahead included) is measured three ways:
- time to first batch (wall clock, from nothing but the URL): the local store; the chunk cache
  cold (a fresh cache: metadata and stats, then the first batch's chunks); warm (a new reader
  over a filled cache: metadata checked again, chunks mapped from the cache); and the full pull
  first (`pull` of the whole store, then the local read: what `train fit --store URL` did
  before the chunk cache). The model's step is left out: the same for every row.
- windows/s while cold: the first `--batches` batches from a fresh cache (wall clock: fetch bound);
- windows/s warm: every train chunk cached and mapped, windows per CPU-second in interleaved
  bursts (`bench_loader.interleaved_rates`: a change in the shared machine's load hits every
  reader alike) for the local store, the store through the cache and the pulled copy.
The fetch rate of the cold phase and the pull rate give the extrapolation to the real store
(39 GB, ~4,000 chunks of 8,192 frames per array; BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from itertools import islice
from pathlib import Path

from benchmarks.bench_loader import interleaved_rates, print_rates
from preprocess import synth
from preprocess.build import BuildConfig, build
from shared.chunk_cache import open_cached_store
from shared.store import FEATURES, FeatureStore, open_store
from shared.transfer import pull, push
from tests.remote_servers import S3_ENV, s3_filesystem, s3_server
from train.data import TrainWindows, WindowIndex

WINDOW_FRAMES = 152
BATCH = 32


def _batches(store: FeatureStore) -> Iterator:
    return iter(TrainWindows(store, "train", WINDOW_FRAMES, BATCH, seed=0))


def _first_batch(open_reader: Callable[[], FeatureStore]) -> tuple[FeatureStore, Iterator, float]:
    """The opened store, its batch stream after the first batch, and the seconds that took."""
    t0 = time.perf_counter()
    store = open_reader()
    stream = _batches(store)
    next(stream)
    return store, stream, time.perf_counter() - t0


def _first_batch_chunks(store: FeatureStore) -> int:
    """Chunks of `features` the first training batch reads."""
    index = WindowIndex(store.split("train"), WINDOW_FRAMES)
    _, first, valid = index.locate(index.sample(0, 0, 0, BATCH))
    C = store.chunk_frames
    return len({i for s, n in zip(first, valid) for i in range(s // C, (s + n - 1) // C + 1)})


def _cached_chunks(cache_dir: Path) -> int:
    return sum(1 for _ in cache_dir.glob(f"*.chunks/{FEATURES}/c/*/0"))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--recordings", type=int, default=12)
    parser.add_argument("--clips-per-recording", type=int, default=30)
    parser.add_argument("--chunk-frames", type=int, default=256)
    parser.add_argument("--batches", type=int, default=40, help="batches of the cold phase")
    parser.add_argument("--seconds", type=float, default=3.0, help="CPU budget per warm reader")
    args = parser.parse_args(argv)
    os.environ.update(S3_ENV)
    with tempfile.TemporaryDirectory(prefix="bench_chunk_cache_") as tmp:
        _run(args, Path(tmp))


def _build_store(args: argparse.Namespace, workdir: Path) -> tuple[Path, int]:
    """The benchmark's store, built from synthetic clips, and its size in bytes (printed)."""
    data, store_path = workdir / "hdf5", workdir / "store.zarr"
    synth.generate_dataset(
        data,
        recordings=args.recordings,
        seed=0,
        participants=min(6, args.recordings),
        clips_per_recording=args.clips_per_recording,
        video_size=None,
    )
    config = BuildConfig(
        data=data, out=store_path, scheduler="synchronous", chunk_frames=args.chunk_frames
    )
    build(config, progress=False)
    local = open_store(store_path)
    store_bytes = sum(p.stat().st_size for p in store_path.rglob("*") if p.is_file())
    chunk_bytes = local.features.chunk_nbytes()
    print(
        f"store: {local.num_frames:,} frames, {local.features.num_chunks} chunks per array of "
        f"{args.chunk_frames} frames ({chunk_bytes / 1e6:.2f} MB each), "
        f"{store_bytes / 1e6:.0f} MB in all"
    )
    return store_path, store_bytes


def _run(args: argparse.Namespace, workdir: Path) -> None:
    store_path, store_bytes = _build_store(args, workdir)
    local = open_store(store_path)
    chunk_bytes = local.features.chunk_nbytes()
    with s3_server() as options:
        s3_filesystem(options).mkdir("team")
        url, cache, pulled = "s3://team/store.zarr", workdir / "cache", workdir / "pulled.zarr"
        push(store_path, url, storage_options=options, progress=False)  # a published version

        def pull_then_open() -> FeatureStore:
            pull(url, pulled, storage_options=options, progress=False)
            return open_store(pulled)

        first = {"local (memory-mapped)": _first_batch(lambda: open_store(store_path))[2]}
        _, stream, first["chunk cache, cold"] = _first_batch(
            lambda: open_cached_store(url, cache, options)
        )
        fetched_at_first = _cached_chunks(cache)
        t0 = time.perf_counter()
        for _ in islice(stream, args.batches - 1):
            pass
        cold_s = time.perf_counter() - t0
        cold_chunks = _cached_chunks(cache)
        warm, _, first["chunk cache, warm"] = _first_batch(
            lambda: open_cached_store(url, cache, options)
        )
        pulled_store, _, first["full pull first (previous)"] = _first_batch(pull_then_open)

    print(f"\n{'time to first batch (from the URL)':<40} {'seconds':>8} {'vs full pull':>13}")
    for name, seconds in first.items():
        ratio = first["full pull first (previous)"] / seconds
        print(f"{name:<40} {seconds:>8.2f} {ratio:>12.1f}x")
    print(
        f"the first batch reads {_first_batch_chunks(local)} chunks of `features`; "
        f"{fetched_at_first} of {local.features.num_chunks} were in the cache when it was "
        f"returned"
    )
    fetched_bytes = (cold_chunks - fetched_at_first) * chunk_bytes
    print(
        f"\ncold phase: batches 2-{args.batches} at {(args.batches - 1) * BATCH / cold_s:,.0f} "
        f"windows/s (wall clock), {cold_chunks} chunks cached by then; fetch "
        f"{fetched_bytes / cold_s / 1e6:.1f} MB/s; full pull "
        f"{store_bytes / first['full pull first (previous)'] / 1e6:.1f} MB/s "
        f"(verification included), both on loopback"
    )

    _warm_rates(
        {"local (memory-mapped)": local, "chunk cache, warm": warm, "pulled copy": pulled_store},
        args.seconds,
    )


def _warm_rates(stores: dict[str, FeatureStore], seconds: float) -> None:
    """Loader rates of `stores` once every train chunk is cached and mapped, interleaved."""
    for store in stores.values():
        for r in store.split("train"):
            store.read_features(r.start, r.stop)
    streams = {name: _batches(store) for name, store in stores.items()}
    rates = interleaved_rates(
        {name: (lambda _i, s=s: next(s)) for name, s in streams.items()}, seconds
    )
    print_rates("warm loader (1 process, CPU time)", rates, "chunk cache, warm")


if __name__ == "__main__":
    main()
