"""Integrity checks of a feature store's chunk files, each problem one line naming array, chunk,
file and frames: every chunk file there with its size (`open_store`, a stat per chunk), also
every checksum and that every float value is finite (`check_chunks(deep=True)`, `preprocess
verify`), one chunk file's checksum (`chunk_checksum_ok`, the memory-mapped reader's check on
first use), and whether a chunk continues its neighbours (`seam_problem`).

This module must not import h5py or hdf5plugin: the trainer imports it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import product
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import fsspec
import google_crc32c
import numpy as np
import zarr
from fsspec.implementations.local import LocalFileSystem
from tqdm import tqdm
from zarr.codecs import Crc32cCodec

from shared.layout import HP, HP_DOT, JP, JV, field_of_dim
from shared.remote import (
    MissingExtraError,
    filesystem,
    missing_extra_message,
    normalize_location,
    url_options,
)
from shared.store.schema import (
    CHECKSUM_BYTES,
    FEATURES,
    FRAME_ARRAYS,
    REBUILD_HINT,
    SEQUENCES_GROUP,
    STATS_GROUP,
    STATS_MEAN,
    STATS_STD,
    StoreError,
    encoded_chunk_nbytes,
)

if TYPE_CHECKING:
    from shared.store.memmap import ChunkMemmapArray

DEEP_CHECK_THREADS = 4  # chunk reads in flight in `check_chunks(deep=True)` (I/O bound remotely)
UNLISTED_SIZE_THREADS = 16  # size requests in flight for chunks a remote listing did not show
VERIFY_HINT = "`python -m preprocess verify {url}` lists every damaged chunk"


# --- chunks named for humans ------------------------------------------------------------------


@dataclass(frozen=True)
class ChunkName:
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


def _chunks_of(path: str, array: zarr.Array) -> list[ChunkName]:
    chunks = []
    frames = array.shape[0] if path in FRAME_ARRAYS else None
    for coords in product(*(range(n) for n in array.cdata_shape)):
        key = f"{path}/{array.metadata.encode_chunk_key(coords)}"
        span = None
        if frames is not None:
            first = coords[0] * array.chunks[0]
            span = (first, min(first + array.chunks[0], frames) - 1)
        chunks.append(ChunkName(path, tuple(coords), key, span))
    return chunks


def schema_object_keys(group: zarr.Group) -> list[str]:
    """Every object a complete store holds, by key, from its schema and array metadata: what to
    copy from a server that does not list directories (HTTP)."""
    arrays = {path: group[path] for path in _SCHEMA_ARRAYS}
    nodes = ("", SEQUENCES_GROUP, STATS_GROUP, *arrays)
    keys = [f"{node}/zarr.json".lstrip("/") for node in nodes]
    return keys + [chunk.key for path, array in arrays.items() for chunk in _chunks_of(path, array)]


# --- one chunk --------------------------------------------------------------------------------


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


def _check_chunk_content(array: zarr.Array, chunk: ChunkName) -> list[str]:
    """Checksum (verified by zarr's crc32c codec on decode) and finiteness of one chunk."""
    try:
        values = array.get_block_selection(chunk.coords)
    except Exception as error:  # noqa: BLE001 - any decode failure is damage to name, not to raise
        if is_checksum_error(error):
            return [f"{chunk}: {CHECKSUM_MISMATCH}"]
        return [f"{chunk}: cannot be decoded ({type(error).__name__}: {error})"]
    problem = non_finite_problem(values, chunk)
    return [] if problem is None else [problem]


def non_finite_problem(values: np.ndarray, chunk: ChunkName) -> str | None:
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


# --- every chunk file of a store --------------------------------------------------------------


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


_SCHEMA_ARRAYS = (*FRAME_ARRAYS, f"{STATS_GROUP}/{STATS_MEAN}", f"{STATS_GROUP}/{STATS_STD}")


def chunk_problems(
    group: zarr.Group,
    url: str,
    *,
    deep: bool,
    progress: bool,
    storage_options: Mapping[str, Any] | None,
) -> list[str]:
    """`check_chunks` on an opened group (`open_store` checks with `deep=False`)."""
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
    url = url_of(url_or_path)
    storage_options = url_options(url, storage_options)
    try:
        group = zarr.open_group(url, mode="r", storage_options=storage_options)
    except FileNotFoundError:
        return [f"no Zarr store at {display_path(url)}"]
    except ImportError as error:
        raise MissingExtraError(missing_extra_message(url, error)) from None
    return chunk_problems(group, url, deep=deep, progress=progress, storage_options=storage_options)


def url_of(path_or_url: str | Path) -> str:
    """A URL as given, a `file://` one too (read through fsspec, not memory-mapped unless asked);
    a local path as `shared.remote.normalize_location` spells it."""
    text = str(path_or_url)
    return text if "://" in text else normalize_location(text)


def display_path(url: str) -> str:
    """`url` for messages: the path of a file:// URL."""
    parsed = urlparse(url)
    return parsed.path if parsed.scheme == "file" else url


# --- seams between chunks ---------------------------------------------------------------------


# Fields whose value at a frame is the step of another field from the frame before (layout).
_DIFFERENCES = ((HP, HP_DOT), (JP, JV))


def seam_problem(
    features: ChunkMemmapArray, frame: int, sequence_starts: frozenset[int]
) -> str | None:
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
