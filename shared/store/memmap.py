"""The memory-mapped reader of a store's frame arrays (`ChunkMemmapArray`, `memmap_array`).

An uncompressed Zarr v3 chunk (codecs = [bytes little endian, crc32c]) is the raw C-order array
followed by its 4 checksum bytes, stored full-size even at the array's end. For local stores
`open_store` therefore maps the first bytes of each chunk file of `features` (`features/c/<i>/0`)
with `np.memmap`, so slicing a window is a view (or one copy when the window crosses a chunk
boundary) instead of a trip through zarr's codec pipeline.

This module must not import h5py or hdf5plugin: the trainer imports it.
"""

from __future__ import annotations

import logging
import math
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import zarr

from shared.store.checks import (
    CHECKSUM_MISMATCH,
    ChunkDamageError,
    ChunkName,
    chunk_checksum_ok,
    non_finite_problem,
)
from shared.store.schema import CHECKSUM_BYTES, REBUILD_HINT, StoreError, raw_checksum_bytes

logger = logging.getLogger(__name__)

OPEN_FILES_RESERVE = 256
"""Open files left for everything but chunk maps (sockets, DataLoader pipes, logs, checkpoints)."""


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
                    self.array_dir,
                    self.num_chunks,
                    len(self._maps),
                    3 * self.num_chunks + OPEN_FILES_RESERVE,
                )
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

    def describe_chunk(self, index: int) -> ChunkName:
        """Chunk `index` named for humans: array, chunk, file (relative to the store), frames."""
        first = index * self.chunk_frames
        key = "/".join(self.chunk_path(index).relative_to(self.array_dir).parts)
        return ChunkName(
            self.array_path,
            (index, *(0 for _ in self.row_shape)),
            f"{self.array_path}/{key}",
            (first, min(first + self.chunk_frames, self.shape[0]) - 1),
        )

    def verify_chunk(self, index: int) -> str | None:
        """What is wrong with chunk `index`'s file (its crc32c does not match its bytes; a float
        value is not finite), as one line naming array, chunk, file and frames; None when good.
        Reads the whole file."""
        path, chunk = self.chunk_path(index), self.describe_chunk(index)
        raw = np.memmap(path, dtype=np.uint8, mode="r")  # pages shared with the chunk's own map
        if not chunk_checksum_ok(raw):
            return f"{chunk}: {CHECKSUM_MISMATCH}"
        values = raw[: -self.checksum_bytes or None].view(self.dtype)
        return non_finite_problem(values.reshape(self.chunk_frames, *self.row_shape), chunk)

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
        check_range(start, stop, self.shape[0])
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
        check_range(start, start + rows, self.shape[0])
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


def check_range(start: int, stop: int, num_rows: int) -> None:
    """IndexError unless rows `[start, stop)` lie within `[0, num_rows]`."""
    if not 0 <= start <= stop <= num_rows:
        raise IndexError(f"frame range [{start}, {stop}) is not within [0, {num_rows}]")


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
    checksum_bytes = raw_checksum_bytes(array)
    if array_dir is None or checksum_bytes is None:
        return None
    encoding = meta.chunk_key_encoding
    if getattr(encoding, "name", None) != "default" or encoding.separator != "/":
        return None
    chunk_shape = tuple(array.chunks)
    if chunk_shape[1:] != tuple(array.shape[1:]):
        return None
    return ChunkMemmapArray(
        array_dir,
        array.shape,
        chunk_shape[0],
        array.dtype,
        checksum_bytes,
        array_path=array.path,
        chunk_source=chunk_source,
    )
