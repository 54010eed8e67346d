"""Build a feature store (schema v2, see shared/store.py) from a tree of Nymeria clip files.

Stages, each restartable:
1. read: every clip file under DATA (`preprocess.discover`: links followed once, every file
   not read listed) -> `read_clip` on the executor (a pure function of the file; on Dask, a
   few files per task); each result is persisted in the build directory as it arrives. No
   file can stop the build: an unusable one becomes a problem record.
2. plan: detect the frame period (median over all clips); a clip at another rate is
   resampled with `--fps` and otherwise recorded as a problem; stitch clips into sequences,
   filling holes of up to `--max-fill-frames` and splitting at longer ones (preprocess.stitch);
   assign splits by participant (preprocess.split). The result is a `BuildPlan`, a printable
   value: `preprocess build --plan` (`plan_build`) stops here, having written nothing.
3. compute: per sequence on the executor, `compute_sequence` (interpolate filled holes or
   resample, features on the stitched motion, moments of canonical windows for train
   sequences); results are written in sequence order, whole chunks at a time, and the moments
   merged in that fixed order. Progress is recorded as chunks become durable
   (preprocess.progress), and the per-file results of sequences wholly written are deleted.
4. publish: stats, sequence table and attributes are written, `complete=True` last; the new
   store's identity is recorded in STORE.build/publishing, and the finished store is
   renamed into place (exchanged atomically with an old one: `shared.zarr_output.publish`).

Where things are, for `--out STORE`:
    STORE.lock            the lock (pid + host); one build per STORE at a time
    STORE.build/clips/    per-file results (`preprocess.clip_cache`) and their index
    STORE.build/work.json settings the per-file results depend on
    STORE.build/progress.record  how far stage 3 got (`preprocess.progress`)
    STORE.build/store.zarr the store being written (complete=False until the end)
    STORE.build/publishing the store being published: fingerprint and creation time (stage 4)
    STORE                 the published store; replaced only with --overwrite, by renaming the
                          new store into place after it is complete

A killed build therefore never leaves anything at STORE that looks complete; `--resume` (with
`--overwrite` too when it replaces a store) reuses every finished per-file result and every
durable chunk, and redoes the rest, which is deterministic (sorted inputs, fixed merge order),
so the result is byte-identical to an uninterrupted build. A build killed while publishing is
finished by the next build of STORE, whatever its options, before anything else
(`_recover_publish`): a reader finds the old store or the new one at STORE throughout (where
the system cannot exchange two directories atomically, STORE is missing between two renames
until then). `--resume` of a build that is finished says so and does nothing.

Failures of the environment stop the build with one line and leave STORE.build/ for `--resume`:
a full disk (naming the path and roughly the space needed; temp files are removed), a Dask
scheduler that cannot be reached (checked before anything is written), a cluster without
workers for `worker_timeout` seconds, a task whose workers keep dying, a worker that cannot see
DATA or STORE.build/ at the paths this process uses.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import shutil
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import zarr
from tqdm import tqdm

import shared.store
from preprocess.clip_cache import CachedClip, ClipCache, NotVisibleOnWorker, read_and_persist
from preprocess.discover import Discovery, Ignored, discover_clip_files
from preprocess.executor import (
    CONNECT_TIMEOUT_S,
    DEFAULT_WORKER_TIMEOUT_S,
    SYNCHRONOUS,
    ClusterError,
    Executor,
    default_workers,
    open_executor,
)
from preprocess.lock import BuildLock, LockError
from preprocess.progress import (
    FrameProgress,
    fsync_chunks,
    load_progress,
    plan_digest,
    save_progress,
)
from preprocess.read_clip import DEFAULT_ROTATION_ATOL, Discrepancy, Problem
from preprocess.sequence import StatsWindows, compute_planned_sequence, stored_timestamps
from preprocess.split import DEFAULT_FRACTIONS, assign_splits, check_fractions
from preprocess.stats import DEFAULT_STD_FLOOR, DEFAULT_WINDOW_FRAMES, default_stride, window_starts
from preprocess.stitch import (
    DEFAULT_MAX_FILL_FRAMES,
    STITCH_TOLERANCE_PERIODS,
    ClipTimeline,
    Piece,
    SequencePlan,
    StitchReport,
    clip_period_ns,
    detect_frame_period_ns,
    hole_discrepancies,
    is_other_rate,
    plan_sequences,
)
from shared.atomic import atomic_path
from shared.chunked_writer import ChunkedRowWriter
from shared.diskspace import disk_full_error, format_bytes
from shared.layout import FEATURE_DIM, layout_description
from shared.moments import Moments
from shared.store import ATTR_COMPLETE, ATTR_CREATED, ATTR_FPS, ATTR_SPLIT, ATTR_WINDOW_FRAMES
from shared.store.write import (
    DestinationExistsError,
    check_destination,
    mark_complete,
    provenance_attrs,
    publish,
    utc_now,
    write_table,
)

logger = logging.getLogger(__name__)

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
FPS_DECIMALS = 4


class BuildError(RuntimeError):
    """The build cannot go on (or, with --strict, must not publish); says what to do."""

    def __init__(self, message: str, problems: Sequence[Problem] = ()) -> None:
        super().__init__(message)
        self.problems = tuple(problems)


class AlreadyBuilt(BuildError):
    """`--resume` found nothing to resume: the store is published (not a failure)."""


@dataclass(frozen=True)
class BuildConfig:
    """Every option of a build; recorded in the store's `build_config` attribute."""

    data: Path
    """Folder searched recursively (following links once) for `*.h5` clip files."""
    out: Path
    """Store to write (a local directory)."""
    workers: int | None = None
    """Worker processes of the local Dask cluster (default: CPU cores)."""
    scheduler: str | None = None
    """Unset: start a local Dask cluster; "synchronous": a plain loop in this process; else the
    address of a running Dask scheduler."""
    worker_timeout: float = DEFAULT_WORKER_TIMEOUT_S
    """Seconds a Dask cluster may have no worker before the build fails."""
    connect_timeout: float = CONNECT_TIMEOUT_S
    """Seconds to reach the Dask scheduler given with --scheduler ADDRESS."""
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
    resume: bool = False
    """Continue an interrupted build of --out, reusing its finished per-file results (with
    --overwrite: one that replaces an existing store)."""
    overwrite: bool = False
    """Replace an existing store at --out; without --resume, an interrupted build is discarded."""
    strict: bool = False
    """Fail (publish nothing) if any file is unusable."""

    def __post_init__(self) -> None:
        if self.workers is not None and self.workers < 1:
            raise ValueError(f"workers must be >= 1, found {self.workers}")
        for name in ("worker_timeout", "connect_timeout"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, found {getattr(self, name)}")
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

    @property
    def stride_frames(self) -> int:
        return self.stats_stride or default_stride(self.window_frames)

    def to_json(self) -> dict:
        """Every option by name, with defaults resolved to the values used."""
        values = asdict(self)
        values["data"], values["out"] = str(self.data), str(self.out)
        if self.scheduler is None:
            values["workers"] = self.workers or default_workers()
        values["split"] = list(self.split)
        values["stats_stride"] = self.stride_frames
        # How this run met an earlier one, not what it builds: a resumed build records the
        # same config (and is byte-identical) as an uninterrupted one.
        del values["resume"], values["overwrite"]
        return values


@dataclass(frozen=True)
class BuildPaths:
    out: Path

    @property
    def lock(self) -> Path:
        return self.out.with_name(self.out.name + ".lock")

    @property
    def build_dir(self) -> Path:
        return self.out.with_name(self.out.name + ".build")

    @property
    def clips(self) -> Path:
        return self.build_dir / "clips"

    @property
    def work_json(self) -> Path:
        return self.build_dir / "work.json"

    @property
    def staging(self) -> Path:
        return self.build_dir / "store.zarr"

    @property
    def progress(self) -> Path:
        return self.build_dir / "progress.record"

    @property
    def publishing(self) -> Path:
        return self.build_dir / "publishing"


@dataclass(frozen=True)
class BuildSummary:
    store: Path
    files_found: int
    files_reused: int  # per-file results taken over from an interrupted build
    files_used: int
    problems: tuple[Problem, ...]
    discrepancies: tuple[Discrepancy, ...]  # of used files: recorded, not fatal
    ignored: tuple[Ignored, ...]  # candidates under DATA that were not read
    other_files: Mapping[str, int]  # files that are no candidates, by extension
    sequences: int
    frames: int
    fps: float
    source_fps: float
    stitch: StitchReport
    split_participants: Mapping[str, int]
    split_frames: Mapping[str, int]
    seconds: float
    read_frames_per_s: float = field(default=0.0)


def build(config: BuildConfig, progress: bool = True) -> BuildSummary:
    """Run a whole build (see module doc). Raises BuildError when it cannot or must not publish."""
    started = time.perf_counter()
    data, paths = _data_dir(config), BuildPaths(Path(config.out).absolute())
    try:
        with BuildLock(paths.lock, take_over_stale=config.resume or config.overwrite):
            plan, read = _build_locked(config, data, paths, progress)
    except LockError as error:
        raise BuildError(str(error)) from None
    return BuildSummary(
        store=paths.out,
        files_found=plan.files_found,
        files_reused=read.reused,
        files_used=len(plan.clips),
        problems=plan.problems,
        discrepancies=plan.discrepancies,
        ignored=tuple(plan.discovery.ignored),
        other_files=plan.discovery.other_files,
        sequences=len(plan.sequences),
        frames=plan.num_frames,
        fps=plan.fps,
        source_fps=plan.source_fps,
        stitch=plan.stitch,
        split_participants=plan.split_participants,
        split_frames=plan.split_frames,
        seconds=time.perf_counter() - started,
        read_frames_per_s=read.frames_per_s,
    )


def _build_locked(
    config: BuildConfig, data: Path, paths: BuildPaths, progress: bool
) -> tuple[BuildPlan, ReadStage]:
    """The stages, with the lock held; environment failures become one-line BuildErrors."""
    space = _SpaceEstimate(config.chunk_frames)
    try:
        _check_resumable(paths, config, finished=_recover_publish(paths))
        work = _check_existing(paths, config)
        discovery = _discover(data)
        space.files = len(discovery.files)
        with _open_executor(config) as executor:
            _prepare_build_dir(paths, config, work)  # only once the executor is up
            results = ClipCache(paths.clips)
            read = _read_stage(data, discovery.files, results, executor, config, progress, space)
            plan = _plan(config, data, discovery, read.entries, config.strict)
            space.planned_frames = plan.num_frames
            _write_store(plan, paths, results, executor, progress)
        _publish(paths, config)
    except ClusterError as error:
        raise BuildError(f"{error}{_resume_hint(paths)}") from None
    except NotVisibleOnWorker as error:
        raise BuildError(_not_visible_message(error, data, paths)) from None
    except (OSError, RuntimeError) as error:
        full = disk_full_error(
            error, paths.build_dir, space.needed_bytes(paths.build_dir),
            f"building {paths.out}", _disk_full_advice(paths, config),
        )  # fmt: skip
        if full is None:
            raise
        raise BuildError(str(full)) from error
    return plan, read


def plan_build(config: BuildConfig, progress: bool = True) -> BuildPlan:
    """Stages 1 and 2 only: every clip file is read (on the executor the build would use) and
    the store planned; nothing is written (no lock, no build directory, no per-file results,
    no store). `print(plan_build(config))` is `preprocess build --plan`."""
    data = _data_dir(config)
    discovery = _discover(data)
    try:
        with _open_executor(config) as executor:
            space = _SpaceEstimate(config.chunk_frames)
            read = _read_stage(data, discovery.files, None, executor, config, progress, space)
    except ClusterError as error:
        raise BuildError(str(error)) from None
    except NotVisibleOnWorker as error:
        raise BuildError(_not_visible_message(error, data, None)) from None
    return _plan(config, data, discovery, read.entries, strict=False)


def _data_dir(config: BuildConfig) -> Path:
    data = Path(config.data).resolve()
    if not data.is_dir():
        raise BuildError(f"DATA must be a directory of clip files, found {data}")
    return data


def _discover(data: Path) -> Discovery:
    discovery = discover_clip_files(data)
    if not discovery.files:
        raise BuildError(f"no *.h5 files under {data}{_describe_ignored(discovery)}")
    return discovery


def _open_executor(config: BuildConfig) -> AbstractContextManager[Executor]:
    return open_executor(
        config.scheduler, config.workers, config.worker_timeout, config.connect_timeout
    )


def _resume_hint(paths: BuildPaths) -> str:
    if paths.build_dir.exists():
        return f"; finished work is kept in {paths.build_dir} for --resume"
    return ""


def _not_visible_message(error: NotVisibleOnWorker, data: Path, paths: BuildPaths | None) -> str:
    """`paths` None: a plan (nothing to resume)."""
    again = "rerun with --resume" if paths is not None else "run it again"
    here = Path(error.path).exists()
    if not here:
        return f"{error.path} disappeared during the build; {again} (the file list is taken again)"
    on_data = paths is None or Path(error.path).is_relative_to(data)
    shared_dir, where = ("DATA", data) if on_data else (f"{paths.build_dir}", paths.build_dir)
    return (
        f"a Dask worker cannot see a file this process can: {error}. Workers must see "
        f"{shared_dir} at the same path ({where}): mount it there on every worker host, then "
        f"{again}"
    )


def _disk_full_advice(paths: BuildPaths, config: BuildConfig) -> str:
    kept = f"{paths.out} is untouched" if paths.out.exists() else "nothing was published"
    again = "--overwrite --resume" if paths.out.exists() and config.overwrite else "--resume"
    return (
        f"{kept}; temporary files were removed and the finished work stays in "
        f"{paths.build_dir}: free space, then rerun with {again}"
    )


# Bytes per frame of the raw store: features (294 float32), timestamp (int64), contact (4
# float32); the per-file results of float32 source clips take about as much.
STORE_BYTES_PER_FRAME = FEATURE_DIM * 4 + 8 + shared.store.NUM_CONTACTS * 4


@dataclass
class _SpaceEstimate:
    """Rough disk needs of a build, refined as it learns the data (for disk-full messages)."""

    chunk_frames: int
    files: int = 0
    files_read: int = 0
    frames_read: int = 0
    planned_frames: int | None = None

    def needed_bytes(self, build_dir: Path) -> int | None:
        """Bytes still to be written at the peak. Per-file results are deleted as the store
        grows, so the peak is about one store's worth (or one set of results) in all."""
        if self.planned_frames is not None:
            frames = self.planned_frames
        elif self.files_read:
            frames = self.frames_read * self.files // self.files_read
        else:
            return None
        used = sum(f.stat().st_size for f in build_dir.rglob("*") if f.is_file())
        return max(frames * STORE_BYTES_PER_FRAME - used, self.chunk_frames * STORE_BYTES_PER_FRAME)


def _describe_ignored(discovery: Discovery) -> str:
    """'; not read: ...' for an error message, or ''."""
    if not discovery.ignored:
        return ""
    listed = "; ".join(f"{i.path} ({i.reason})" for i in discovery.ignored[:5])
    more = len(discovery.ignored) - 5
    return f"; not read: {listed}" + (f" and {more} more" if more > 0 else "")


def _check_frame_rates(
    usable: list[CachedClip], config: BuildConfig
) -> tuple[float | None, list[CachedClip], list[Problem]]:
    """The dataset's frame period (median step over all usable clips), the clips the build
    uses, and a problem for each clip at another rate when there is no `--fps` to resample it."""
    if not usable:
        return None, [], []
    try:
        period_ns = detect_frame_period_ns([e.timestamp_ns for e in usable])
    except ValueError as error:
        raise BuildError(f"{error} (all {len(usable)} usable clips have a single frame)") from None
    if config.fps is not None:
        return period_ns, usable, []
    kept, problems = [], []
    for entry in usable:
        own_ns = clip_period_ns(entry.timestamp_ns, period_ns)
        if not is_other_rate(own_ns, period_ns):
            kept.append(entry)
            continue
        problems.append(
            Problem(
                entry.file,
                "frame_rate",
                f"{entry.file}: dataset 'timestamp_ns': the clip runs at {1e9 / own_ns:.4g} fps "
                f"(median step {own_ns:.0f} ns), the other clips at {1e9 / period_ns:.4g} fps; "
                f"pass --fps to resample every clip to one rate",
                "timestamp_ns",
            )
        )
    return period_ns, kept, problems


def _check_existing(paths: BuildPaths, config: BuildConfig) -> dict:
    """Check what exists at STORE and in the build directory against the options (nothing is
    changed on disk); returns the settings the per-file results depend on."""
    out = paths.out
    resuming = " --resume" if paths.build_dir.exists() else ""
    advice = (
        f"pass --overwrite{resuming} to replace it (it stays readable until the new one is "
        f"complete)"
    )
    try:
        check_destination(out, config.overwrite, advice)
    except DestinationExistsError as error:
        raise BuildError(str(error)) from None
    work = {
        "data": str(Path(config.data).resolve()),
        "rotation_atol": config.rotation_atol,
    }
    if paths.build_dir.exists():
        if config.resume:
            recorded = _read_json(paths.work_json)
            if recorded is not None and recorded != work:
                raise BuildError(
                    f"the interrupted build in {paths.build_dir} used {recorded}, this one "
                    f"{work}: rerun with the same DATA and --rotation-tolerance, or pass "
                    f"--overwrite instead of --resume to start over"
                )
        elif not config.overwrite:
            raise BuildError(
                f"an interrupted build of {out} exists in {paths.build_dir}; pass --resume to "
                f"continue it or --overwrite to discard it"
            )
    return work


def _prepare_build_dir(paths: BuildPaths, config: BuildConfig, work: dict) -> None:
    if paths.build_dir.exists():
        if config.resume:
            logger.info("resuming the build in %s", paths.build_dir)
        else:
            logger.info("discarding the partial build in %s", paths.build_dir)
            shutil.rmtree(paths.build_dir)
    elif config.resume:
        logger.info("nothing to resume in %s: starting a fresh build", paths.build_dir)
    paths.clips.mkdir(parents=True, exist_ok=True)
    paths.work_json.write_text(json.dumps(work, sort_keys=True))


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


@dataclass(frozen=True)
class ReadStage:
    """What stage 1 found: every file's entry (in the order of the files), how many were
    reused from an interrupted build, and the read speed (frames/s; 0 when nothing was read)."""

    entries: Mapping[str, CachedClip]
    reused: int
    frames_per_s: float


def _read_stage(
    data: Path,
    files: list[str],
    results: ClipCache | None,
    executor: Executor,
    config: BuildConfig,
    progress: bool,
    space: _SpaceEstimate,
) -> ReadStage:
    """Stage 1: per-file results for every file (reused or read now), then their index;
    `results` None: read every file, persist nothing (a plan)."""
    entries = results.load_entries(data, files) if results is not None else {}
    reused = len(entries)
    if reused:
        logger.info(
            "reusing %d of %d per-file results from the interrupted build", reused, len(files)
        )
    todo = [f for f in files if f not in entries]
    problems = sum(1 for e in entries.values() if not e.ok)
    frames, started = 0, time.perf_counter()
    with tqdm(
        total=len(files), initial=reused, unit="file", desc="read clips", disable=not progress
    ) as bar:
        bar.set_postfix(frames_per_s=0, problems=problems)
        for batch in _read_files(data, todo, results, executor, config):
            for entry in batch:
                entries[entry.file] = entry
                frames += entry.num_frames
                problems += 0 if entry.ok else 1
                if not entry.ok:
                    logger.warning("skipping %s", entry.problem.reason)
            space.files_read, space.frames_read = space.files_read + len(batch), frames
            rate = frames / max(time.perf_counter() - started, 1e-9)
            bar.set_postfix(frames_per_s=f"{rate:.0f}", problems=problems)
            bar.update(len(batch))
    read_fps = frames / max(time.perf_counter() - started, 1e-9) if todo else 0.0
    entries = {f: entries[f] for f in files}
    if results is not None and (todo or not results.index_path.exists()):
        results.save_index(entries)
    return ReadStage(entries, reused, read_fps)


def _read_files(
    data: Path,
    files: list[str],
    results: ClipCache | None,
    executor: Executor,
    config: BuildConfig,
) -> Iterator[list[CachedClip]]:
    """`read_and_persist` over `files` on the executor, a few files per task, as they finish."""
    per_task = executor.items_per_task(len(files))
    batches = [files[i : i + per_task] for i in range(0, len(files), per_task)]
    directory = results.directory if results is not None else None
    tasks = ((data, batch, directory, config.rotation_atol) for batch in batches)
    return executor.map_unordered(read_and_persist, tasks, describe=_describe_read_task)


def _describe_read_task(args: tuple) -> str:
    files = args[1]
    shown = ", ".join(files[:3]) + (f" and {len(files) - 3} more" if len(files) > 3 else "")
    return f"the file{'s' if len(files) > 1 else ''} {shown}"


def _zstd_level(compression: str) -> int | None:
    return ZSTD_LEVEL if compression == "zstd" else None


@dataclass(frozen=True)
class BuildPlan:
    """Stage 2: what the store will hold and how it will be written, decided before any feature
    is computed. `str(plan)` (or `preprocess build --plan`) shows it."""

    config: BuildConfig = field(repr=False)
    data: Path  # DATA, resolved
    discovery: Discovery = field(repr=False)  # every file found under DATA, and the rest
    clips: tuple[CachedClip, ...] = field(repr=False)  # the usable clips the store is made of
    problems: tuple[Problem, ...] = field(repr=False)  # files not used, one each
    discrepancies: tuple[Discrepancy, ...] = field(repr=False)  # notes on used files
    period_ns: float  # detected source frame period
    source_fps: float
    fps: float  # of the stored frames
    sequences: tuple[SequencePlan, ...] = field(repr=False)
    lengths: tuple[int, ...] = field(repr=False)  # stored frames per sequence (after resampling)
    splits: Mapping[str, str] = field(repr=False)  # participant -> split
    stitch: StitchReport

    @property
    def files_found(self) -> int:
        return len(self.discovery.files)

    @property
    def starts(self) -> list[int]:
        return [int(s) for s in np.concatenate([[0], np.cumsum(self.lengths)])[:-1]]

    @property
    def num_frames(self) -> int:
        return int(sum(self.lengths))

    @property
    def num_chunks(self) -> int:
        """Chunks of each frame array (features, timestamp_ns, contact)."""
        return -(-self.num_frames // self.config.chunk_frames)

    @property
    def estimated_bytes(self) -> int:
        """Bytes of the frame arrays' chunk files: exact for raw chunks (each stored full-size,
        with its checksum), an upper bound for zstd."""
        chunk_bytes = self.config.chunk_frames * STORE_BYTES_PER_FRAME
        checksums = len(shared.store.FRAME_ARRAYS) * shared.store.CHECKSUM_BYTES
        return self.num_chunks * (chunk_bytes + checksums)

    @property
    def stats_windows(self) -> int:
        """Canonical windows the normalisation statistics are taken over (train split)."""
        W, S = self.config.window_frames, self.config.stride_frames
        return sum(len(window_starts(r.length, W, S)) for r in self.records() if r.split == "train")

    def records(self) -> list[shared.store.SequenceRecord]:
        """The store's sequence table."""
        return [
            shared.store.SequenceRecord(
                name=sequence.name,
                participant=sequence.participant,
                start=start,
                length=length,
                split=self.splits[sequence.participant],
                source_files=sequence.source_files,
            )
            for sequence, start, length in zip(
                self.sequences, self.starts, self.lengths, strict=True
            )
        ]

    @property
    def split_participants(self) -> dict[str, int]:
        counts = dict.fromkeys(shared.store.SPLITS, 0)
        for split in self.splits.values():
            counts[split] += 1
        return counts

    @property
    def split_frames(self) -> dict[str, int]:
        frames = dict.fromkeys(shared.store.SPLITS, 0)
        for record in self.records():
            frames[record.split] += record.length
        return frames

    def describe(self) -> str:
        """The plan as a user reads it: files, frames, splits, statistics windows, chunks, size,
        executor, then one line per sequence."""
        config, stitch, records = self.config, self.stitch, self.records()
        sequences_of = {s: sum(1 for r in records if r.split == s) for s in shared.store.SPLITS}
        splits = ", ".join(
            f"{s} {self.split_participants[s]} participants / {sequences_of[s]} sequences / "
            f"{self.split_frames[s]} frames"
            for s in shared.store.SPLITS
        )
        bound = "at most " if config.compression != "none" else ""
        lines = [
            f"build plan for {config.out} from {self.data}",
            (
                f"files: {self.files_found} found, {len(self.clips)} used, {len(self.problems)} "
                f"unusable, {len(self.discrepancies)} notes on used files, "
                f"{len(self.discovery.ignored)} candidates not read"
            ),
            (
                f"frames: {self.num_frames} ({self.num_frames / self.fps / 3600:.3f} h at "
                f"{self.fps:g} fps, source {self.source_fps:g} fps) in {len(records)} sequences "
                f"from {stitch.recordings} recordings ({stitch.gaps} gaps, {stitch.filled_frames} "
                f"missing frames filled in {stitch.filled_holes} holes, {stitch.dropped_frames} "
                f"overlapping frames dropped)"
            ),
            f"splits: {splits}",
            (
                f"statistics: {self.stats_windows} canonical windows of {config.window_frames} "
                f"frames every {config.stride_frames} frames over the train split"
            ),
            (
                f"chunks: {self.num_chunks} of {config.chunk_frames} frames per array "
                f"({', '.join(shared.store.FRAME_ARRAYS)}), compression {config.compression}"
            ),
            (
                f"size: {bound}{format_bytes(self.estimated_bytes)} ({bound}"
                f"{self.estimated_bytes} bytes of chunk files)"
            ),
            f"executor: {describe_executor(config)}",
            "sequences: start, frames, split, participant, name, clip files",
        ]
        lines += [
            f"  {r.start:>10} {r.length:>8}  {r.split:<5}  {r.participant}  {r.name}  "
            f"{len(r.source_files)}"
            for r in records
        ]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.describe()


def _usable_clips(
    entries: Mapping[str, CachedClip], data: Path, config: BuildConfig, strict: bool
) -> tuple[list[CachedClip], float, tuple[Problem, ...]]:
    """The clips the store is made of, the dataset's frame period and a problem for every file
    not used; BuildError when no file is usable (or, `strict`, when any is not)."""
    files = list(entries)
    usable = [entries[f] for f in files if entries[f].ok]
    period_ns, usable, rate_problems = _check_frame_rates(usable, config)
    read_problems = [entries[f].problem for f in files if not entries[f].ok]
    problems = tuple(sorted(read_problems + rate_problems, key=lambda p: p.file))
    if not usable:
        raise BuildError(f"no usable clip file among the {len(files)} under {data}", problems)
    if strict and problems:
        raise BuildError(
            f"--strict: {len(problems)} of {len(files)} files are unusable; nothing was "
            f"published (fix or remove them, then rerun with --resume)",
            problems,
        )
    return usable, period_ns, problems


def _plan(
    config: BuildConfig,
    data: Path,
    discovery: Discovery,
    entries: Mapping[str, CachedClip],
    strict: bool,
) -> BuildPlan:
    """Stage 2 (see `_usable_clips` for `strict`)."""
    usable, period_ns, problems = _usable_clips(entries, data, config, strict)
    timelines = [
        ClipTimeline(e.file, e.sequence_name, e.participant, e.timestamp_ns) for e in usable
    ]
    # Integer-ns timestamps of a 30 fps clock give 30.0000003; the period itself is recorded too.
    source_fps = round(1e9 / period_ns, FPS_DECIMALS)
    sequences, stitch = plan_sequences(
        timelines, period_ns, config.stitch_tolerance, config.max_fill_frames
    )
    splits = assign_splits((p.participant for p in sequences), config.split, config.split_seed)
    lengths = tuple(len(stored_timestamps(p.timestamp_ns, config.fps)) for p in sequences)
    plan = BuildPlan(
        config, data, discovery, tuple(usable), problems,
        _discrepancies(usable, stitch, period_ns, config), period_ns, source_fps,
        config.fps or source_fps, tuple(sequences), lengths, splits, stitch,
    )  # fmt: skip
    logger.info(
        "%d usable clips -> %d sequences, %d frames at %.3f fps (source %.3f fps); %d gaps, "
        "%d overlapping frames dropped",
        len(usable), len(plan.sequences), plan.num_frames, plan.fps, plan.source_fps,
        plan.stitch.gaps, plan.stitch.dropped_frames,
    )  # fmt: skip
    return plan


def _discrepancies(
    usable: list[CachedClip], stitch: StitchReport, period_ns: float, config: BuildConfig
) -> tuple[Discrepancy, ...]:
    """What the used files declare or lack, by file: attribute disagreements (read_clip), holes
    inside clips (stitching) and, with --fps, clips resampled from another rate."""
    records = [d for e in usable for d in e.discrepancies]
    records += hole_discrepancies(stitch.holes)
    for entry in usable if config.fps is not None else ():
        own_ns = clip_period_ns(entry.timestamp_ns, period_ns)
        if is_other_rate(own_ns, period_ns):
            records.append(
                Discrepancy(
                    entry.file,
                    "other_frame_rate",
                    f"{entry.file}: dataset 'timestamp_ns': the clip runs at {1e9 / own_ns:.4g} "
                    f"fps, the other clips at {1e9 / period_ns:.4g} fps; resampled to "
                    f"--fps {config.fps:g}",
                    count=len(entry.timestamp_ns),
                )
            )
    return tuple(sorted(records, key=lambda d: (d.file, d.kind)))


def _sequence_tasks(
    plan: BuildPlan, results: ClipCache, first: int
) -> Iterator[tuple[Path, tuple[Piece, ...], np.ndarray, StatsWindows | None]]:
    """Arguments of `compute_planned_sequence` per sequence, from sequence `first` on."""
    config = plan.config
    windows = StatsWindows(config.window_frames, config.stride_frames)
    for sequence in plan.sequences[first:]:
        is_train = plan.splits[sequence.participant] == "train"
        timestamp_ns = stored_timestamps(sequence.timestamp_ns, config.fps)
        yield results.directory, sequence.pieces, timestamp_ns, windows if is_train else None


def _create_frame_arrays(
    root: zarr.Group, num_frames: int, config: BuildConfig
) -> dict[str, zarr.Array]:
    C = config.chunk_frames
    specs = {
        shared.store.FEATURES: ((FEATURE_DIM,), "float32", ("frame", "feature")),
        shared.store.TIMESTAMP_NS: ((), "int64", ("frame",)),
        shared.store.CONTACT: ((shared.store.NUM_CONTACTS,), "float32", ("frame", "contact")),
    }
    return {
        name: shared.store.create_store_array(
            root,
            name,
            shape=(num_frames, *row),
            chunks=(C, *row),
            dtype=dtype,
            dimension_names=dims,
            zstd_level=_zstd_level(config.compression),
        )
        for name, (row, dtype, dims) in specs.items()
    }


def _plan_digest(plan: BuildPlan) -> str:
    """What the frame arrays and train moments depend on (see preprocess.progress)."""
    config = plan.config
    settings = {
        "fps": config.fps,
        "chunk_frames": config.chunk_frames,
        "compression": config.compression,
        "window_frames": config.window_frames,
        "stride_frames": config.stride_frames,
        "rotation_atol": config.rotation_atol,
        "stitch_tolerance": config.stitch_tolerance,
        "max_fill_frames": config.max_fill_frames,
    }
    sequences = (
        {
            "name": sequence.name,
            "split": plan.splits[sequence.participant],
            "pieces": [[p.file, p.start, p.stop] for p in sequence.pieces],
            "length": length,
        }
        for sequence, length in zip(plan.sequences, plan.lengths, strict=True)
    )
    return plan_digest(settings, sequences)


def _open_staging(
    paths: BuildPaths, plan: BuildPlan, base_attrs: dict
) -> tuple[zarr.Group, dict[str, zarr.Array], FrameProgress]:
    """The staging store and how far it is written: reopened where a previous run of the same
    plan left it, else created empty."""
    digest = _plan_digest(plan)
    done = load_progress(paths.progress, digest) if paths.staging.exists() else None
    if done is not None:
        try:
            root = zarr.open_group(paths.staging, mode="r+", zarr_format=3)
            # The config is not stored with an array: without it, zarr would skip all-zero chunks.
            arrays = {
                name: root[name].with_config(shared.store.ARRAY_CONFIG)
                for name in shared.store.FRAME_ARRAYS
            }
            if all(a.shape[0] == plan.num_frames for a in arrays.values()):
                logger.info(
                    "continuing the store in %s at frame %d of %d (sequence %d of %d)",
                    paths.staging, done.rows_written, plan.num_frames, done.next_sequence,
                    len(plan.sequences),
                )  # fmt: skip
                return root, arrays, done
        except (KeyError, ValueError, zarr.errors.BaseZarrError) as error:
            logger.warning("cannot continue the store in %s (%s)", paths.staging, error)
    root = zarr.open_group(paths.staging, mode="w", zarr_format=3)
    root.attrs.update(base_attrs)
    arrays = _create_frame_arrays(root, plan.num_frames, plan.config)
    done = FrameProgress.start(digest, FEATURE_DIM)
    save_progress(paths.progress, done)
    return root, arrays, done


def _reread_missing(plan: BuildPlan, first: int, results: ClipCache, executor: Executor) -> None:
    """Read again the files that sequences `first:` need and whose per-file results were
    deleted (a previous run wrote their frames, but the plan has changed since)."""
    needed = dict.fromkeys(p.file for s in plan.sequences[first:] for p in s.pieces)
    missing = [f for f in needed if not results.has_result(f)]
    if not missing:
        return
    logger.info("reading %d files again (their earlier results were already used)", len(missing))
    entries = {e.file: e for e in plan.clips}
    for batch in _read_files(plan.data, missing, results, executor, plan.config):
        for entry in batch:
            before = entries[entry.file]
            if not entry.ok or not np.array_equal(entry.timestamp_ns, before.timestamp_ns):
                raise BuildError(f"{entry.file} changed during the build; rerun with --resume")


def _write_frames(
    plan: BuildPlan,
    frame_arrays: Mapping[str, zarr.Array],
    done: FrameProgress,
    paths: BuildPaths,
    results: ClipCache,
    executor: Executor,
    progress: bool,
) -> Moments:
    """Stage 3: features of every sequence from `done.next_sequence` on, written in order, whole
    chunks at a time; progress is recorded as chunks become durable and the per-file results
    of wholly written sequences are deleted. Returns the merged train moments."""
    writer = ChunkedRowWriter(frame_arrays, rows_written=done.rows_written)
    C = plan.config.chunk_frames
    starts = plan.starts
    array_dirs = [paths.staging / name for name in frame_arrays]
    ndims = [len(a.shape) for a in frame_arrays.values()]
    # Per-file results can go once the last sequence using them is durable.
    last_use: dict[str, int] = {}
    for index, sequence in enumerate(plan.sequences):
        for piece in sequence.pieces:
            last_use[piece.file] = index
    by_last_use = sorted(last_use, key=last_use.__getitem__)
    discarded = 0

    def record(next_sequence: int, moments: Moments, rows_before: int) -> None:
        nonlocal discarded
        fsync_chunks(array_dirs, ndims, range(rows_before // C, -(-writer.position // C)))
        save_progress(
            paths.progress, FrameProgress(done.digest, writer.position, next_sequence, moments)
        )
        stop = discarded
        while stop < len(by_last_use) and last_use[by_last_use[stop]] < next_sequence:
            stop += 1
        results.discard(by_last_use[discarded:stop])
        discarded = stop

    first = done.next_sequence
    results.discard(f for f in by_last_use if last_use[f] < first)
    discarded = sum(1 for f in by_last_use if last_use[f] < first)
    name_of = {s.pieces: s.name for s in plan.sequences}
    computed = executor.map_ordered(
        compute_planned_sequence,
        _sequence_tasks(plan, results, first),
        describe=lambda args: f"sequence {name_of[args[1]]}",
    )
    moments = done.moments
    with tqdm(
        total=plan.num_frames, initial=done.rows_written, unit="frame", desc="features",
        disable=not progress,
    ) as bar:  # fmt: skip
        for index, arrays in zip(range(first, len(plan.sequences)), computed, strict=True):
            sequence, length, start = plan.sequences[index], plan.lengths[index], starts[index]
            if len(arrays) != length:
                raise RuntimeError(
                    f"sequence {sequence.name}: computed {len(arrays)} frames, planned {length}"
                )
            # As stored (float32); read_clip's bounds make this impossible.
            for name, values in (("features", arrays.features), ("contact", arrays.contact)):
                if not np.isfinite(values).all():
                    raise BuildError(
                        f"sequence {sequence.name}: non-finite {name} computed from "
                        f"{', '.join(sequence.source_files)}; nothing was published"
                    )
            skip = max(0, writer.position - start)  # rows already durable (a resumed build)
            rows_before, moments_before = writer.position, moments
            writer.append(
                {
                    shared.store.FEATURES: arrays.features[skip:],
                    shared.store.TIMESTAMP_NS: arrays.timestamp_ns[skip:],
                    shared.store.CONTACT: arrays.contact[skip:],
                }
            )
            if arrays.moments is not None:  # merged in sequence order: deterministic
                moments = moments.merge(arrays.moments)
            if writer.position > rows_before:  # whole chunks reached the store
                if writer.position >= start + length:
                    record(index + 1, moments, rows_before)
                else:
                    record(index, moments_before, rows_before)
            bar.update(length - skip)
    rows_before = writer.position
    writer.close()
    record(len(plan.sequences), moments, rows_before)
    return moments


def _write_stats(
    root: zarr.Group, moments: Moments, config: BuildConfig
) -> tuple[np.ndarray, np.ndarray]:
    if moments.count == 0:
        raise BuildError("the train split has no frames; cannot compute normalisation stats")
    mean, std = moments.mean_std(config.std_floor)
    # overwrite: a resumed build may have written them before it was stopped
    stats = root.create_group(shared.store.STATS_GROUP, overwrite=True)
    for name, values in ((shared.store.STATS_MEAN, mean), (shared.store.STATS_STD, std)):
        array = shared.store.create_store_array(
            stats, name, shape=(FEATURE_DIM,), chunks=(FEATURE_DIM,), dtype="float64",
            dimension_names=("feature",), fill_value=0.0,
        )  # fmt: skip
        array[:] = values
    stats.attrs.update(
        {
            shared.store.STATS_ATTR_COUNT: int(moments.count),
            ATTR_WINDOW_FRAMES: config.window_frames,
            shared.store.STATS_ATTR_STRIDE_FRAMES: config.stride_frames,
            shared.store.STATS_ATTR_STD_FLOOR: config.std_floor,
            ATTR_SPLIT: "train",
        }
    )
    return mean, std


def _write_store(
    plan: BuildPlan, paths: BuildPaths, results: ClipCache, executor: Executor, progress: bool
) -> None:
    """Stages 3-4: the store in the staging directory, complete (it is published by renaming)."""
    created = _created(paths)  # before any chunk: a crash from here on resumes with this time
    base_attrs = {
        **shared.store.FEATURE_SCHEMA.attrs(),
        shared.store.ATTR_LAYOUT: layout_description(),
        shared.store.ATTR_BUILD_CONFIG: plan.config.to_json(),
        ATTR_COMPLETE: False,
    }
    root, frame_arrays, done = _open_staging(paths, plan, base_attrs)
    _reread_missing(plan, done.next_sequence, results, executor)
    moments = _write_frames(plan, frame_arrays, done, paths, results, executor, progress)
    mean, std = _write_stats(root, moments, plan.config)
    table = shared.store.table_to_json(plan.records())
    write_table(root, table)
    # Hash exactly what a reader will load.
    attrs = json.loads(json.dumps({**base_attrs, **_described_attrs(plan, created)}))
    attrs[shared.store.ATTR_FINGERPRINT] = shared.store.compute_fingerprint(
        attrs, table, mean, std, root[shared.store.STATS_GROUP].attrs.asdict()
    )
    root.attrs.update(attrs)
    mark_complete(root)  # last: the store is now usable


def _described_attrs(plan: BuildPlan, created: str) -> dict:
    """The root attributes that describe the frames and where they come from."""
    config = plan.config
    return {
        ATTR_FPS: plan.fps,
        shared.store.ATTR_SOURCE_FPS: plan.source_fps,
        **provenance_attrs(created),
        shared.store.ATTR_SOURCE: {
            "root": str(plan.data),
            "file_count": plan.files_found,
            "files_used": len(plan.clips),
            "ignored": [i.to_json() for i in plan.discovery.ignored],
            "other_files": plan.discovery.other_files,
        },
        shared.store.ATTR_PROBLEMS: [p.to_json() for p in plan.problems],
        shared.store.ATTR_DISCREPANCIES: [d.to_json() for d in plan.discrepancies],
        shared.store.ATTR_STITCHING: {
            **plan.stitch.to_json(),
            "frame_period_ns": plan.period_ns,
            "tolerance_periods": config.stitch_tolerance,
            "max_fill_frames": config.max_fill_frames,
        },
    }


def _created(paths: BuildPaths) -> str:
    """When this build first started writing its store (ISO 8601, UTC); kept in the build
    directory, so a resumed build records the same time and its metadata is byte-identical to
    what the interrupted build would have written."""
    record = paths.build_dir / "created"
    if record.is_file() and record.read_text().strip():
        return record.read_text().strip()
    created = utc_now()
    with atomic_path(record) as tmp:
        tmp.write_text(created)
    return created


def _publish(paths: BuildPaths, config: BuildConfig) -> None:
    """Record the new store's identity in the build directory, rename the complete staging
    store to STORE (exchanging it with the old one) and clean up. From the record on, a build
    killed here is finished by the next one (`_recover_publish`)."""
    with atomic_path(paths.publishing) as tmp:
        tmp.write_text(str(_published_identity(paths.staging)))
    _publish_step("marked")
    try:
        publish(paths.staging, paths.out, config.overwrite, on_step=_publish_step)
    except DestinationExistsError:
        paths.publishing.unlink()
        raise BuildError(
            f"{paths.out} appeared during the build; the new store is left in {paths.staging}"
        ) from None
    shutil.rmtree(paths.build_dir)
    logger.info("published %s", paths.out)


def _publish_step(step: str) -> None:
    """Called after each step of publishing (`_publish`, `shared.zarr_output.publish`)."""
    logger.debug("publishing: %s", step)


def _published_identity(store: Path) -> str | None:
    """Fingerprint and creation time of the complete store at `store` (two builds of the same
    content differ by when they were made), or None (nothing there, incomplete, unreadable
    metadata)."""
    try:
        attrs = json.loads((store / "zarr.json").read_bytes())["attributes"]
        if attrs[ATTR_COMPLETE] is True:
            return f"{attrs[shared.store.ATTR_FINGERPRINT]} {attrs[ATTR_CREATED]}"
    except (OSError, ValueError, TypeError, KeyError, RecursionError):
        pass
    return None


def _recover_publish(paths: BuildPaths) -> bool:
    """Finish what a build killed while publishing left (with the lock held): when the build
    directory records a store's identity, the store of that identity is put at STORE (unless it
    is there already) and the build directory removed. Stores that older versions left as
    `STORE.replaced-<pid>` go back to STORE if nothing is there, else are deleted. True when a
    killed build's store was published here."""
    recorded = paths.publishing.read_text().strip() if paths.publishing.is_file() else None
    finished = recorded is not None and _published_identity(paths.out) == recorded
    if recorded is not None and not finished:
        if _published_identity(paths.staging) == recorded:
            logger.warning("finishing the publication of %s a killed build began", paths.out)
            publish(paths.staging, paths.out, overwrite=True)
            finished = True
        else:
            logger.warning("%s records an unfinished publication; ignored", paths.publishing)
            paths.publishing.unlink()
    if finished:
        shutil.rmtree(paths.build_dir)
    leftovers = paths.out.parent.glob(f"{glob.escape(paths.out.name)}.replaced-*")
    for leftover in sorted(leftovers, key=lambda p: p.stat().st_mtime_ns, reverse=True):
        if not paths.out.exists() and _published_identity(leftover) is not None:
            logger.warning("restoring %s from %s", paths.out, leftover)
            os.rename(leftover, paths.out)
        else:
            logger.warning("removing %s, left by a killed build", leftover)
            shutil.rmtree(leftover)
    return finished


def _check_resumable(paths: BuildPaths, config: BuildConfig, finished: bool) -> None:
    """`AlreadyBuilt` for `--resume` of a build that has nothing left to do: its publication
    was just finished, or (without --overwrite) there is no build directory and a store is
    published."""
    if not config.resume or paths.build_dir.exists():
        return
    if finished:
        raise AlreadyBuilt(
            f"the interrupted build of {paths.out} was finished: its store is published; "
            f"nothing to resume"
        )
    identity = _published_identity(paths.out)
    if identity is not None and not config.overwrite:
        raise AlreadyBuilt(
            f"{paths.out} is already built (fingerprint {identity[:12]}): nothing to resume; "
            f"pass --overwrite to build it again"
        )


def describe_executor(config: BuildConfig) -> str:
    if config.scheduler == SYNCHRONOUS:
        return "synchronous (plain loop)"
    if config.scheduler is None:
        return f"local Dask cluster, {config.workers or default_workers()} processes x 1 thread"
    return f"Dask scheduler {config.scheduler}"
