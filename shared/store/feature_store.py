"""The feature store object every consumer uses: `open_store` validates a store's metadata
(schema, layout, sequence table, stats, fingerprint, chunk files) and returns a `FeatureStore`
that reads frames through memory maps (local, uncompressed) or zarr.

This module must not import h5py or hdf5plugin: the trainer imports it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from functools import cached_property, partial
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import zarr

from shared.errors import UserError
from shared.layout import FEATURE_DIM, layout_description
from shared.remote import missing_extra_message, url_options
from shared.store.checks import (
    VERIFY_HINT,
    ChunkDamageError,
    chunk_problems,
    display_path,
    seam_problem,
    url_of,
)
from shared.store.memmap import ChunkMemmapArray, ChunkSource, check_range, memmap_array
from shared.store.schema import (
    ATTR_BUILD_CONFIG,
    ATTR_FINGERPRINT,
    ATTR_FPS,
    ATTR_LAYOUT,
    ATTR_WINDOW_FRAMES,
    CONTACT,
    FEATURE_SCHEMA,
    FEATURES,
    FRAME_ARRAYS,
    NUM_CONTACTS,
    REBUILD_HINT,
    RESUME_HINT,
    SEQUENCES_GROUP,
    SPLITS,
    STATS_ATTR_COUNT,
    STATS_GROUP,
    STATS_MEAN,
    STATS_STD,
    TABLE_COLUMNS,
    TIMESTAMP_NS,
    NormStats,
    SequenceRecord,
    StoreError,
    check_root_attrs,
    compute_fingerprint,
    read_table,
    table_from_json,
    table_to_json,
)

logger = logging.getLogger(__name__)

T = TypeVar("T")


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
        self.fps = read_metadata(url, "zarr.json", lambda: float(self.attrs[ATTR_FPS]))
        arrays = _frame_arrays(group, url)
        self.num_frames = int(arrays[FEATURES].shape[0])
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
        _check_fingerprint(self.attrs.get(ATTR_FINGERPRINT), self.fingerprint, url)
        if check_chunk_files:
            _check_chunk_files(group, url, storage_options)
        mapped = _memory_maps(arrays, chunk_source, url) if memory_map else None
        self.is_memory_mapped = mapped is not None
        source = arrays if mapped is None else mapped
        self.features, self.timestamp_ns, self.contact = (source[n] for n in FRAME_ARRAYS)
        if mapped is not None and check_chunks_on_use:
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
        check_range(start, stop, self.num_frames)
        return np.asarray(self.features[start:stop])

    def read_features_into(self, out: np.ndarray, start: int) -> np.ndarray:
        """Copy frames `[start, start + len(out))` of `features` into `out`; returns `out`."""
        if self.is_memory_mapped:
            return self.features.read_into(out, start)
        check_range(start, start + len(out), self.num_frames)
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
            i
            for a, b in zip(first.tolist(), last.tolist())
            for i in range(a, b + 1)
            if not mapped[i]
        }
        self.chunk_source.prefetch(self.features, sorted(missing))

    @property
    def chunk_frames(self) -> int:
        return int(self.zarr_arrays[FEATURES].chunks[0])

    def __reduce__(self) -> tuple:
        # Reopen (and revalidate the metadata) in the receiving process, e.g. a DataLoader
        # worker; the chunk files were checked when this one was opened.
        return (
            _reopen,
            (
                self.url,
                self._memory_map_requested,
                self._storage_options,
                self._check_chunks_on_use,
                self.chunk_source,
            ),
        )

    def __repr__(self) -> str:
        return (
            f"FeatureStore({self.url!r}, frames={self.num_frames}, sequences="
            f"{len(self.sequences)}, fps={self.fps}, memory_mapped={self.is_memory_mapped})"
        )


def _reopen(
    url: str,
    memory_map: bool,
    storage_options: dict | None,
    check_chunks_on_use: bool,
    chunk_source: ChunkSource | None,
) -> FeatureStore:
    return open_store(
        url,
        memory_map=memory_map,
        storage_options=storage_options,
        check_chunk_files=False,
        check_chunks_on_use=check_chunks_on_use,
        chunk_source=chunk_source,
    )


def _frame_arrays(group: zarr.Group, url: str) -> dict[str, zarr.Array]:
    """The frame arrays of `group`, by name, checked to exist with the schema's shapes and
    dtypes (as many frames as `features`)."""
    arrays = {
        name: read_metadata(url, f"{name}/zarr.json", partial(_frame_array, group, url, name))
        for name in FRAME_ARRAYS
    }
    num_frames = int(arrays[FEATURES].shape[0])
    expected_shapes = {
        FEATURES: (num_frames, FEATURE_DIM),
        TIMESTAMP_NS: (num_frames,),
        CONTACT: (num_frames, NUM_CONTACTS),
    }
    expected_dtypes = {FEATURES: "float32", TIMESTAMP_NS: "int64", CONTACT: "float32"}
    for name, shape in expected_shapes.items():
        found = (tuple(arrays[name].shape), str(arrays[name].dtype))
        if found != (shape, expected_dtypes[name]):
            raise StoreError(
                f"store {url}: `{name}` is {found[1]} of shape {found[0]}, expected "
                f"{expected_dtypes[name]} of shape {shape}; {REBUILD_HINT}"
            )
    return arrays


def _frame_array(group: zarr.Group, url: str, name: str) -> zarr.Array:
    array = group.get(name)  # None when missing; a group where the array should be is refused
    if not isinstance(array, zarr.Array):
        raise StoreError(f"store {url} has no `{name}` array; {REBUILD_HINT}")
    return array


def _check_fingerprint(recorded: Any, computed: str, url: str) -> None:
    """StoreError unless the fingerprint recorded at build time is the one computed on open."""
    if recorded != computed:
        raise StoreError(
            f"store {url}: its root attributes (fps, layout, ...), sequence table or stats do "
            f"not match the fingerprint recorded at build time ({recorded} vs "
            f"{computed}); the metadata was modified or damaged: {REBUILD_HINT}"
        )


def _check_chunk_files(group: zarr.Group, url: str, storage_options: dict | None) -> None:
    """Every chunk file of the store there with its size (`chunk_problems`), else StoreError
    naming the first three problems."""
    problems = chunk_problems(
        group, url, deep=False, progress=False, storage_options=storage_options
    )
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise StoreError(
            f"store {url} is damaged: {'; '.join(problems[:3])}{more}; "
            f"{VERIFY_HINT.format(url=display_path(url))}; {REBUILD_HINT}, or copy it "
            f"again from where it came from"
        )


def _memory_maps(
    arrays: Mapping[str, zarr.Array], chunk_source: ChunkSource | None, url: str
) -> dict[str, ChunkMemmapArray] | None:
    """`ChunkMemmapArray`s over every array in `arrays`, or None (logged) when one cannot be
    mapped (remote or compressed): the store is then read through zarr."""
    mapped = {name: memmap_array(array, chunk_source) for name, array in arrays.items()}
    if any(m is None for m in mapped.values()):
        logger.info("store %s is remote or compressed: reading through zarr (no memory map)", url)
        return None
    return mapped


def _check_root_attrs(attrs: Mapping[str, Any], url: str) -> None:
    config = attrs.get(ATTR_BUILD_CONFIG)
    out = config.get("out", "STORE") if isinstance(config, Mapping) else "STORE"
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
    records = read_metadata(
        url,
        f"{SEQUENCES_GROUP}/zarr.json",
        lambda: table_from_json(read_table(group, TABLE_COLUMNS, where, REBUILD_HINT), where),
    )
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
    mean, std, count, window_frames = read_metadata(
        url, STATS_GROUP, partial(_stats_values, group, url)
    )
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


def _stats_values(group: zarr.Group, url: str) -> tuple[np.ndarray, np.ndarray, int, int]:
    """The stored mean and std (float64), count and window frames of the stats."""
    try:
        stats = group[STATS_GROUP]
        mean = np.asarray(stats[STATS_MEAN][:], dtype=np.float64)
        std = np.asarray(stats[STATS_STD][:], dtype=np.float64)
        return mean, std, int(stats.attrs[STATS_ATTR_COUNT]), int(stats.attrs[ATTR_WINDOW_FRAMES])
    except KeyError as missing:
        raise StoreError(f"store {url}: stats lack {missing}; {REBUILD_HINT}") from None


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
    they are first mapped (a local chunk cache of a URL: `shared.chunk_cache`). Metadata is
    untrusted input: what a truncated, garbage or hostile document makes its parsing raise is
    one `StoreError` (`read_metadata`); an error of the code keeps its own type.
    """
    url = url_of(path_or_url)
    storage_options = url_options(url, storage_options)
    group = read_metadata(url, "zarr.json", partial(_open_group, url, storage_options))
    return FeatureStore(
        url,
        group,
        memory_map,
        storage_options,
        check_chunk_files,
        check_chunks_on_use,
        chunk_source,
    )


