"""How far the frame arrays of an interrupted build are written, so `--resume` continues there.

Stage 3 of a build (preprocess.build.write) appends sequences in plan order, whole chunks at a
time. Each time whole chunks reach the staging store, their chunk files are fsynced and a
`FrameProgress` record is replaced atomically: the rows now durable, the first sequence not
wholly inside them, and the train moments merged over the sequences before it. A resumed build
whose plan and settings hash to the same `digest` reopens the staging store and recomputes only
from that sequence on; the chunks it writes are the ones an uninterrupted build writes, and the
moments are merged in the same order, so the store is byte-identical. Per-file results whose
sequences are all durable are no longer needed and are deleted (the staging footprint shrinks as
the store grows).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from preprocess.clip_cache import DamagedResultError, decode_record, encode_record
from shared.atomic import atomic_path
from shared.moments import Moments

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FrameProgress:
    digest: str  # of the plan and of the settings the frame arrays depend on
    rows_written: int  # durable rows: whole chunks, or every row
    next_sequence: int  # first sequence not wholly within `rows_written`
    moments: Moments  # of the train sequences before `next_sequence`, merged in order

    @staticmethod
    def start(digest: str, dim: int) -> FrameProgress:
        return FrameProgress(digest, 0, 0, Moments.empty(dim))


def plan_digest(settings: Mapping, sequences: Iterable[Mapping]) -> str:
    """sha256 of the settings and the per-sequence plan (JSON-able values)."""
    text = json.dumps({"settings": settings, "sequences": list(sequences)}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def save_progress(path: Path, progress: FrameProgress) -> None:
    meta = {
        "digest": progress.digest,
        "rows_written": progress.rows_written,
        "next_sequence": progress.next_sequence,
        "moments_count": progress.moments.count,
    }
    arrays = {"mean": progress.moments.mean, "m2": progress.moments.m2}
    with atomic_path(path) as tmp:
        tmp.write_bytes(encode_record(meta, arrays))


def load_progress(path: Path, digest: str) -> FrameProgress | None:
    """The recorded progress if it belongs to `digest`, else None (start stage 3 over)."""
    try:
        meta, arrays = decode_record(Path(path).read_bytes(), None)
        if meta["digest"] != digest:
            logger.info("the plan or settings changed since %s: rewriting every frame", path)
            return None
        moments = Moments(int(meta["moments_count"]), arrays["mean"].copy(), arrays["m2"].copy())
        return FrameProgress(digest, int(meta["rows_written"]), int(meta["next_sequence"]), moments)
    except FileNotFoundError:
        return None
    except (OSError, DamagedResultError, KeyError, TypeError, ValueError) as error:
        logger.warning("ignoring damaged progress record %s (%s)", path, error)
        return None


def fsync_chunks(array_dirs: Iterable[Path], ndims: Iterable[int], chunks: range) -> None:
    """fsync the chunk files `chunks` (Zarr v3 default keys `c/<i>/0...`) of local arrays, and
    their directories, so a recorded progress never points past data a power cut could lose."""
    directories = set()
    for array_dir, ndim in zip(array_dirs, ndims, strict=True):
        for index in chunks:
            path = Path(array_dir).joinpath("c", str(index), *("0" for _ in range(ndim - 1)))
            if not path.exists():  # all fill value: Zarr does not write it
                continue
            _fsync(path, os.O_RDONLY)
            directories.add(path.parent)
    for directory in directories:
        _fsync(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))


def _fsync(path: Path, flags: int) -> None:
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
