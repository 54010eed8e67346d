"""`make bench`: every benchmark in turn, each printing its numbers beside its baseline."""

from __future__ import annotations

import sys

from benchmarks import (
    bench_chunk_cache,
    bench_footprint,
    bench_fuzz,
    bench_loader,
    bench_preprocess,
    bench_quality,
    bench_share,
    bench_train_step,
)

BENCHMARKS = {
    "preprocess": bench_preprocess.main,
    "loader": bench_loader.main,
    "train_step": bench_train_step.main,
    "footprint": bench_footprint.main,
    "quality": bench_quality.main,
    "fuzz": bench_fuzz.main,
    "share": bench_share.main,
    "chunk_cache": bench_chunk_cache.main,
}


def main() -> None:
    """`python -m benchmarks [NAME ...]`, or `python -m benchmarks NAME --option ...` to pass
    options to one benchmark (each has `--help`)."""
    args = sys.argv[1:]
    if args and args[0] in BENCHMARKS and any(a.startswith("-") for a in args[1:]):
        selected, options = [args[0]], args[1:]
    else:
        selected, options = args or list(BENCHMARKS), []
    for name in selected:
        if name not in BENCHMARKS:
            raise SystemExit(f"unknown benchmark {name!r}; choose from {sorted(BENCHMARKS)}")
        print(f"\n===== {name} =====", flush=True)
        BENCHMARKS[name](options)


if __name__ == "__main__":
    main()