def _open_group(url: str, storage_options: dict[str, Any] | None) -> zarr.Group:
    """The store's root group, its zarr.json parsed; StoreError when there is no store or the
    package of its URL's protocol is missing."""
    try:
        return zarr.open_group(url, mode="r", storage_options=storage_options)
    except ImportError as error:
        raise StoreError(missing_extra_message(url, error)) from None
    except FileNotFoundError:
        raise StoreError(
            f"no Zarr store at {display_path(url)}; build one with "
            f"`python -m preprocess build DATA --out STORE`"
        ) from None


# What zarr, json and the conversion of a value raise on a damaged or hostile zarr.json: invalid
# JSON or UTF-8, wrong JSON types, nesting deep enough to exhaust the parser, an unreadable file.
MALFORMED_METADATA = (
    ValueError, TypeError, KeyError, AttributeError, IndexError, RecursionError, PermissionError,
    IsADirectoryError, zarr.errors.BaseZarrError,
)  # fmt: skip


def read_metadata(url: str, what: str, read: Callable[[], T], hint: str = REBUILD_HINT) -> T:
    """`read()`, which parses metadata of the store at `url` (`what`: which zarr.json, or the
    group it is in); a `MALFORMED_METADATA` error from it is one `StoreError` naming the store
    and `what`, ending with `hint`. Wrap nothing but the parsing: a bug elsewhere must keep its
    own type and traceback. The `UserError`s of checks inside pass as they are."""
    try:
        return read()
    except UserError:
        raise
    except MALFORMED_METADATA as error:
        first_line = (str(error).strip().splitlines() or [""])[0][:200]
        raise StoreError(
            f"store {display_path(url)} has unreadable or malformed metadata ({what}: "
            f"{type(error).__name__}: {first_line}); {hint}"
        ) from None
