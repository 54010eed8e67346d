"""`make bench`: every benchmark in turn, each printing its numbers beside its baseline."""

from __future__ import annotations

import sys

from benchmarks import bench_footprint, bench_loader, bench_preprocess, bench_train_step

BENCHMARKS = {
    "preprocess": bench_preprocess.main,
    "loader": bench_loader.main,
    "train_step": bench_train_step.main,
    "footprint": bench_footprint.main,
}


def main() -> None:
    selected = sys.argv[1:] or list(BENCHMARKS)
    for name in selected:
        if name not in BENCHMARKS:
            raise SystemExit(f"unknown benchmark {name!r}; choose from {sorted(BENCHMARKS)}")
        print(f"\n===== {name} =====", flush=True)
        BENCHMARKS[name]([])


if __name__ == "__main__":
    main()
