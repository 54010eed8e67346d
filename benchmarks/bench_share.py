"""Push and pull throughput against S3 (moto on 127.0.0.1), beside s3fs's own put/get.

    python -m benchmarks share [--recordings 10 --clips-per-recording 30 --chunk-frames 128
                                --rounds 3]

A synthetic store is built with small chunks, so it has >= 1,000 chunk objects (the cost of a
copy of the real store is dominated by its ~12,000 objects of ~9.6 MB, 3 arrays x ~4,000
chunks). Each round, against one moto server:

- `push` (ours: read, crc32c, upload in parallel, one listing, manifest, pointer) to a fresh
  prefix, beside `s3fs.S3FileSystem.put(STORE, prefix, recursive=True)` of the same directory;
- `pull` (ours: pointer, manifest, every object checked as it arrives, staging, swap) into a
  fresh directory, beside `s3fs.get(prefix, DIR, recursive=True)`;
- an identical re-push (ours only: the no-op that reads the pointer and the manifest).

`aws s3 sync` is used too when the `aws` command exists. Medians of the rounds are printed as
seconds, MB/s and objects/s, with the ratio ours / baseline.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from preprocess import synth
from preprocess.build import BuildConfig, build
from shared.transfer import pull, push
from tests.remote_servers import S3_ENV, s3_filesystem, s3_server

REAL_BYTES = 39e9
REAL_OBJECTS = 3 * 4_000


def _timed(run: Callable[[], object]) -> float:
    started = time.perf_counter()
    run()
    return time.perf_counter() - started


def _store_files(store: Path) -> tuple[int, int]:
    files = [p for p in store.rglob("*") if p.is_file()]
    return len(files), sum(p.stat().st_size for p in files)


def _aws_sync(options: dict, source: str, target: str) -> None:
    subprocess.run(
        [
            "aws",
            "s3",
            "sync",
            source,
            target,
            "--endpoint-url",
            options["endpoint_url"],
            "--only-show-errors",
        ],
        check=True,
        env={**os.environ, **S3_ENV},
    )


def _contenders(
    i: int, store: Path, options: dict, fs: object, workdir: Path
) -> dict[str, Callable[[], object]]:
    """The copies of round `i`, each to its own prefix or directory."""
    ours, theirs = f"s3://bench/ours-{i}", f"bench/s3fs-{i}"
    rows = {
        "push (ours)": lambda: push(store, ours, storage_options=options, progress=False),
        "put (s3fs)": lambda: fs.put(str(store), theirs, recursive=True),
        "re-push, published (ours)": lambda: push(
            store, ours, storage_options=options, progress=False
        ),
        "pull (ours)": lambda: pull(
            ours, workdir / f"pull-{i}", storage_options=options, progress=False
        ),
        "get (s3fs)": lambda: fs.get(theirs, str(workdir / f"get-{i}"), recursive=True),
    }
    if shutil.which("aws") is not None:
        aws = f"s3://bench/aws-{i}"
        rows["sync up (aws cli)"] = lambda: _aws_sync(options, str(store), aws)
        rows["sync down (aws cli)"] = lambda: _aws_sync(options, aws, str(workdir / f"aws-{i}"))
    return rows


def _rounds(args: argparse.Namespace, store: Path, workdir: Path) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {}
    with s3_server() as options:
        fs = s3_filesystem(options)
        fs.mkdir("bench")
        for i in range(args.rounds):
            for name, run in _contenders(i, store, options, fs, workdir).items():
                times.setdefault(name, []).append(_timed(run))
                print(f"  round {i}: {name} {times[name][-1]:.2f} s", flush=True)
    return times


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--recordings", type=int, default=10)
    parser.add_argument("--clips-per-recording", type=int, default=30)
    parser.add_argument("--chunk-frames", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    for key, value in S3_ENV.items():
        os.environ[key] = value
    with tempfile.TemporaryDirectory(prefix="bench_share_") as tmp:
        workdir = Path(tmp)
        synth.generate_dataset(
            workdir / "hdf5",
            recordings=args.recordings,
            seed=3,
            clips_per_recording=args.clips_per_recording,
            video_size=None,
        )
        store = workdir / "store.zarr"
        build(
            BuildConfig(
                data=workdir / "hdf5",
                out=store,
                scheduler="synchronous",
                chunk_frames=args.chunk_frames,
            ),
            progress=False,
        )
        objects, nbytes = _store_files(store)
        print(
            f"store: {objects} objects, {nbytes / 1e6:.1f} MB, chunks of {args.chunk_frames} "
            f"frames; {args.rounds} rounds against moto on 127.0.0.1",
            flush=True,
        )
        times = _rounds(args, store, workdir)
    medians = {name: statistics.median(t) for name, t in times.items()}
    print("\n| copy | median s | MB/s | objects/s |\n|---|---|---|---|")
    for name, seconds in medians.items():
        print(
            f"| {name} | {seconds:.2f} | {nbytes / 1e6 / seconds:.1f} | {objects / seconds:.0f} |"
        )
    pairs = [
        ("push (ours)", "put (s3fs)"),
        ("pull (ours)", "get (s3fs)"),
        ("push (ours)", "sync up (aws cli)"),
        ("pull (ours)", "sync down (aws cli)"),
    ]
    for ours, theirs in pairs:
        if theirs in medians:
            print(f"{ours} / {theirs}: {medians[theirs] / medians[ours]:.2f}x the speed")
    push_s, pull_s = (medians[n] / objects * REAL_OBJECTS for n in ("push (ours)", "pull (ours)"))
    print(
        f"extrapolated to the real store ({REAL_OBJECTS} objects, {REAL_BYTES / 1e9:.0f} GB) at "
        f"this endpoint's per-object cost, bandwidth aside: push {push_s:.0f} s, pull "
        f"{pull_s:.0f} s"
    )


if __name__ == "__main__":
    main()
