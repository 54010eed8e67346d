"""Stage 3 of a build: the store a `BuildPlan` describes, written in the staging directory.

Per sequence on the executor, `compute_planned_sequence` (interpolate filled holes or resample,
features on the stitched motion, moments of canonical windows for train sequences); results are
written in sequence order, whole chunks at a time, and the moments merged in that fixed order.
Progress is recorded as chunks become durable (preprocess.build.resume_record), and the
per-file results of sequences wholly written are deleted. Then stats, sequence table and
attributes, `complete=True` last. Everything about what is written comes from the plan.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import zarr
from tqdm import tqdm

import shared.store
from preprocess.build.config import BuildConfig, zstd_level
from preprocess.build.errors import BuildError
from preprocess.build.paths import BuildPaths
from preprocess.build.plan import BuildPlan
from preprocess.build.read import read_files
from preprocess.build.resume_record import (
    FrameProgress,
    fsync_chunks,
    load_progress,
    plan_digest,
    save_progress,
)
from preprocess.clip_cache import ClipCache
from preprocess.executor import Executor
from preprocess.sequence import SequenceArrays, StatsWindows, compute_planned_sequence
from preprocess.stitch import Piece, SequencePlan
from shared.atomic import atomic_path
from shared.chunked_writer import ChunkedRowWriter
from shared.layout import FEATURE_DIM, layout_description
from shared.moments import Moments
from shared.store import ATTR_COMPLETE, ATTR_FPS, ATTR_SPLIT, ATTR_WINDOW_FRAMES
from shared.store.write import mark_complete, provenance_attrs, utc_now, write_table

logger = logging.getLogger(__package__)  # one logger for the whole build


def _sequence_tasks(
    plan: BuildPlan, results: ClipCache, first: int
) -> Iterator[tuple[Path, tuple[Piece, ...], np.ndarray, StatsWindows | None]]:
    """Arguments of `compute_planned_sequence` per sequence, from sequence `first` on."""
    config = plan.config
    windows = StatsWindows(config.window_frames, config.stride_frames)
    for sequence, timestamp_ns in zip(plan.sequences[first:], plan.timestamps[first:], strict=True):
        is_train = plan.splits[sequence.participant] == "train"
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
            zstd_level=zstd_level(config.compression),
        )
        for name, (row, dtype, dims) in specs.items()
    }


def _plan_digest(plan: BuildPlan) -> str:
    """What the frame arrays and train moments depend on (see preprocess.build.resume_record)."""
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
                    paths.staging,
                    done.rows_written,
                    plan.num_frames,
                    done.next_sequence,
                    len(plan.sequences),
                )
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
    for batch in read_files(plan.data, missing, results, executor, plan.config):
        for entry in batch:
            before = entries[entry.file]
            if not entry.ok or not np.array_equal(entry.timestamp_ns, before.timestamp_ns):
                raise BuildError(f"{entry.file} changed during the build; rerun with --resume")


class _Durability:
    """Stage 3's record keeping: when whole chunks reach the store, their chunk files are
    fsynced, the progress record saved, and the per-file results deleted whose last sequence is
    now durable."""

    def __init__(
        self,
        plan: BuildPlan,
        frame_arrays: Mapping[str, zarr.Array],
        writer: ChunkedRowWriter,
        digest: str,
        paths: BuildPaths,
        results: ClipCache,
    ) -> None:
        self.writer, self.digest, self.paths, self.results = writer, digest, paths, results
        self.chunk_frames = plan.config.chunk_frames
        self.array_dirs = [paths.staging / name for name in frame_arrays]
        self.ndims = [len(a.shape) for a in frame_arrays.values()]
        self.last_use = {
            piece.file: index
            for index, sequence in enumerate(plan.sequences)
            for piece in sequence.pieces
        }
        self.by_last_use = sorted(self.last_use, key=self.last_use.__getitem__)
        self.discarded = 0

    def release(self, next_sequence: int) -> None:
        """Delete the per-file results that no sequence from `next_sequence` on uses."""
        stop = self.discarded
        while (
            stop < len(self.by_last_use) and self.last_use[self.by_last_use[stop]] < next_sequence
        ):
            stop += 1
        self.results.discard(self.by_last_use[self.discarded : stop])
        self.discarded = stop

    def record(self, next_sequence: int, moments: Moments, rows_before: int) -> None:
        """The rows from `rows_before` to the writer's position are durable, and with them
        every sequence before `next_sequence`, whose train moments are `moments`."""
        C, position = self.chunk_frames, self.writer.position
        fsync_chunks(self.array_dirs, self.ndims, range(rows_before // C, -(-position // C)))
        save_progress(
            self.paths.progress, FrameProgress(self.digest, position, next_sequence, moments)
        )
        self.release(next_sequence)


def _check_computed(sequence: SequencePlan, length: int, arrays: SequenceArrays) -> None:
    """The computed arrays of `sequence` are what the plan said, and finite as stored."""
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
    durability = _Durability(plan, frame_arrays, writer, done.digest, paths, results)
    first, starts, lengths = done.next_sequence, plan.starts, plan.lengths
    durability.release(first)
    name_of = {s.pieces: s.name for s in plan.sequences}
    computed = executor.map_ordered(
        compute_planned_sequence,
        _sequence_tasks(plan, results, first),
        describe=lambda args: f"sequence {name_of[args[1]]}",
    )
    moments = done.moments
    with tqdm(
        total=plan.num_frames,
        initial=done.rows_written,
        unit="frame",
        desc="features",
        disable=not progress,
    ) as bar:
        for index, arrays in zip(range(first, len(plan.sequences)), computed, strict=True):
            sequence, length, start = plan.sequences[index], lengths[index], starts[index]
            _check_computed(sequence, length, arrays)
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
                    durability.record(index + 1, moments, rows_before)
                else:
                    durability.record(index, moments_before, rows_before)
            bar.update(length - skip)
    rows_before = writer.position
    writer.close()
    durability.record(len(plan.sequences), moments, rows_before)
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
            stats,
            name,
            shape=(FEATURE_DIM,),
            chunks=(FEATURE_DIM,),
            dtype="float64",
            dimension_names=("feature",),
            fill_value=0.0,
        )
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


def write_store(
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
