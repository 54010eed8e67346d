"""Stage 1 of a build: DATA checked and searched (`preprocess.discover`), then every clip file
read on the executor, a few files per task (`read_clip`, a pure function of the file), each
result persisted in the build directory as it arrives (not for a plan). No file can stop the
build: an unusable one becomes a problem record."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from preprocess.build.config import BuildConfig
from preprocess.build.errors import BuildError
from preprocess.build.paths import SpaceEstimate
from preprocess.clip_cache import CachedClip, ClipCache, read_and_persist
from preprocess.discover import Discovery, discover_clip_files
from preprocess.executor import Executor
from shared.remote import normalize_location

logger = logging.getLogger(__package__)  # one logger for the whole build


def data_dir(config: BuildConfig) -> Path:
    data = Path(normalize_location(config.data))
    if not data.is_dir():
        raise BuildError(f"DATA must be a directory of clip files, found {data}")
    return data


def discover(data: Path) -> Discovery:
    discovery = discover_clip_files(data)
    if not discovery.files:
        raise BuildError(f"no *.h5 files under {data}{_describe_ignored(discovery)}")
    return discovery


def _describe_ignored(discovery: Discovery) -> str:
    """'; not read: ...' for an error message, or ''."""
    if not discovery.ignored:
        return ""
    listed = "; ".join(f"{i.path} ({i.reason})" for i in discovery.ignored[:5])
    more = len(discovery.ignored) - 5
    return f"; not read: {listed}" + (f" and {more} more" if more > 0 else "")


@dataclass(frozen=True)
class ReadStage:
    """What stage 1 found: every file's entry (in the order of the files), how many were
    reused from an interrupted build, and the read speed (frames/s; 0 when nothing was read)."""

    entries: Mapping[str, CachedClip]
    reused: int
    frames_per_s: float


def read_stage(
    data: Path,
    files: list[str],
    results: ClipCache | None,
    executor: Executor,
    config: BuildConfig,
    progress: bool,
    space: SpaceEstimate,
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
        for batch in read_files(data, todo, results, executor, config):
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


def read_files(
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
