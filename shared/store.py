"""The feature store (schema v2): its layout, its integrity checks, and the reader every consumer
uses.

A store is a Zarr v3 group written once per dataset build by `python -m preprocess build`:

    <store>/
      zarr.json        root attributes (see ATTR_* below); `complete` is written last
      features/        (N, 294) float32, chunks (chunk_frames, 294); all sequences concatenated
      timestamp_ns/    (N,) int64, chunks (chunk_frames,)
      contact/         (N, 4) float32, chunks (chunk_frames, 4); foot contacts as in the source
      sequences/       group; attribute `table`: the sequence table, column-wise (see
                       `table_to_json`): name, participant, start, length, split, source_files
      stats/           group; arrays `mean`, `std` (294,) float64 of canonical train windows;
                       attributes count, window_frames, stride_frames, std_floor, split

Frames of one sequence are contiguous: `features[record.start:record.stop]`.

Integrity (new in schema v2): every array ends its codec chain with `crc32c`, a 4-byte checksum
of the chunk as stored, and every chunk is written (even one holding only the fill value), so
a missing or truncated chunk file is damage, never "all zeros". `open_store` checks that every
chunk file exists with its size (a stat per chunk); `check_chunks(deep=True)` (`preprocess
verify`) also checks every checksum and that every float value is finite. The fingerprint
covers every root attribute that gives the frames their meaning (schema, layout, fps, ...), the
sequence table and the stats, so an edited `fps` is refused like an edited table.
Schema history: v1 had no checksums, omitted all-fill chunks and fingerprinted only layout,
table and stats; it is refused with the command to rebuild.

Memory mapping: an uncompressed Zarr v3 chunk (codecs = [bytes little endian, crc32c]) is the
raw C-order array followed by its 4 checksum bytes, stored full-size even at the array's end.
For local stores `open_store` therefore maps the first bytes of each chunk file of `features`
(`features/c/<i>/0`) with `np.memmap`, so slicing a window is a view (or one copy when the
window crosses a chunk boundary) instead of a trip through zarr's codec pipeline.

This module must not import h5py or hdf5plugin: the trainer imports it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import sys
import weakref
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property
from itertools import product
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlparse

import fsspec
import google_crc32c
import numpy as np
import zarr
from fsspec.implementations.local import LocalFileSystem
from tqdm import tqdm
from zarr.codecs import BytesCodec, Crc32cCodec, ZstdCodec
from zarr.core.metadata.v3 import ArrayV3Metadata

from shared.layout import FEATURE_DIM, HP, HP_DOT, JP, JV, field_of_dim, layout_description
from shared.remote import MissingExtraError, filesystem, missing_extra_message, url_options
from shared.zarr_output import (
    ATTR_COMPLETE,
    ATTR_CREATED,
    ATTR_FPS,
    ATTR_GIT_REVISION,
    ATTR_PACKAGE_VERSION,
    ATTR_WINDOW_FRAMES,
    FEATURE_SCHEMA_NAME,
    SEQUENCES_GROUP,
    Schema,
    StoreError,
    check_root_attrs,
    read_table,
)

logger = logging.getLogger(__name__)

SCHEMA_NAME = FEATURE_SCHEMA_NAME
SCHEMA_VERSION = 2  # v2: per-chunk crc32c, every chunk written, fingerprint over root attributes
REBUILD_HINT = "rebuild it with `python -m preprocess build DATA --out STORE --overwrite`"
RESUME_HINT = "finish it with `python -m preprocess build DATA --out {out} --resume`"
"""`.format(out=...)` with the store path the build was given (`STORE` when unknown)."""
FEATURE_SCHEMA = Schema(
    SCHEMA_NAME,
    SCHEMA_VERSION,
    about_version="v2 added per-chunk checksums",
    how_to_write="build one with `python -m preprocess build DATA --out STORE`",
    how_to_upgrade=REBUILD_HINT,
)
SPLITS: tuple[str, ...] = ("train", "val", "test")

# --- node names -------------------------------------------------------------------------------
FEATURES = "features"
TIMESTAMP_NS = "timestamp_ns"
CONTACT = "contact"
STATS_GROUP = "stats"
STATS_MEAN = "mean"
STATS_STD = "std"
FRAME_ARRAYS: tuple[str, ...] = (FEATURES, TIMESTAMP_NS, CONTACT)
NUM_CONTACTS = 4

# --- root attributes (and shared.zarr_output's: schema, fps, provenance, created, complete) ------
ATTR_LAYOUT = "feature_layout"  # shared.layout.layout_description()
ATTR_SOURCE_FPS = "source_fps"  # frame rate detected in the source timestamps
ATTR_BUILD_CONFIG = "build_config"  # every build option, by name
# {"root", "file_count", "files_used", "ignored": [{"path", "reason"}], "other_files": {ext: n}}
ATTR_SOURCE = "source"
ATTR_PROBLEMS = "problems"  # [{"file", "kind", "reason", "key", "frame"}], one per skipped file
ATTR_DISCREPANCIES = "discrepancies"  # [{"file", "kind", "reason", "count", "frame"}], used files
ATTR_STITCHING = "stitching"  # counts of gaps and dropped (overlapping/duplicate) frames
ATTR_FINGERPRINT = "fingerprint"  # compute_fingerprint(...) at build time

FINGERPRINT_EXCLUDED_ATTRS: frozenset[str] = frozenset(
    {
        ATTR_FINGERPRINT,
        ATTR_COMPLETE,
        ATTR_CREATED,
        ATTR_PACKAGE_VERSION,
        ATTR_GIT_REVISION,
        ATTR_BUILD_CONFIG,
        ATTR_SOURCE,
    }
)
"""Root attributes that record when, where, how and by which code a store was built (paths,
workers, times), not what its frames mean: left out of the fingerprint, so the same content
built from another mount or copied elsewhere keeps its fingerprint. Every other root attribute,
including any added later, is covered; build options that change content show up in covered
attributes (fps, stitching, stats attributes) or in the table."""

# --- group attributes (and shared.zarr_output's ATTR_WINDOW_FRAMES, ATTR_SPLIT on STATS_GROUP) --
STATS_ATTR_COUNT = "count"
STATS_ATTR_STRIDE_FRAMES = "stride_frames"
STATS_ATTR_STD_FLOOR = "std_floor"

TABLE_COLUMNS: tuple[str, ...] = ("name", "participant", "start", "length", "split", "source_files")

OPEN_FILES_RESERVE = 256
"""Open files left for everything but chunk maps (sockets, DataLoader pipes, logs, checkpoints)."""

CHECKSUM_BYTES = 4  # the crc32c codec appends the little-endian CRC-32C of the encoded chunk
ARRAY_CONFIG: Mapping[str, Any] = {"write_empty_chunks": True}
"""Zarr array config of every store array: write every chunk, so a missing file is damage."""
DEEP_CHECK_THREADS = 4  # chunk reads in flight in `check_chunks(deep=True)` (I/O bound remotely)
UNLISTED_SIZE_THREADS = 16  # size requests in flight for chunks a remote listing did not show
VERIFY_HINT = "`python -m preprocess verify {url}` lists every damaged chunk"


def store_compressors(zstd_level: int | None = None) -> tuple:
    """Bytes-to-bytes codecs of every store array: zstd when a level is given, then always
    crc32c, so the checksum covers the bytes as stored and an uncompressed chunk file is the raw
    C-order array followed by 4 checksum bytes (memory-mappable from offset 0)."""
    compression = () if zstd_level is None else (ZstdCodec(level=zstd_level),)
    return (*compression, Crc32cCodec())


def create_store_array(
    parent: zarr.Group,
    name: str,
    *,
    shape: tuple[int, ...],
    chunks: tuple[int, ...],
    dtype: Any,
    dimension_names: Sequence[str] | None,
    zstd_level: int | None = None,
    fill_value: Any = 0,
    overwrite: bool = False,
) -> zarr.Array:
    """Create an array of a store: the one place that sets codecs and array config, used by the
    build and by `pull` when it re-encodes a compressed array as raw chunks."""
    return parent.create_array(
        name, shape=shape, chunks=chunks, dtype=dtype, compressors=store_compressors(zstd_level),
        fill_value=fill_value, dimension_names=dimension_names, config=ARRAY_CONFIG,
        overwrite=overwrite,
    )  # fmt: skip


@dataclass(frozen=True)
class SequenceRecord:
    """One continuous sequence: frames `[start, stop)` of every frame array."""

    name: str
    participant: str
    start: int
    length: int
    split: str
    source_files: tuple[str, ...]  # clip files relative to the source root, in time order

    @property
    def stop(self) -> int:
        return self.start + self.length


@dataclass(frozen=True)
class NormStats:
    """Per-dimension normalisation of canonical windows: `(x - mean) / std`."""

    mean: np.ndarray  # (294,) float32
    std: np.ndarray  # (294,) float32, floored
    count: int  # frame vectors that went into the moments
    window_frames: int  # canonical window length the moments were taken over


# --- sequence table <-> JSON (stored by shared.zarr_output.write_table) -----------------------


def table_to_json(records: Sequence[SequenceRecord]) -> dict[str, list]:
    """Column-wise JSON of the sequence table, as `shared.zarr_output.write_table` stores it."""
    return {
        "name": [r.name for r in records],
        "participant": [r.participant for r in records],
        "start": [int(r.start) for r in records],
        "length": [int(r.length) for r in records],
        "split": [r.split for r in records],
        "source_files": [list(r.source_files) for r in records],
    }


def table_from_json(table: Mapping[str, Any], where: str) -> tuple[SequenceRecord, ...]:
    """Inverse of `table_to_json` on a table `read_table` checked, checking splits."""
    records = tuple(
        SequenceRecord(
            name=str(name),
            participant=str(participant),
            start=int(start),
            length=int(length),
            split=str(split),
            source_files=tuple(str(f) for f in files),
        )
        for name, participant, start, length, split, files in zip(
            *(table[c] for c in TABLE_COLUMNS), strict=True
        )
    )
    for r in records:
        if r.split not in SPLITS:
            raise StoreError(
                f"{where}: sequence {r.name!r} has split {r.split!r}, expected one of {SPLITS}"
            )
    return records


def compute_fingerprint(
    root_attrs: Mapping[str, Any],
    table: Mapping[str, list],
    mean: np.ndarray,
    std: np.ndarray,
    stats_attrs: Mapping[str, Any],
) -> str:
    """sha256 over the root attributes (but FINGERPRINT_EXCLUDED_ATTRS), the sequence table, the
    stats attributes and the stats: a stable content id of a build.

    Attributes are hashed as canonical JSON (sorted keys), `mean`/`std` as the stored float64
    bytes (little endian), so two builds with byte-identical content have the same fingerprint
    whatever machine reads them.
    """
    header = {
        "attrs": {k: v for k, v in root_attrs.items() if k not in FINGERPRINT_EXCLUDED_ATTRS},
        "table": table,
        "stats": dict(stats_attrs),
    }
    digest = hashlib.sha256()
    digest.update(json.dumps(header, sort_keys=True, separators=(",", ":")).encode())
    digest.update(np.ascontiguousarray(mean, dtype="<f8").tobytes())
    digest.update(np.ascontiguousarray(std, dtype="<f8").tobytes())
    return digest.hexdigest()


# --- memory-mapped chunk access ---------------------------------------------------------------


class ChunkSource(Protocol):
    """Where the chunk files of a memory-mapped store come from when they are not all local yet
    (`shared.chunk_cache.ChunkCache`). Picklable, so DataLoader workers fetch too."""

    def map_chunk(self, array: ChunkMemmapArray, index: int) -> np.ndarray:
        """Chunk `index` of `array`, its file made present first (`array.map_chunk_file`)."""

    def prefetch(self, array: ChunkMemmapArray, indices: Sequence[int]) -> None:
        """Start fetching chunks `indices` of `array` that are not local, without waiting."""


class ChunkMemmapArray:
    """Read-only `(N, *row_shape)` array over the raw chunk files of an uncompressed Zarr v3
    array chunked along its first axis only (each file: the C-order chunk, then
    `checksum_bytes` that are not mapped).

    Slicing rows returns an `np.ndarray`: a view into one chunk's memory map when the rows lie
    inside one chunk, else a copy. Picklable (maps are reopened lazily after unpickling).

    With `check_on_first_use`, the first use of each chunk in a process also checks its crc32c
    and (float arrays) that every value is finite, and calls `on_first_use(index)` (the
    store's own checks across arrays and chunks); damage raises `ChunkDamageError` naming the
    array, chunk, file and frames. A chunk is checked once per process, however often it is
    mapped again.

    Every chunk is mapped on first use and kept: at the real dataset's ~3,900 chunks an evicting
    cache of a few hundred maps thrashes (each remap costs more than the window it serves,
    BENCHMARKS.md). A map holds a file descriptor (Python's mmap keeps a duplicate), so the
    process's soft open-file limit is raised as maps are made, toward its hard limit; only
    when that fails are the oldest maps evicted, with a warning. `max_maps` caps the maps
    (oldest evicted) regardless: the previous design, kept for the benchmark.

    With a `chunk_source` (`shared.chunk_cache.ChunkCache`: a local cache of a store at a URL)
    chunk files need not exist yet: `chunk_source.map_chunk(self, index)` makes the file present
    (fetching it) and maps it with `map_chunk_file`, and may `drop_map` chunks it evicts.
    """

    def __init__(
        self,
        array_dir: Path,
        shape: tuple[int, ...],
        chunk_frames: int,
        dtype: np.dtype,
        checksum_bytes: int = CHECKSUM_BYTES,
        max_maps: int | None = None,
        array_path: str | None = None,
        check_on_first_use: bool = False,
        chunk_source: ChunkSource | None = None,
    ) -> None:
        self.array_dir = Path(array_dir)
        self.array_path = self.array_dir.name if array_path is None else array_path
        self.shape = tuple(int(s) for s in shape)
        self.chunk_frames = int(chunk_frames)
        self.dtype = np.dtype(dtype)
        self.checksum_bytes = int(checksum_bytes)
        self.num_chunks = -(-self.shape[0] // self.chunk_frames)
        self.max_maps = max_maps  # None: one map per chunk while the open-file limit allows
        self.check_on_first_use = check_on_first_use
        self.on_first_use: Callable[[int], None] | None = None
        self.chunk_source = chunk_source
        self._init_cache()

    def _init_cache(self) -> None:
        self._maps: dict[int, np.ndarray] = {}  # chunk index -> map, oldest first
        self.is_mapped_mask = np.zeros(self.num_chunks, dtype=bool)  # the keys of _maps
        self._warned_limit = False
        self._checked: set[int] = set()  # chunks checked in this process

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        del state["_maps"], state["_warned_limit"], state["_checked"], state["is_mapped_mask"]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._init_cache()

    def _chunk(self, index: int) -> np.ndarray:
        """The map of chunk `index`, made on first use and kept (see the class doc)."""
        try:
            return self._maps[index]
        except KeyError:
            pass
        at_cap = self.max_maps is not None and len(self._maps) >= self.max_maps
        if self._maps and (at_cap or not _room_for_another_map()):
            if not (at_cap or self._warned_limit):
                self._warned_limit = True
                logger.warning(
                    "%s has %d chunk files but this process may keep only %d of them mapped "
                    "(open-file limit); window reads will be slower: raise the limit, e.g. "
                    "`ulimit -n %d`",
                    self.array_dir, self.num_chunks, len(self._maps),
                    3 * self.num_chunks + OPEN_FILES_RESERVE,
                )  # fmt: skip
            self.drop_map(next(iter(self._maps)))  # evict the oldest
        source = self.chunk_source
        chunk = self.map_chunk_file(index) if source is None else source.map_chunk(self, index)
        if self.check_on_first_use:  # before the map is kept: a damaged chunk is never served
            self.ensure_checked(index)
        self._maps[index] = chunk
        self.is_mapped_mask[index] = True
        return chunk

    def is_mapped(self, index: int) -> bool:
        return index in self._maps

    def mapped_chunks(self) -> list[int]:
        """Indices of the chunks this process maps, oldest map first."""
        return list(self._maps)

    def drop_map(self, index: int) -> None:
        """Forget the map of chunk `index` (views already handed out stay valid)."""
        self._maps.pop(index, None)
        self.is_mapped_mask[index] = False

    @property
    def store_dir(self) -> Path:
        """The store this array belongs to."""
        return self.array_dir.parents[len(Path(self.array_path).parts) - 1]

    def describe_chunk(self, index: int) -> _Chunk:
        """Chunk `index` named for humans: array, chunk, file (relative to the store), frames."""
        first = index * self.chunk_frames
        key = "/".join(self.chunk_path(index).relative_to(self.array_dir).parts)
        return _Chunk(
            self.array_path, (index, *(0 for _ in self.row_shape)), f"{self.array_path}/{key}",
            (first, min(first + self.chunk_frames, self.shape[0]) - 1),
        )  # fmt: skip

    def verify_chunk(self, index: int) -> str | None:
        """What is wrong with chunk `index`'s file (its crc32c does not match its bytes; a float
        value is not finite), as one line naming array, chunk, file and frames; None when good.
        Reads the whole file."""
        path, chunk = self.chunk_path(index), self.describe_chunk(index)
        raw = np.memmap(path, dtype=np.uint8, mode="r")  # pages shared with the chunk's own map
        if not chunk_checksum_ok(raw):
            return f"{chunk}: {CHECKSUM_MISMATCH}"
        values = raw[: -self.checksum_bytes or None].view(self.dtype)
        return _non_finite_problem(values.reshape(self.chunk_frames, *self.row_shape), chunk)

    def ensure_checked(self, index: int) -> None:
        """Check chunk `index` once in this process (`verify_chunk`, then `on_first_use`);
        raises `ChunkDamageError` on damage."""
        if index in self._checked:
            return
        problem = self.verify_chunk(index)
        if problem is not None:
            raise ChunkDamageError.of(self.store_dir, problem)
        self._checked.add(index)
        if self.on_first_use is not None:
            self.on_first_use(index)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def row_shape(self) -> tuple[int, ...]:
        return self.shape[1:]

    def __len__(self) -> int:
        return self.shape[0]

    def chunk_path(self, index: int) -> Path:
        """Zarr v3 default chunk key encoding: `c/<i>/0/...` (one chunk along other axes)."""
        return self.array_dir.joinpath("c", str(index), *("0" for _ in self.row_shape))

    def chunk_nbytes(self) -> int:
        """Bytes of every chunk file: the full-size raw chunk and its checksum."""
        raw_bytes = self.chunk_frames * math.prod(self.row_shape) * self.dtype.itemsize
        return raw_bytes + self.checksum_bytes

    def map_chunk_file(self, index: int) -> np.ndarray:
        """Map chunk file `index` as it is on disk (StoreError when missing or of a wrong size)."""
        chunk_shape = (self.chunk_frames, *self.row_shape)
        path = self.chunk_path(index)
        expected_bytes = self.chunk_nbytes()
        try:
            found_bytes = path.stat().st_size
        except FileNotFoundError:
            raise StoreError(
                f"chunk file {path} is missing (every chunk is written); the store is damaged: "
                f"{REBUILD_HINT}"
            ) from None
        if found_bytes != expected_bytes:
            raise StoreError(
                f"chunk file {path} has {found_bytes} bytes, expected {expected_bytes} for an "
                f"uncompressed {chunk_shape} {self.dtype} chunk and its checksum; the store is "
                f"damaged: {REBUILD_HINT}"
            )
        global _open_chunk_maps
        mapped = np.memmap(path, dtype=self.dtype, mode="r", shape=chunk_shape)
        _open_chunk_maps += 1
        weakref.finalize(mapped, _chunk_map_closed)
        # A plain ndarray view of the map: np.memmap's Python-level __getitem__ and
        # __array_finalize__ cost more than copying a window piece.
        return mapped.view(np.ndarray)

    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows `[start, stop)`: a view inside one chunk, a copy across chunk boundaries."""
        _check_range(start, stop, self.shape[0])
        if start == stop:
            return np.empty((0, *self.row_shape), dtype=self.dtype)
        C = self.chunk_frames
        first = start // C
        if (stop - 1) // C == first:
            return self._chunk(first)[start - first * C : stop - first * C]
        return self.read_into(np.empty((stop - start, *self.row_shape), self.dtype), start)

    def read_into(self, out: np.ndarray, start: int) -> np.ndarray:
        """Copy rows `[start, start + len(out))` into `out`, one copy per chunk piece; returns
        `out`. The training loader's hot path: no intermediate array, and a dict lookup for
        chunks already mapped (a piece costs ~3 us of Python beside its copy, BENCHMARKS.md)."""
        rows = len(out)
        _check_range(start, start + rows, self.shape[0])
        C, maps = self.chunk_frames, self._maps
        index, offset = divmod(start, C)
        done = 0
        while done < rows:
            n = min(rows - done, C - offset)
            chunk = maps.get(index)
            if chunk is None:
                chunk = self._chunk(index)
            out[done : done + n] = chunk[offset : offset + n]
            index, offset, done = index + 1, 0, done + n
        return out

    def __getitem__(self, key: Any) -> np.ndarray:
        rows, rest = (key[0], key[1:]) if isinstance(key, tuple) else (key, ())
        if isinstance(rows, (int, np.integer)):
            index = int(rows) + (self.shape[0] if rows < 0 else 0)
            if not 0 <= index < self.shape[0]:
                raise IndexError(f"row {rows} out of range for {self.shape[0]} rows")
            return self.read(index, index + 1)[(0, *rest)]
        if not isinstance(rows, slice):
            raise TypeError(f"rows must be an int or a slice, found {type(rows).__name__}")
        start, stop, step = rows.indices(self.shape[0])
        if step == 1:
            out = self.read(start, max(start, stop))
        else:
            out = self.read(0, self.shape[0])[rows]
        return out[(slice(None), *rest)] if rest else out

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self.read(0, self.shape[0])
        return out if dtype is None else out.astype(dtype)

    def __repr__(self) -> str:
        return (
            f"ChunkMemmapArray({str(self.array_dir)!r}, shape={self.shape}, "
            f"chunk_frames={self.chunk_frames}, dtype={self.dtype})"
        )


_open_chunk_maps = 0  # chunk maps alive in this process (each holds a file descriptor)


def _chunk_map_closed() -> None:
    global _open_chunk_maps
    _open_chunk_maps -= 1


def _room_for_another_map() -> bool:
    """Whether this process may hold one more chunk map and still keep OPEN_FILES_RESERVE files
    for everything else; raises the soft open-file limit (doubling, up to the hard limit) first
    when needed."""
    try:
        import resource
    except ImportError:  # Windows: no per-process limit of this kind
        return True
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = _open_chunk_maps + 1 + OPEN_FILES_RESERVE
    if soft == resource.RLIM_INFINITY or needed <= soft:
        return True
    raised = max(2 * soft, needed)
    if hard != resource.RLIM_INFINITY:
        raised = min(raised, hard)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
    except (ValueError, OSError):  # e.g. macOS refuses more than OPEN_MAX
        return False
    return needed <= raised


# Fields whose value at a frame is the step of another field from the frame before (layout).
_DIFFERENCES = ((HP, HP_DOT), (JP, JV))


def seam_problem(features: ChunkMemmapArray, frame: int, sequence_starts: frozenset[int]) -> (
    str | None
):  # fmt: skip
    """Whether frame `frame` (the first of a chunk) continues frame `frame - 1` (the last of the
    chunk before): `hp_dot` and `jv` at a frame are the steps of `hp` and `jp` from the frame
    before, exactly up to float32 rounding, so a chunk swapped with another, moved, or
    overwritten with other values breaks the relation at its seams, which its checksum cannot
    see. None at the store's ends and at sequence starts (velocities restart there). Reads the
    two rows from the files (a neighbour is not mapped, nor checked, for this)."""
    if frame <= 0 or frame >= len(features) or frame in sequence_starts:
        return None
    before, after = (_raw_row(features, f).astype(np.float64) for f in (frame - 1, frame))
    worst, worst_field = 0.0, ""
    for value, step in _DIFFERENCES:
        a, b, d = before[value], after[value], after[step]
        # Each stored value is within half a float32 spacing of the exact one; twice that.
        tolerance = 2 * np.spacing(np.maximum(abs(a), abs(b)).astype(np.float32)) + np.spacing(
            abs(d).astype(np.float32)
        )
        excess = abs(b - a - d) - tolerance
        at = int(np.argmax(excess))
        if excess[at] > worst:
            worst, worst_field = float(abs(b - a - d)[at]), field_of_dim(step.start + at)
    if not worst_field:
        return None
    chunk = features.describe_chunk(frame // features.chunk_frames)
    return (
        f"{chunk}: frame {frame} does not continue frame {frame - 1} of its sequence "
        f"({worst_field} differs from the step by {worst:.3g}): chunks swapped, moved or "
        f"overwritten"
    )


def _raw_row(array: ChunkMemmapArray, frame: int) -> np.ndarray:
    index, row = divmod(frame, array.chunk_frames)
    row_shape = array.row_shape
    count = math.prod(row_shape)
    offset = row * count * array.dtype.itemsize
    values = np.fromfile(array.chunk_path(index), array.dtype, count=count, offset=offset)
    return values.reshape(row_shape)


def _check_range(start: int, stop: int, num_rows: int) -> None:
    if not 0 <= start <= stop <= num_rows:
        raise IndexError(f"frame range [{start}, {stop}) is not within [0, {num_rows}]")


def _raw_checksum_bytes(array: zarr.Array | ArrayV3Metadata) -> int | None:
    """Bytes after the raw C-order chunk in each chunk file of `array` (0, or 4 with crc32c), or
    None when the chunk files are not raw native-endian bytes (compressed, filtered, sharded)."""
    metadata = array.metadata if isinstance(array, zarr.Array) else array
    first, *rest = metadata.codecs
    if not isinstance(first, BytesCodec) or not all(isinstance(c, Crc32cCodec) for c in rest):
        return None
    endian = first.endian
    if sys.byteorder != "little" or not (endian is None or endian.value == "little"):
        return None
    return CHECKSUM_BYTES * len(rest)


def has_raw_chunks(array: zarr.Array | ArrayV3Metadata) -> bool:
    """True when every chunk file of `array` (or of an array with this metadata) is its raw
    C-order chunk (plus checksum bytes): what `memmap_array` maps once the array is local."""
    return _raw_checksum_bytes(array) is not None


def _local_dir(array: zarr.Array) -> Path | None:
    """Directory of `array` on the local file system, or None for remote stores."""
    store = array.store
    if isinstance(store, zarr.storage.LocalStore):
        return Path(store.root) / array.path
    if isinstance(store, zarr.storage.FsspecStore):
        protocols = store.fs.protocol
        protocols = (protocols,) if isinstance(protocols, str) else tuple(protocols)
        if "file" in protocols or "local" in protocols:
            return Path(store.path) / array.path
    return None


def memmap_array(
    array: zarr.Array, chunk_source: ChunkSource | None = None
) -> ChunkMemmapArray | None:
    """A `ChunkMemmapArray` over `array` (its chunk files fetched by `chunk_source` if given),
    or None when it is remote, compressed, or not chunked along its first axis only with the
    default `/` chunk key encoding."""
    meta = array.metadata
    array_dir = _local_dir(array)
    checksum_bytes = _raw_checksum_bytes(array)
    if array_dir is None or checksum_bytes is None:
        return None
    encoding = meta.chunk_key_encoding
    if getattr(encoding, "name", None) != "default" or encoding.separator != "/":
        return None
    chunk_shape = tuple(array.chunks)
    if chunk_shape[1:] != tuple(array.shape[1:]):
        return None
    return ChunkMemmapArray(
        array_dir, array.shape, chunk_shape[0], array.dtype, checksum_bytes, array_path=array.path,
        chunk_source=chunk_source,
    )  # fmt: skip


# --- chunk checks -----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Chunk:
    """One chunk file of an array, named for humans."""

    array: str  # path of the array in the store, e.g. "features", "stats/mean"
    coords: tuple[int, ...]
    key: str  # path of the chunk file in the store, e.g. "features/c/12/0"
    frames: tuple[int, int] | None  # [first, last] frame, for the frame arrays

    def __str__(self) -> str:
        index = self.coords[0] if len(self.coords) == 1 or not any(self.coords[1:]) else self.coords
        where = f"file {self.key}" + (
            f", frames {self.frames[0]}-{self.frames[1]}" if self.frames else ""
        )
        return f"{self.array} chunk {index} ({where})"


def _chunks_of(path: str, array: zarr.Array) -> list[_Chunk]:
    chunks = []
    frames = array.shape[0] if path in FRAME_ARRAYS else None
    for coords in product(*(range(n) for n in array.cdata_shape)):
        key = f"{path}/{array.metadata.encode_chunk_key(coords)}"
        span = None
        if frames is not None:
            first = coords[0] * array.chunks[0]
            span = (first, min(first + array.chunks[0], frames) - 1)
        chunks.append(_Chunk(path, tuple(coords), key, span))
    return chunks


def schema_object_keys(group: zarr.Group) -> list[str]:
    """Every object a complete store holds, by key, from its schema and array metadata: what to
    copy from a server that does not list directories (HTTP)."""
    arrays = {path: group[path] for path in _SCHEMA_ARRAYS}
    nodes = ("", SEQUENCES_GROUP, STATS_GROUP, *arrays)
    keys = [f"{node}/zarr.json".lstrip("/") for node in nodes]
    return keys + [chunk.key for path, array in arrays.items() for chunk in _chunks_of(path, array)]


def encoded_chunk_nbytes(array: zarr.Array) -> int | None:
    """Size of every chunk file of `array` when its codecs fix it (raw, crc32c), else None."""
    checksum_bytes = _raw_checksum_bytes(array)
    if checksum_bytes is None:
        return None
    return math.prod(array.chunks) * array.dtype.itemsize + checksum_bytes


def _has_checksums(array: zarr.Array) -> bool:
    return any(isinstance(c, Crc32cCodec) for c in array.metadata.codecs)


def _file_sizes(fs: fsspec.AbstractFileSystem, root: str, keys: list[str]) -> dict[str, int]:
    """Size of each file `root/key` that exists: a stat each locally; remotely one listing, then a
    size request for each key the listing did not show (HTTP servers may not list)."""
    root = root.rstrip("/")
    sizes = {}
    if isinstance(fs, LocalFileSystem):
        for key in keys:
            try:
                sizes[key] = os.stat(f"{root}/{key}").st_size
            except FileNotFoundError:
                pass
        return sizes
    try:
        listing = fs.find(root, detail=True)
    except (FileNotFoundError, NotImplementedError):
        listing = {}
    prefix = f"{root}/"
    for path, info in listing.items():
        if path.startswith(prefix) and info.get("size") is not None:  # HTTP lists no sizes
            sizes[path[len(prefix) :]] = int(info["size"])
    unlisted = [key for key in keys if key not in sizes]

    def size_of(key: str) -> int | None:
        try:
            return int(fs.size(f"{root}/{key}"))
        except FileNotFoundError:
            return None

    with ThreadPoolExecutor(UNLISTED_SIZE_THREADS) as pool:
        for key, size in zip(unlisted, pool.map(size_of, unlisted), strict=True):
            if size is not None:
                sizes[key] = size
    return sizes


CHECKSUM_MISMATCH = "checksum mismatch (the bytes changed after they were written)"


class ChunkDamageError(StoreError):
    """A chunk whose content is damaged (checksum, non-finite values, out of place); the message
    is one line naming the store, array, chunk, file and frames, and what to run."""

    @classmethod
    def of(cls, store_dir: Path, problem: str) -> ChunkDamageError:
        hint = VERIFY_HINT.format(url=store_dir)
        return cls(f"store {store_dir} is damaged: {problem}; {hint}; {REBUILD_HINT}")


def chunk_checksum_ok(data: np.ndarray | bytes) -> bool:
    """True when the bytes of one chunk file (any codec chain ending in crc32c) end with the
    little-endian CRC-32C of the bytes before it: the check zarr's codec makes on decode."""
    raw = np.frombuffer(data, dtype=np.uint8) if isinstance(data, bytes) else data
    if raw.size < CHECKSUM_BYTES:
        return False
    stored = int.from_bytes(raw[-CHECKSUM_BYTES:].tobytes(), "little")
    return google_crc32c.value(np.ascontiguousarray(raw[:-CHECKSUM_BYTES])) == stored


def is_checksum_error(error: BaseException) -> bool:
    """True for the error zarr's crc32c codec raises on a chunk whose bytes changed ("Stored and
    computed checksum do not match"): the one place that recognises it."""
    return "checksum" in str(error)


def _check_chunk_content(array: zarr.Array, chunk: _Chunk) -> list[str]:
    """Checksum (verified by zarr's crc32c codec on decode) and finiteness of one chunk."""
    try:
        values = array.get_block_selection(chunk.coords)
    except Exception as error:  # noqa: BLE001 - any decode failure is damage to name, not to raise
        if is_checksum_error(error):
            return [f"{chunk}: {CHECKSUM_MISMATCH}"]
        return [f"{chunk}: cannot be decoded ({type(error).__name__}: {error})"]
    problem = _non_finite_problem(values, chunk)
    return [] if problem is None else [problem]


def _non_finite_problem(values: np.ndarray, chunk: _Chunk) -> str | None:
    """The non-finite values of a float chunk, named by frame and dimension; None when finite
    (or not floats). A chunk at an array's end may hold fill rows past its last frame: they
    count like the others (the build writes them finite)."""
    if values.dtype.kind not in "fc":
        return None
    bad = ~np.isfinite(values)
    if not bad.any():
        return None
    at = tuple(int(i) for i in np.argwhere(bad)[0])
    where = f"element {at}"
    if chunk.frames is not None:
        where = f"frame {chunk.frames[0] + at[0]}"
        if chunk.array == FEATURES:
            where += f", dim {at[1]} ({field_of_dim(at[1])})"
        elif len(at) > 1:
            where += f", column {at[1]}"
    return f"{chunk}: {int(bad.sum())} non-finite values, first {values[at]} at {where}"


_SCHEMA_ARRAYS = (*FRAME_ARRAYS, f"{STATS_GROUP}/{STATS_MEAN}", f"{STATS_GROUP}/{STATS_STD}")


def _chunk_problems(
    group: zarr.Group,
    url: str,
    *,
    deep: bool,
    progress: bool,
    storage_options: Mapping[str, Any] | None,
) -> list[str]:
    arrays, problems = {}, []
    for path in _SCHEMA_ARRAYS:
        try:  # by name: listing a store's members needs a server that lists (HTTP may not)
            arrays[path] = group[path]
        except KeyError:
            problems.append(f"array {path} is missing")
    problems += [
        f"array {path} has no crc32c checksums (codecs "
        f"{[c.to_dict()['name'] for c in array.metadata.codecs]})"
        for path, array in arrays.items()
        if not _has_checksums(array)
    ]
    chunks = [chunk for path, array in arrays.items() for chunk in _chunks_of(path, array)]
    fs, root = filesystem(url, storage_options)
    sizes = _file_sizes(fs, root, [c.key for c in chunks])
    expected_nbytes = {path: encoded_chunk_nbytes(array) for path, array in arrays.items()}
    present = []
    for chunk in chunks:
        size, expected = sizes.get(chunk.key), expected_nbytes[chunk.array]
        if size is None:
            problems.append(f"{chunk}: missing")
        elif expected is not None and size != expected:
            problems.append(f"{chunk}: {size} bytes, expected {expected}")
        else:
            present.append(chunk)
    if deep:
        with (
            ThreadPoolExecutor(DEEP_CHECK_THREADS) as pool,
            tqdm(
                total=len(present), unit="chunk", desc="check chunks", disable=not progress
            ) as bar,
        ):
            for found in pool.map(lambda c: _check_chunk_content(arrays[c.array], c), present):
                problems += found
                bar.update()
    return problems


def check_chunks(
    url_or_path: str | Path,
    *,
    deep: bool,
    progress: bool = False,
    storage_options: dict | None = None,
) -> list[str]:
    """Problems with the chunk files of a store, one human-readable line each; empty when good.

    `deep=False`: every array of the schema is there and every chunk file of each exists with
    the size its codecs give (a stat per chunk locally, one listing remotely).
    `deep=True`: also every chunk's crc32c checksum and that every float value is finite (reads
    every byte; a tqdm bar with `progress`). Needs no complete store, so copies can be checked
    before `complete` is written. Each line names the array, chunk, file and frames.
    """
    url = _url_of(url_or_path)
    storage_options = url_options(url, storage_options)
    try:
        group = zarr.open_group(url, mode="r", storage_options=storage_options)
    except FileNotFoundError:
        return [f"no Zarr store at {_display_path(url)}"]
    except ImportError as error:
        raise MissingExtraError(missing_extra_message(url, error)) from None
    return _chunk_problems(
        group, url, deep=deep, progress=progress, storage_options=storage_options
    )


# --- the store --------------------------------------------------------------------------------


def _url_of(path_or_url: str | Path) -> str:
    text = str(path_or_url)
    if "://" in text:
        return text
    return str(Path(text).expanduser().resolve())


def _display_path(url: str) -> str:
    parsed = urlparse(url)
    return parsed.path if parsed.scheme == "file" else url


class FeatureStore:
    """An opened, validated feature store. Build it with `open_store`.

    Attributes:
        url: local path (resolved) or fsspec URL the store was opened from.
        attrs: root attributes; layout: the feature layout it was built with; fps: frame rate.
        fingerprint: sha256 over root attributes, sequence table and stats (`compute_fingerprint`).
        features (N, 294) float32, timestamp_ns (N,) int64, contact (N, 4) float32: slicing rows
            gives an np.ndarray; `ChunkMemmapArray`s when `is_memory_mapped`, else `zarr.Array`s.
        zarr_arrays: the same three as `zarr.Array`s, always.
        sequences: the sequence table; stats: train-split `NormStats` (float32), with the stored
            float64 values in `stats_mean_f64`, `stats_std_f64` and the attributes of `stats/`
            (count, window_frames, stride_frames, std_floor, split) in `stats_attrs`.
        num_frames: N; chunk_frames: frames per chunk.
        chunk_source: where missing chunk files come from (a local cache of a URL), or None.
    """

    def __init__(
        self,
        url: str,
        group: zarr.Group,
        memory_map: bool,
        storage_options: dict[str, Any] | None,
        check_chunk_files: bool = True,
        check_chunks_on_use: bool = False,
        chunk_source: ChunkSource | None = None,
    ) -> None:
        self.url = url
        self._memory_map_requested = memory_map
        self._storage_options = storage_options
        self._check_chunks_on_use = check_chunks_on_use
        self.chunk_source = chunk_source
        self.attrs: dict = group.attrs.asdict()
        _check_root_attrs(self.attrs, url)
        self.layout: dict = self.attrs[ATTR_LAYOUT]
        self.fps = float(self.attrs[ATTR_FPS])

        arrays = {}
        for name in FRAME_ARRAYS:
            try:
                arrays[name] = group[name]
            except KeyError:
                raise StoreError(f"store {url} has no `{name}` array; {REBUILD_HINT}") from None
        self.num_frames = int(arrays[FEATURES].shape[0])
        expected_shapes = {
            FEATURES: (self.num_frames, FEATURE_DIM),
            TIMESTAMP_NS: (self.num_frames,),
            CONTACT: (self.num_frames, NUM_CONTACTS),
        }
        expected_dtypes = {FEATURES: "float32", TIMESTAMP_NS: "int64", CONTACT: "float32"}
        for name, shape in expected_shapes.items():
            found = (tuple(arrays[name].shape), str(arrays[name].dtype))
            if found != (shape, expected_dtypes[name]):
                raise StoreError(
                    f"store {url}: `{name}` is {found[1]} of shape {found[0]}, expected "
                    f"{expected_dtypes[name]} of shape {shape}; {REBUILD_HINT}"
                )
        self.zarr_arrays: dict[str, zarr.Array] = arrays

        self.sequences = _read_sequences(group, url, self.num_frames)
        self.stats, self.stats_mean_f64, self.stats_std_f64 = _read_stats(group, url)
        self.stats_attrs: dict = group[STATS_GROUP].attrs.asdict()
        self.fingerprint = compute_fingerprint(
            self.attrs,
            table_to_json(self.sequences),
            self.stats_mean_f64,
            self.stats_std_f64,
            self.stats_attrs,
        )
        recorded = self.attrs.get(ATTR_FINGERPRINT)
        if recorded != self.fingerprint:
            raise StoreError(
                f"store {url}: its root attributes (fps, layout, ...), sequence table or stats do "
                f"not match the fingerprint recorded at build time ({recorded} vs "
                f"{self.fingerprint}); the metadata was modified or damaged: {REBUILD_HINT}"
            )
        if check_chunk_files:
            problems = _chunk_problems(
                group, url, deep=False, progress=False, storage_options=storage_options
            )
            if problems:
                more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
                raise StoreError(
                    f"store {url} is damaged: {'; '.join(problems[:3])}{more}; "
                    f"{VERIFY_HINT.format(url=_display_path(url))}; {REBUILD_HINT}, or copy it "
                    f"again from where it came from"
                )

        mapped = (
            {name: memmap_array(array, chunk_source) for name, array in arrays.items()}
            if memory_map
            else {}
        )
        self.is_memory_mapped = memory_map and all(m is not None for m in mapped.values())
        if memory_map and not self.is_memory_mapped:
            logger.info(
                "store %s is remote or compressed: reading through zarr (no memory map)", url
            )
        source = mapped if self.is_memory_mapped else arrays
        self.features = source[FEATURES]
        self.timestamp_ns = source[TIMESTAMP_NS]
        self.contact = source[CONTACT]
        if self.is_memory_mapped and check_chunks_on_use:
            for array in mapped.values():
                array.check_on_first_use = True
            self.features.on_first_use = self._check_frame_chunk

    def _check_frame_chunk(self, index: int) -> None:
        """First use of `features` chunk `index` (its checksum and values already checked):
        check the chunks holding the same frames in `timestamp_ns` and `contact`, and that the
        chunk continues its neighbours (`seam_problem`); raises `ChunkDamageError`."""
        first, last = self.features.describe_chunk(index).frames
        for array in (self.timestamp_ns, self.contact):
            for other in range(first // array.chunk_frames, last // array.chunk_frames + 1):
                array.ensure_checked(other)
        starts, features = self._sequence_starts, self.features
        for seam in (first, last + 1):
            problem = seam_problem(features, seam, starts)
            if problem is not None:  # a damaged chunk on either side is the better name for it
                sides = (seam - 1, seam)
                found = (features.verify_chunk(f // features.chunk_frames) for f in sides)
                problem = next((p for p in found if p is not None), problem)
                raise ChunkDamageError.of(features.store_dir, problem)

    @cached_property
    def _sequence_starts(self) -> frozenset[int]:
        return frozenset(r.start for r in self.sequences)

    def split(self, name: str) -> tuple[SequenceRecord, ...]:
        """Sequences of split `name` (one of SPLITS), in store order."""
        if name not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, found {name!r}")
        return tuple(r for r in self.sequences if r.split == name)

    def read_features(self, start: int, stop: int) -> np.ndarray:
        """Frames `[start, stop)` of `features`, (stop - start, 294) float32.

        Memory-mapped stores return a view when the range lies inside one chunk and a copy
        when it crosses chunk boundaries; other stores read through zarr.
        """
        if self.is_memory_mapped:
            return self.features.read(start, stop)
        _check_range(start, stop, self.num_frames)
        return np.asarray(self.features[start:stop])

    def read_features_into(self, out: np.ndarray, start: int) -> np.ndarray:
        """Copy frames `[start, start + len(out))` of `features` into `out`; returns `out`."""
        if self.is_memory_mapped:
            return self.features.read_into(out, start)
        _check_range(start, start + len(out), self.num_frames)
        out[:] = self.features[start : start + len(out)]
        return out

    def prefetch_features(self, starts: np.ndarray, lengths: np.ndarray) -> None:
        """Start fetching the chunks of `features` frames `[start, start + length)` holds that
        are not mapped yet (a store read through a chunk cache); returns at once. Cheap when
        they all are: the warm training loader calls it for every batch."""
        if self.chunk_source is None or not self.is_memory_mapped:
            return
        C, mapped = self.features.chunk_frames, self.features.is_mapped_mask
        first = np.asarray(starts, dtype=np.int64) // C
        last = (np.asarray(starts) + np.asarray(lengths) - 1) // C
        if (last - first <= 1).all() and mapped[first].all() and mapped[last].all():
            return  # warm: every chunk of these windows is mapped (windows within two chunks)
        missing = {
            i for a, b in zip(first.tolist(), last.tolist()) for i in range(a, b + 1)
            if not mapped[i]
        }  # fmt: skip
        self.chunk_source.prefetch(self.features, sorted(missing))

    @property
    def chunk_frames(self) -> int:
        return int(self.zarr_arrays[FEATURES].chunks[0])

    def __reduce__(self) -> tuple:
        # Reopen (and revalidate the metadata) in the receiving process, e.g. a DataLoader
        # worker; the chunk files were checked when this one was opened.
        return (
            _reopen,
            (self.url, self._memory_map_requested, self._storage_options,
             self._check_chunks_on_use, self.chunk_source),
        )  # fmt: skip

    def __repr__(self) -> str:
        return (
            f"FeatureStore({self.url!r}, frames={self.num_frames}, sequences="
            f"{len(self.sequences)}, fps={self.fps}, memory_mapped={self.is_memory_mapped})"
        )


def _reopen(
    url: str, memory_map: bool, storage_options: dict | None, check_chunks_on_use: bool,
    chunk_source: ChunkSource | None,
) -> FeatureStore:  # fmt: skip
    return open_store(
        url, memory_map=memory_map, storage_options=storage_options, check_chunk_files=False,
        check_chunks_on_use=check_chunks_on_use, chunk_source=chunk_source,
    )  # fmt: skip


def _check_root_attrs(attrs: Mapping[str, Any], url: str) -> None:
    out = attrs.get(ATTR_BUILD_CONFIG, {}).get("out", "STORE")
    check_root_attrs(attrs, url, FEATURE_SCHEMA, RESUME_HINT.format(out=out))
    expected_layout = json.loads(json.dumps(layout_description()))
    if attrs.get(ATTR_LAYOUT) != expected_layout:
        raise StoreError(
            f"store {url} was built for feature layout {attrs.get(ATTR_LAYOUT)!r}, but "
            f"shared.layout defines {expected_layout!r}; {REBUILD_HINT} with this code version"
        )
    for key in (ATTR_FPS, ATTR_FINGERPRINT):
        if key not in attrs:
            raise StoreError(f"store {url} lacks root attribute {key!r}; {REBUILD_HINT}")


def _read_sequences(group: zarr.Group, url: str, num_frames: int) -> tuple[SequenceRecord, ...]:
    where = f"store {url}"
    records = table_from_json(read_table(group, TABLE_COLUMNS, where, REBUILD_HINT), where)
    frame = 0
    for r in records:
        if r.start != frame or r.length <= 0:
            raise StoreError(
                f"store {url}: sequence {r.name!r} spans [{r.start}, {r.stop}), expected it to "
                f"start at frame {frame} with a positive length; {REBUILD_HINT}"
            )
        frame = r.stop
    if frame != num_frames:
        raise StoreError(
            f"store {url}: sequences cover {frame} frames but `features` has {num_frames}; "
            f"{REBUILD_HINT}"
        )
    return records


def _read_stats(group: zarr.Group, url: str) -> tuple[NormStats, np.ndarray, np.ndarray]:
    """The stats as `NormStats` (float32) plus the stored float64 mean and std."""
    try:
        stats = group[STATS_GROUP]
        mean = np.asarray(stats[STATS_MEAN][:], dtype=np.float64)
        std = np.asarray(stats[STATS_STD][:], dtype=np.float64)
        count = int(stats.attrs[STATS_ATTR_COUNT])
        window_frames = int(stats.attrs[ATTR_WINDOW_FRAMES])
    except KeyError as missing:
        raise StoreError(f"store {url}: stats lack {missing}; {REBUILD_HINT}") from None
    if mean.shape != (FEATURE_DIM,) or std.shape != (FEATURE_DIM,):
        raise StoreError(
            f"store {url}: stats have shapes {mean.shape}/{std.shape}, expected ({FEATURE_DIM},)"
        )
    if not (np.isfinite(mean).all() and np.isfinite(std).all() and (std > 0).all()):
        raise StoreError(
            f"store {url}: stats are not finite or std is not positive; {REBUILD_HINT}"
        )
    stats = NormStats(mean.astype(np.float32), std.astype(np.float32), count, window_frames)
    return stats, mean, std


def open_store(
    path_or_url: str | Path,
    memory_map: bool = True,
    storage_options: dict[str, Any] | None = None,
    check_chunk_files: bool = True,
    check_chunks_on_use: bool = False,
    chunk_source: ChunkSource | None = None,
) -> FeatureStore:
    """Open and validate a complete feature store at a local path or an fsspec URL.

    Raises `StoreError` (with what to do) for a missing, incomplete, unknown-version or
    layout-mismatched store, metadata that does not match its fingerprint, and (with
    `check_chunk_files`) a missing or wrongly sized chunk file. With `memory_map` (default)
    local uncompressed stores are read through `np.memmap` chunk maps; otherwise, and for
    remote or compressed stores, through `zarr.Array`. With `check_chunks_on_use` a memory-
    mapped store checks each frame chunk the first time this process reads it (checksums of
    all frame arrays' chunks, finite values, continuity with the neighbouring chunks:
    `ChunkMemmapArray`, `seam_problem`) and raises `ChunkDamageError`; zarr checks the
    checksum of every chunk it decodes anyway. `chunk_source` makes chunk files present as
    they are first mapped (a local chunk cache of a URL: `shared.chunk_cache`).
    """
    url = _url_of(path_or_url)
    storage_options = url_options(url, storage_options)
    try:
        group = zarr.open_group(url, mode="r", storage_options=storage_options)
        return FeatureStore(
            url,
            group,
            memory_map,
            storage_options,
            check_chunk_files,
            check_chunks_on_use,
            chunk_source,
        )
    except StoreError:
        raise
    except ImportError as error:
        raise StoreError(missing_extra_message(url, error)) from None
    except FileNotFoundError:
        raise StoreError(
            f"no Zarr store at {_display_path(url)}; build one with "
            f"`python -m preprocess build DATA --out STORE`"
        ) from None
    except _MALFORMED_METADATA as error:
        # Truncated, garbage or hostile metadata (zarr.json is untrusted input): one line.
        first_line = (str(error).strip().splitlines() or [""])[0][:200]
        raise StoreError(
            f"store {_display_path(url)} has unreadable or malformed metadata (zarr.json: "
            f"{type(error).__name__}: {first_line}); {REBUILD_HINT}"
        ) from None


# What zarr and the attribute checks raise on a damaged or hostile zarr.json: invalid JSON or
# UTF-8, wrong JSON types, nesting deep enough to exhaust the parser, an unreadable file.
_MALFORMED_METADATA = (
    ValueError, TypeError, KeyError, AttributeError, IndexError, RecursionError, PermissionError,
    IsADirectoryError, zarr.errors.BaseZarrError,
)  # fmt: skip
