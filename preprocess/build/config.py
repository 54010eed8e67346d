"""The options of a build (`BuildConfig`: what it computes, how it runs, what it does with an
earlier build; the first two recorded in the store) and what derives from them alone:
defaults, the statistics stride, the chunk compression, the executor described."""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Literal

from preprocess.executor import (
    CONNECT_TIMEOUT_S,
    DEFAULT_WORKER_TIMEOUT_S,
    SYNCHRONOUS,
    default_workers,
)
from preprocess.read_clip import DEFAULT_ROTATION_ATOL
from preprocess.split import DEFAULT_FRACTIONS, check_fractions
from preprocess.stats import DEFAULT_STD_FLOOR, DEFAULT_WINDOW_FRAMES, default_stride
from preprocess.stitch import DEFAULT_MAX_FILL_FRAMES, STITCH_TOLERANCE_PERIODS

DEFAULT_CHUNK_FRAMES = 8192
"""Frames per chunk of every frame array (features: 8192 x 294 x 4 B = 9.6 MB per chunk file).
From benchmarks/bench_preprocess.py (BENCHMARKS.md): memory-mapped 152-frame window
reads run at the same speed (within noise) for 1k-32k-frame chunks, build time is flat up to 8k
and grows at 32k; 8192 keeps the windows that straddle a chunk boundary (the only ones the
reader must copy) at 1.8%, moves ~10 MB objects when the store is shared remotely, and keeps
the write buffer small."""
Compression = Literal["none", "zstd"]
COMPRESSIONS: tuple[str, ...] = ("none", "zstd")
ZSTD_LEVEL = 3


def zstd_level(compression: str) -> int | None:
    return ZSTD_LEVEL if compression == "zstd" else None


@dataclass(frozen=True)
class BuildSettings:
    """What a build computes: the `[build]` table of a config file. Recorded in the store's
    `build_config` attribute, as is `BuildRuntime`."""

    data: Path
    """Folder searched recursively (following links once) for `*.h5` clip files."""
    out: Path
    """Store to write (a local directory)."""
    fps: float | None = None
    """Resample every sequence to this rate (slerp rotations, linear positions); unset keeps the
    source rate (detected), and clips at another rate are not used."""
    max_fill_frames: int = DEFAULT_MAX_FILL_FRAMES
    """Longest hole (missing frames, inside a clip or between two) filled by interpolation;
    a longer one splits the sequence."""
    split: tuple[float, float, float] = DEFAULT_FRACTIONS
    """Fractions of participants in train, val, test."""
    split_seed: int = 0
    """Seed of the participant shuffle behind the split."""
    chunk_frames: int = DEFAULT_CHUNK_FRAMES
    """Frames per chunk of `features`, `timestamp_ns`, `contact`."""
    compression: Compression = "none"
    """"none": raw chunks the trainer memory-maps; "zstd" (level 3) to share over a network."""
    window_frames: int = DEFAULT_WINDOW_FRAMES
    """Length of the canonical windows the stats are taken over (the training window)."""
    stats_stride: int | None = None
    """Frames between statistics windows (default: window_frames // 4; see preprocess.stats)."""
    std_floor: float = DEFAULT_STD_FLOOR
    """Smallest std stored, for near-constant dimensions."""
    stitch_tolerance: float = STITCH_TOLERANCE_PERIODS
    """Timestamp slack, in frame periods, when deciding contiguity and overlap."""
    rotation_atol: float = DEFAULT_ROTATION_ATOL
    """Tolerance on |R^T R - I| and |det R - 1| for a rotation matrix to be accepted."""

    def __post_init__(self) -> None:
        if self.fps is not None and not self.fps > 0:
            raise ValueError(f"fps must be positive, found {self.fps}")
        check_fractions(self.split)
        if self.max_fill_frames < 0:
            raise ValueError(f"max_fill_frames must be >= 0, found {self.max_fill_frames}")
        if self.chunk_frames < 1:
            raise ValueError(f"chunk_frames must be >= 1, found {self.chunk_frames}")
        if self.compression not in COMPRESSIONS:
            raise ValueError(
                f"compression must be one of {COMPRESSIONS}, found {self.compression!r}"
            )
        if self.window_frames < 2:
            raise ValueError(f"window_frames must be >= 2, found {self.window_frames}")
        if self.stats_stride is not None and self.stats_stride < 1:
            raise ValueError(f"stats_stride must be >= 1, found {self.stats_stride}")
        if not self.std_floor > 0:
            raise ValueError(f"std_floor must be positive, found {self.std_floor}")
        if not 0 < self.stitch_tolerance < 1:
            raise ValueError(f"stitch_tolerance must be in (0, 1), found {self.stitch_tolerance}")
        if not self.rotation_atol > 0:
            raise ValueError(f"rotation_atol must be positive, found {self.rotation_atol}")


