"""The feature store (schema v1): its layout, and the reader every consumer uses.

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

Memory mapping: an uncompressed Zarr v3 chunk (codecs = [bytes, little endian]) is the raw
C-order array, stored full-size even at the array's end. For local stores `open_store`
therefore maps each chunk file of `features` (`features/c/<i>/0`) with `np.memmap`, so slicing
a window is a view (or one copy when the window crosses a chunk boundary) instead of a trip
through zarr's codec pipeline. Chunks that were never written read as the fill value.

This module must not import h5py or hdf5plugin: the trainer imports it.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import zarr
from zarr.codecs import BytesCodec

from shared.layout import FEATURE_DIM, layout_description

logger = logging.getLogger(__name__)

SCHEMA_NAME = "nymeria-motion-features"
SCHEMA_VERSION = 1
SPLITS: tuple[str, ...] = ("train", "val", "test")

# --- node names -------------------------------------------------------------------------------
FEATURES = "features"
TIMESTAMP_NS = "timestamp_ns"
CONTACT = "contact"
SEQUENCES_GROUP = "sequences"
STATS_GROUP = "stats"
STATS_MEAN = "mean"
STATS_STD = "std"
FRAME_ARRAYS: tuple[str, ...] = (FEATURES, TIMESTAMP_NS, CONTACT)
NUM_CONTACTS = 4

# --- root attributes --------------------------------------------------------------------------
ATTR_SCHEMA = "schema"  # {"name": SCHEMA_NAME, "version": SCHEMA_VERSION}
ATTR_LAYOUT = "feature_layout"  # shared.layout.layout_description()
ATTR_FPS = "fps"  # frame rate of the stored frames
ATTR_SOURCE_FPS = "source_fps"  # frame rate detected in the source timestamps
ATTR_BUILD_CONFIG = "build_config"  # every build option, by name
ATTR_PACKAGE_VERSION = "package_version"
ATTR_GIT_REVISION = "git_revision"  # of the code that built the store
ATTR_SOURCE = "source"  # {"root": str, "file_count": int, "files_used": int}
ATTR_PROBLEMS = "problems"  # [{"file", "kind", "reason"}], one per skipped file
ATTR_STITCHING = "stitching"  # counts of gaps and dropped (overlapping/duplicate) frames
ATTR_CREATED = "created"  # ISO 8601, UTC
ATTR_FINGERPRINT = "fingerprint"  # compute_fingerprint(...) at build time
ATTR_COMPLETE = "complete"  # True, written last

# --- group attributes -------------------------------------------------------------------------
ATTR_TABLE = "table"  # on SEQUENCES_GROUP
STATS_ATTR_COUNT = "count"
STATS_ATTR_WINDOW_FRAMES = "window_frames"
STATS_ATTR_STRIDE_FRAMES = "stride_frames"
STATS_ATTR_STD_FLOOR = "std_floor"
STATS_ATTR_SPLIT = "split"

TABLE_COLUMNS: tuple[str, ...] = ("name", "participant", "start", "length", "split", "source_files")

REBUILD_HINT = "rebuild it with `python -m preprocess build DATA --out STORE --overwrite`"
RESUME_HINT = "finish it with `python -m preprocess build DATA --out {out} --resume`"
"""`.format(out=...)` with the store path the build was given (`STORE` when unknown)."""

# Open chunk maps per array; each holds a file descriptor (mmap dups it), so keep them bounded.
MAX_OPEN_CHUNK_MAPS = 256


class StoreError(ValueError):
    """A store that cannot be used as it is; the message says what to do."""


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


# --- sequence table <-> JSON ------------------------------------------------------------------


def table_to_json(records: Sequence[SequenceRecord]) -> dict[str, list]:
    """Column-wise JSON of the sequence table (the `table` attribute of `sequences/`)."""
    return {
        "name": [r.name for r in records],
        "participant": [r.participant for r in records],
        "start": [int(r.start) for r in records],
        "length": [int(r.length) for r in records],
        "split": [r.split for r in records],
        "source_files": [list(r.source_files) for r in records],
    }


def table_from_json(table: Mapping[str, Any], where: str) -> tuple[SequenceRecord, ...]:
    """Inverse of `table_to_json`, checking columns, splits and contiguity."""
    missing = [c for c in TABLE_COLUMNS if c not in table]
    if missing:
        raise StoreError(f"{where}: sequence table lacks columns {missing}; {REBUILD_HINT}")
    lengths = {c: len(table[c]) for c in TABLE_COLUMNS}
    if len(set(lengths.values())) != 1:
        raise StoreError(
            f"{where}: sequence table columns differ in length {lengths}; {REBUILD_HINT}"
        )
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
    layout: Mapping[str, Any],
    table: Mapping[str, list],
    mean: np.ndarray,
    std: np.ndarray,
    count: int,
    window_frames: int,
) -> str:
    """sha256 over schema, layout, sequence table and stats: a stable content id of a build.

    `mean`/`std` are hashed as the stored float64 bytes (little endian), so two builds with
    byte-identical content have the same fingerprint whatever machine reads them.
    """
    header = {
        "schema": {"name": SCHEMA_NAME, "version": SCHEMA_VERSION},
        "layout": layout,
        "table": table,
        "stats": {"count": int(count), "window_frames": int(window_frames)},
    }
    digest = hashlib.sha256()
    digest.update(json.dumps(header, sort_keys=True, separators=(",", ":")).encode())
    digest.update(np.ascontiguousarray(mean, dtype="<f8").tobytes())
    digest.update(np.ascontiguousarray(std, dtype="<f8").tobytes())
    return digest.hexdigest()


# --- memory-mapped chunk access ---------------------------------------------------------------


class ChunkMemmapArray:
    """Read-only `(N, *row_shape)` array over the raw chunk files of an uncompressed Zarr v3
    array chunked along its first axis only.

    Slicing rows returns an `np.ndarray`: a view into one chunk's memory map when the rows lie
    inside one chunk, else a copy. Picklable (maps are reopened lazily after unpickling).
    """

    def __init__(
        self,
        array_dir: Path,
        shape: tuple[int, ...],
        chunk_frames: int,
        dtype: np.dtype,
        fill_value: Any,
    ) -> None:
        self.array_dir = Path(array_dir)
        self.shape = tuple(int(s) for s in shape)
        self.chunk_frames = int(chunk_frames)
        self.dtype = np.dtype(dtype)
        self.fill_value = fill_value
        self.num_chunks = -(-self.shape[0] // self.chunk_frames)
        self._init_cache()

    def _init_cache(self) -> None:
        self._chunk = functools.lru_cache(maxsize=MAX_OPEN_CHUNK_MAPS)(self._map_chunk)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        del state["_chunk"]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._init_cache()

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

    def _map_chunk(self, index: int) -> np.ndarray:
        chunk_shape = (self.chunk_frames, *self.row_shape)
        path = self.chunk_path(index)
        expected_bytes = int(np.prod(chunk_shape)) * self.dtype.itemsize
        try:
            found_bytes = path.stat().st_size
        except FileNotFoundError:
            # Never written: Zarr omits chunks that hold only the fill value.
            filled = np.full(chunk_shape, self.fill_value, dtype=self.dtype)
            filled.flags.writeable = False
            return filled
        if found_bytes != expected_bytes:
            raise StoreError(
                f"chunk file {path} has {found_bytes} bytes, expected {expected_bytes} for an "
                f"uncompressed {chunk_shape} {self.dtype} chunk; the store is damaged: "
                f"{REBUILD_HINT}"
            )
        return np.memmap(path, dtype=self.dtype, mode="r", shape=chunk_shape)

    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows `[start, stop)`: a view inside one chunk, a copy across chunk boundaries."""
        _check_range(start, stop, self.shape[0])
        if start == stop:
            return np.empty((0, *self.row_shape), dtype=self.dtype)
        C = self.chunk_frames
        first, last = start // C, (stop - 1) // C
        if first == last:
            return self._chunk(first)[start - first * C : stop - first * C]
        out = np.empty((stop - start, *self.row_shape), dtype=self.dtype)
        for index in range(first, last + 1):
            lo, hi = max(start, index * C), min(stop, (index + 1) * C)
            out[lo - start : hi - start] = self._chunk(index)[lo - index * C : hi - index * C]
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