@dataclass(frozen=True)
class BuildRuntime:
    """How a build runs: its executor, timeouts and strictness, the `[runtime]` table of a
    config file. None of these changes what a store holds."""

    workers: int | None = None
    """Worker processes of the local Dask cluster (default: CPU cores)."""
    scheduler: str | None = None
    """Unset: start a local Dask cluster; "synchronous": a plain loop in this process; else the
    address of a running Dask scheduler."""
    worker_timeout: float = DEFAULT_WORKER_TIMEOUT_S
    """Seconds a Dask cluster may have no worker before the build fails."""
    connect_timeout: float = CONNECT_TIMEOUT_S
    """Seconds to reach the Dask scheduler given with --scheduler ADDRESS."""
    strict: bool = False
    """Fail (publish nothing) if any file is unusable."""

    def __post_init__(self) -> None:
        if self.workers is not None and self.workers < 1:
            raise ValueError(f"workers must be >= 1, found {self.workers}")
        for name in ("worker_timeout", "connect_timeout"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, found {getattr(self, name)}")


@dataclass(frozen=True)
class BuildStart:
    """What this build does with an earlier build of --out: options of the command alone (like
    `train fit --resume`), in no config file and not recorded, so a resumed build records the
    same config (and is byte-identical) as an uninterrupted one."""

    resume: bool = False
    """Continue an interrupted build of --out, reusing its finished per-file results (with
    --overwrite: one that replaces an existing store)."""
    overwrite: bool = False
    """Replace an existing store at --out; without --resume, an interrupted build is discarded."""


# The order in which stores have always recorded `build_config` (one dataclass before the
# sections): kept so that a store is byte-identical whichever version built it. Fields added
# later follow, in section order.
RECORDED_ORDER = (
    "data", "out", "workers", "scheduler", "worker_timeout", "connect_timeout", "fps",
    "max_fill_frames", "split", "split_seed", "chunk_frames", "compression", "window_frames",
    "stats_stride", "std_floor", "stitch_tolerance", "rotation_atol", "strict",
)  # fmt: skip


@dataclass(frozen=True)
class BuildConfig(BuildStart, BuildRuntime, BuildSettings):
    """Every option of a build: the config sections `BuildSettings` and `BuildRuntime`
    (`preprocess build --config FILE`), recorded in the store's `build_config` attribute, and
    `BuildStart`."""

    def __post_init__(self) -> None:
        BuildSettings.__post_init__(self)
        BuildRuntime.__post_init__(self)

    @classmethod
    def of(cls, *parts: BuildSettings | BuildRuntime | BuildStart) -> BuildConfig:
        """The config made of its parts (the command line's sections and start)."""
        return cls(**{name: value for part in parts for name, value in vars(part).items()})

    @property
    def stride_frames(self) -> int:
        return self.stats_stride or default_stride(self.window_frames)

    def to_json(self) -> dict:
        """The fields of the sections by name, with defaults resolved to the values used."""
        values = {
            f.name: getattr(self, f.name)
            for section in (BuildSettings, BuildRuntime)
            for f in fields(section)
        }
        values["data"], values["out"] = str(self.data), str(self.out)
        if self.scheduler is None:
            values["workers"] = self.workers or default_workers()
        values["split"] = list(self.split)
        values["stats_stride"] = self.stride_frames
        first = [name for name in RECORDED_ORDER if name in values]
        return {name: values[name] for name in [*first, *(k for k in values if k not in first)]}


def describe_executor(config: BuildConfig) -> str:
    if config.scheduler == SYNCHRONOUS:
        return "synchronous (plain loop)"
    if config.scheduler is None:
        return f"local Dask cluster, {config.workers or default_workers()} processes x 1 thread"
    return f"Dask scheduler {config.scheduler}"