def _check_range(start: int, stop: int, num_rows: int) -> None:
    if not 0 <= start <= stop <= num_rows:
        raise IndexError(f"frame range [{start}, {stop}) is not within [0, {num_rows}]")


def _is_raw_little_endian(array: zarr.Array) -> bool:
    """Whether each chunk file of `array` is its raw C-order bytes (no compressor/filter)."""
    codecs = array.metadata.codecs
    if len(codecs) != 1 or not isinstance(codecs[0], BytesCodec):
        return False
    endian = codecs[0].endian
    return sys.byteorder == "little" and (endian is None or endian.value == "little")


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


def memmap_array(array: zarr.Array) -> ChunkMemmapArray | None:
    """A `ChunkMemmapArray` over `array`, or None when it is remote, compressed, or not
    chunked along its first axis only with the default `/` chunk key encoding."""
    meta = array.metadata
    array_dir = _local_dir(array)
    if array_dir is None or not _is_raw_little_endian(array):
        return None
    encoding = meta.chunk_key_encoding
    if getattr(encoding, "name", None) != "default" or encoding.separator != "/":
        return None
    chunk_shape = tuple(array.chunks)
    if chunk_shape[1:] != tuple(array.shape[1:]):
        return None
    fill_value = meta.fill_value
    return ChunkMemmapArray(array_dir, array.shape, chunk_shape[0], array.dtype, fill_value)


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
        fingerprint: sha256 over schema, layout, sequence table and stats (`compute_fingerprint`).
        features (N, 294) float32, timestamp_ns (N,) int64, contact (N, 4) float32: slicing rows
            gives an np.ndarray; `ChunkMemmapArray`s when `is_memory_mapped`, else `zarr.Array`s.
        zarr_arrays: the same three as `zarr.Array`s, always.
        sequences: the sequence table; stats: train-split `NormStats` (float32), with the stored
            float64 values in `stats_mean_f64`, `stats_std_f64`.
        num_frames: N; chunk_frames: frames per chunk.
    """

    def __init__(
        self,
        url: str,
        group: zarr.Group,
        memory_map: bool,
        storage_options: dict[str, Any] | None,
    ) -> None:
        self.url = url
        self._memory_map_requested = memory_map
        self._storage_options = storage_options
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
        self.fingerprint = compute_fingerprint(
            self.layout,
            table_to_json(self.sequences),
            self.stats_mean_f64,
            self.stats_std_f64,
            self.stats.count,
            self.stats.window_frames,
        )
        recorded = self.attrs.get(ATTR_FINGERPRINT)
        if recorded != self.fingerprint:
            raise StoreError(
                f"store {url}: sequence table or stats do not match the fingerprint recorded at "
                f"build time ({recorded} vs {self.fingerprint}); the metadata was modified or "
                f"damaged: {REBUILD_HINT}"
            )

        mapped = (
            {name: memmap_array(array) for name, array in arrays.items()} if memory_map else {}
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

    @property
    def chunk_frames(self) -> int:
        return int(self.zarr_arrays[FEATURES].chunks[0])

    def __reduce__(self) -> tuple:
        # Reopen (and revalidate) in the receiving process, e.g. a DataLoader worker.
        return (_reopen, (self.url, self._memory_map_requested, self._storage_options))

    def __repr__(self) -> str:
        return (
            f"FeatureStore({self.url!r}, frames={self.num_frames}, sequences="
            f"{len(self.sequences)}, fps={self.fps}, memory_mapped={self.is_memory_mapped})"
        )


def _reopen(url: str, memory_map: bool, storage_options: dict | None) -> FeatureStore:
    return open_store(url, memory_map=memory_map, storage_options=storage_options)


def _check_root_attrs(attrs: Mapping[str, Any], url: str) -> None:
    schema = attrs.get(ATTR_SCHEMA)
    if not isinstance(schema, Mapping) or schema.get("name") != SCHEMA_NAME:
        raise StoreError(
            f"{url} is not a {SCHEMA_NAME!r} store (root attribute {ATTR_SCHEMA!r} is "
            f"{schema!r}); build one with `python -m preprocess build DATA --out STORE`"
        )
    version = schema.get("version")
    if version != SCHEMA_VERSION:
        raise StoreError(
            f"store {url} has schema version {version!r}, this code reads version "
            f"{SCHEMA_VERSION}; {REBUILD_HINT} (or use the code version that wrote it: "
            f"package {attrs.get(ATTR_PACKAGE_VERSION)!r})"
        )
    if attrs.get(ATTR_COMPLETE) is not True:
        out = attrs.get(ATTR_BUILD_CONFIG, {}).get("out", "STORE")
        raise StoreError(
            f"store {url} is incomplete (its build was interrupted or is still running): "
            f"{RESUME_HINT.format(out=out)}"
        )
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
    try:
        table = group[SEQUENCES_GROUP].attrs[ATTR_TABLE]
    except KeyError:
        raise StoreError(f"store {url} has no sequence table; {REBUILD_HINT}") from None
    records = table_from_json(table, f"store {url}")
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
        window_frames = int(stats.attrs[STATS_ATTR_WINDOW_FRAMES])
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
) -> FeatureStore:
    """Open and validate a complete feature store at a local path or an fsspec URL.

    Raises `StoreError` (with what to do) for a missing, incomplete, unknown-version or
    layout-mismatched store. With `memory_map` (default) local uncompressed stores are read
    through `np.memmap` chunk maps; otherwise, and for remote or compressed stores, through
    `zarr.Array`.
    """
    url = _url_of(path_or_url)
    try:
        group = zarr.open_group(url, mode="r", storage_options=storage_options)
    except FileNotFoundError:
        raise StoreError(
            f"no Zarr store at {_display_path(url)}; build one with "
            f"`python -m preprocess build DATA --out STORE`"
        ) from None
    return FeatureStore(url, group, memory_map, storage_options)
