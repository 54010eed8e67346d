"""The trainer's local chunk cache of a store at a URL: training starts before the download ends.

`open_cached_store(url)` resolves the URL once (`shared.remote_layout.resolve`: the version its
pointer names, or a store at the URL itself), fetches the store's metadata (every node's
zarr.json, the stats arrays) up front and returns a `FeatureStore` over a local directory in the
store's own layout whose frame-array chunk files arrive as they are first used (a
`--cache-max-gb` under MIN_CACHE_CHUNKS chunks is refused): `ChunkMemmapArray` asks the cache
(`ChunkCache.map_chunk`) to make a chunk file present before it maps it, and the training
sampler announces the chunks of its next batches (`ChunkCache.prefetch`, background threads).
Once warm, reads are the local store's memory maps, at local speed.

    CACHE/<fingerprint>.chunks/        one per store version (CACHE: --cache-dir, default
                                       `shared.transfer.default_cache_dir()`)
        zarr.json, sequences/, stats/  the store's metadata and stats, fetched up front
        features/c/<i>/0, ...          chunk files as fetched: raw chunk + its crc32c
        .lock                          flock: metadata, the usage count, eviction
        .fetch.lock                    fcntl record locks, one byte per chunk: one download each
        .usage                         bytes of the frame-array chunk files in the cache
        .evicted                       touched after each eviction round

Every chunk is verified as it fills: its size and crc32c (the store's own per-chunk checksum,
and for a published version the one its manifest lists) are checked before it is written,
through a temp file, fsync and an atomic rename, so a chunk file in the cache is always whole
and verified; a damaged remote chunk is named and never written. A compressed store
(`--compression zstd`) is decoded chunk by chunk (zarr checks the crc32c) and cached in the raw
layout the reader maps; its arrays' metadata says so.

Size limit (`max_bytes`, `train fit --cache-max-gb`): before a chunk is added to a full cache,
the least recently used chunk files (modification time: set when fetched, touched when a
process maps one) are removed down to `LOW_WATER` of the limit; never a chunk this process maps
unless nothing else is left, in which case its own oldest maps are dropped first. Removing a
file that another process maps is safe on Linux (the map keeps the data); that process drops
such maps the next time it maps a chunk (`.evicted` changed), which frees their space.

Requests have a timeout and bounded retries, and no read holds more bytes than the object should
have (`shared.remote`): a stalled endpoint fails the read with one line.

Several processes (DataLoader workers, DDP ranks on one node) share one cache: chunk files
appear only by rename, the usage count and eviction are under `.lock`, and a per-chunk record
lock makes the others wait for one download of a chunk instead of repeating it (a repeat would
be harmless: the same verified bytes). A `ChunkCache` pickles as its settings, so a worker
process that unpickles the store (or inherits it by fork) fetches for itself.
"""

from __future__ import annotations

import fcntl
import json
import logging
import math
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fsspec
import google_crc32c  # zarr's own crc32c implementation (a dependency of zarr)
import numpy as np
import zarr
from zarr.core.metadata.v3 import ArrayV3Metadata

from shared.atomic import atomic_path, exclusive_lock
from shared.remote import (
    DEFAULT_TIMEOUT_S,
    RemoteUnavailableError,
    filesystem,
    normalize_location,
    read_bounded,
    remote_options,
    retrying,
)
from shared.remote_layout import MANIFEST, ROOT_METADATA, ManifestEntry, read_manifest
from shared.store import (
    CHECKSUM_BYTES,
    FEATURES,
    FRAME_ARRAYS,
    REBUILD_HINT,
    SEQUENCES_GROUP,
    STATS_GROUP,
    STATS_MEAN,
    STATS_STD,
    ChunkMemmapArray,
    FeatureStore,
    StoreError,
    has_raw_chunks,
    is_checksum_error,
    open_store,
)
from shared.transfer import (
    MAX_CHUNK_BYTES,
    MAX_CHUNKS_PER_ARRAY,
    default_cache_dir,
    published,
)

logger = logging.getLogger(__name__)

STATS_ARRAYS = (f"{STATS_GROUP}/{STATS_MEAN}", f"{STATS_GROUP}/{STATS_STD}")
ARRAYS = (*FRAME_ARRAYS, *STATS_ARRAYS)  # record-lock byte = ARRAYS index << 32 | chunk index
NODES = ("", SEQUENCES_GROUP, STATS_GROUP, *ARRAYS)  # every node whose zarr.json is fetched
FETCH_THREADS = 8  # chunk downloads in flight per process (network latency bound)
LOW_WATER = 0.9  # a full cache is trimmed to this fraction of its limit (amortises the scan)
READ_AHEAD_SHARE = 0.25  # at most this share of the limit is fetched ahead of use
MIN_CACHE_CHUNKS = 4  # a smaller size limit is refused (a window may span two chunks)
MAP_ATTEMPTS = 3  # a chunk removed between fetch and map (another process evicting) is refetched
PARTIAL_MAX_AGE_S = 600  # a temp file this old belongs to a killed fetch and is removed
MAX_METADATA_BYTES = 64 << 20  # a zarr.json larger than this is refused before it is read
RAW_CODECS = [{"name": "bytes", "configuration": {"endian": "little"}}, {"name": "crc32c"}]
CACHE_SUFFIX = ".chunks"


class ChunkCacheError(StoreError):
    """A store at a URL cannot be read through the cache; the message names the object."""


@dataclass(frozen=True)
class _ArraySpec:
    """What the cache knows of one array: enough to name, fetch and check its chunks."""

    name: str  # path in the store, e.g. "features"
    shape: tuple[int, ...]
    chunks: tuple[int, ...]
    dtype: str
    fill_value: Any
    decode: bool  # compressed at the URL: decoded by zarr, cached raw

    @property
    def nbytes(self) -> int:
        """Size of a cached chunk file: the full-size raw chunk and its crc32c."""
        return math.prod(self.chunks) * np.dtype(self.dtype).itemsize + CHECKSUM_BYTES

    def key(self, index: int) -> str:
        """Default chunk key of chunk `index` along the first axis (one chunk along the rest)."""
        return "/".join((self.name, "c", str(index), *("0" for _ in self.chunks[1:])))

    def where(self, index: int) -> str:
        first = index * self.chunks[0]
        last = min(first + self.chunks[0], self.shape[0]) - 1
        return f"{self.name} chunk {index}, frames {first}-{last}"


class _FetchThreads:
    """A fixed set of daemon threads running submitted calls in order. Not a
    `ThreadPoolExecutor`: a process that exits (the trainer at its last step, a DataLoader worker
    stopped) must not first download every chunk its read-ahead queued; a fetch cut short
    leaves a temp file that a later scan removes."""

    def __init__(self, threads: int) -> None:
        self._calls: queue.SimpleQueue = queue.SimpleQueue()
        for i in range(threads):
            threading.Thread(target=self._run, name=f"chunk-fetch-{i}", daemon=True).start()

    def submit(self, call: Callable[..., Any], *args: Any) -> Future:
        future: Future = Future()
        self._calls.put((future, call, args))
        return future

    def _run(self) -> None:
        while True:
            future, call, args = self._calls.get()
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(call(*args))
            except BaseException as error:  # noqa: BLE001 - handed to whoever waits on it
                future.set_exception(error)


def _mtime_ns(path: Path) -> int | None:
    try:
        return os.stat(path).st_mtime_ns
    except FileNotFoundError:
        return None


class ChunkCache:
    """The local chunk cache of one store version at `url` (see the module docstring); the
    `chunk_source` of the `FeatureStore` that `open_store()` returns."""

    def __init__(
        self,
        url: str,
        fingerprint: str,
        directory: Path,
        storage_options: dict | None = None,
        max_bytes: int | None = None,
        manifest: dict[str, ManifestEntry] | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        self.url, self.fingerprint = url.rstrip("/"), fingerprint
        self.directory = Path(normalize_location(directory))
        self.storage_options = remote_options(self.url, storage_options, timeout)
        self.max_bytes = max_bytes
        self.manifest = manifest  # a published version's: every chunk's crc32c, checked too
        self.specs: dict[str, _ArraySpec] = {}  # filled by prepare()
        self._init_process()

    def _init_process(self) -> None:
        """Per-process state: threads, locks and connections do not survive fork or pickling."""
        self._pid = os.getpid()
        self._fs: fsspec.AbstractFileSystem | None = None
        self._remote: dict[str, zarr.Array] = {}
        self._pool: _FetchThreads | None = None
        self._guard = threading.Lock()
        self._inflight: dict[tuple[str, int], Future] = {}
        self._record_lock_fd: int | None = None
        self._seen_evictions = _mtime_ns(self.directory / ".evicted")
        # Kept by a forked child, which inherits the maps: the arrays whose chunks this process
        # maps, and the inode of each mapped chunk file.
        self._arrays: dict[str, ChunkMemmapArray] = getattr(self, "_arrays", {})
        self._inodes: dict[tuple[str, int], int] = getattr(self, "_inodes", {})
        self.fetched = 0  # chunks this process downloaded

    def _check_process(self) -> None:
        if os.getpid() != self._pid:  # a forked child: the maps are inherited, the rest is not
            self._init_process()

    def __getstate__(self) -> dict:
        keep = ("url", "fingerprint", "directory", "storage_options", "max_bytes", "manifest",
                "specs")  # fmt: skip
        return {k: self.__dict__[k] for k in keep}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._init_process()

    def __repr__(self) -> str:
        return f"ChunkCache({self.url!r} -> {str(self.directory)!r}, max_bytes={self.max_bytes})"

    # --- metadata -----------------------------------------------------------------------------

    def prepare(self) -> None:
        """Fetch the metadata and stats into the cache unless there (root zarr.json last), check
        that a cache filled earlier has the same arrays, and recount its usage."""
        self.directory.mkdir(parents=True, exist_ok=True)
        with exclusive_lock(self.directory / ".lock"):
            documents = {node: self._remote_json(node) for node in NODES}
            for name in ARRAYS:
                documents[name] = self._local_array_json(name, documents[name])
            least = MIN_CACHE_CHUNKS * self.specs[FEATURES].nbytes
            if self.max_bytes is not None and self.max_bytes < least:
                raise ChunkCacheError(
                    f"a cache limit of {self.max_bytes / 1e9:.3g} GB holds fewer than "
                    f"{MIN_CACHE_CHUNKS} chunks of {self.url}/{FEATURES} ({least / 1e9:.3g} GB): "
                    f"raise --cache-max-gb"
                )
            root = self.directory / ROOT_METADATA
            if root.exists():
                self._check_same_arrays(documents)
            else:
                for node, document in documents.items():
                    if node:
                        self._write_json(node, document)
            for name in STATS_ARRAYS:
                for index in range(
                    math.ceil(self.specs[name].shape[0] / self.specs[name].chunks[0])
                ):
                    if not (self.directory / self.specs[name].key(index)).exists():
                        self._store_chunk(self.specs[name], index, self._download(name, index))
            if not root.exists():
                self._write_json("", documents[""])
            self._write_usage(self._scan_usage()[0])

    def _remote_json(self, node: str) -> dict:
        key = f"{node}/{ROOT_METADATA}".lstrip("/")
        path = f"{self.url}/{key}"
        try:
            document = json.loads(self._read(path, MAX_METADATA_BYTES))
        except FileNotFoundError:
            raise ChunkCacheError(
                f"{path} is missing: the store at {self.url} is incomplete or "
                f"damaged; push it again"
            ) from None
        except (ValueError, UnicodeDecodeError) as error:
            raise ChunkCacheError(f"{path} is not JSON ({error}); {REBUILD_HINT}") from None
        if not isinstance(document, dict):
            raise ChunkCacheError(f"{path} is not a JSON object; {REBUILD_HINT}")
        return document

    def _local_array_json(self, name: str, document: dict) -> dict:
        """The array's metadata as cached (raw codecs: a compressed array is decoded), and its
        `_ArraySpec` recorded; refuses a layout the reader cannot map."""
        where = f"{self.url}/{name}/{ROOT_METADATA}"
        try:
            remote = ArrayV3Metadata.from_dict(dict(document))
            decode = not has_raw_chunks(remote)
        except Exception as error:  # noqa: BLE001 - hostile or damaged metadata: one line
            raise ChunkCacheError(f"{where}: not valid array metadata ({error})") from None
        chunks, encoding = tuple(remote.chunks), remote.chunk_key_encoding
        if (
            chunks[1:] != tuple(remote.shape[1:])
            or getattr(encoding, "name", None) != "default"
            or encoding.separator != "/"
        ):
            raise ChunkCacheError(
                f"{where}: chunks {chunks} of shape {remote.shape} with chunk key encoding "
                f"{encoding} cannot be read through the chunk cache (it needs chunks along the "
                f"first axis, default keys); copy the store with `python -m preprocess pull`"
            )
        spec = self.specs[name] = _ArraySpec(
            name,
            tuple(remote.shape),
            chunks,
            str(remote.dtype.to_native_dtype()),
            remote.fill_value.item() if hasattr(remote.fill_value, "item") else remote.fill_value,
            decode,
        )
        num_chunks = math.ceil(spec.shape[0] / max(chunks[0], 1))
        if num_chunks > MAX_CHUNKS_PER_ARRAY or spec.nbytes > MAX_CHUNK_BYTES:
            raise ChunkCacheError(
                f"{where}: {num_chunks} chunks of {spec.nbytes} bytes; at most "
                f"{MAX_CHUNKS_PER_ARRAY} chunks of {MAX_CHUNK_BYTES} bytes are accepted: refused"
            )
        return {**document, "codecs": RAW_CODECS} if decode else document

    def _check_same_arrays(self, documents: dict[str, dict]) -> None:
        for name in ARRAYS:
            path = self.directory / name / ROOT_METADATA
            cached = json.loads(path.read_text())
            layout = ("shape", "chunk_grid", "data_type", "chunk_key_encoding")
            if {k: cached.get(k) for k in layout} != {k: documents[name].get(k) for k in layout}:
                raise ChunkCacheError(
                    f"the cache {self.directory} holds store {self.fingerprint} with another "
                    f"layout of `{name}` than {self.url} (chunking differs); delete it"
                )

    def _write_json(self, node: str, document: dict) -> None:
        path = self.directory / node / ROOT_METADATA
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(document))

    # --- the reader's hooks -------------------------------------------------------------------

    def open_store(self) -> FeatureStore:
        """The cached store, memory-mapped, its chunk files fetched as they are first used."""
        store = open_store(self.directory, check_chunk_files=False, chunk_source=self)
        if not store.is_memory_mapped:  # zarr would read a missing chunk as fill values
            raise ChunkCacheError(f"{self.url} cannot be memory-mapped from {self.directory}")
        if store.fingerprint != self.fingerprint:
            raise ChunkCacheError(
                f"{self.url}: its metadata has fingerprint {store.fingerprint}, the URL "
                f"announced {self.fingerprint}; push the store again"
            )
        return store

    def map_chunk(self, array: ChunkMemmapArray, index: int) -> np.ndarray:
        """Chunk `index` of `array` mapped from the cache, fetched first when absent."""
        self._check_process()
        name = array.array_dir.relative_to(self.directory).as_posix()
        self._arrays[name] = array
        self._drop_evicted_maps()
        path = array.chunk_path(index)
        for attempt in range(MAP_ATTEMPTS):
            if path.exists():
                with suppress(OSError):  # gone since, or another user's file
                    os.utime(path)  # used now: the last to be evicted
            else:
                self._submit(name, index).result()
            try:
                mapped = array.map_chunk_file(index)
                self._inodes[(name, index)] = os.stat(path).st_ino
                return mapped
            except (StoreError, FileNotFoundError):
                if path.exists() or attempt == MAP_ATTEMPTS - 1:
                    raise
        raise AssertionError("unreachable")

    def prefetch(self, array: ChunkMemmapArray, indices: Sequence[int]) -> None:
        """Fetch in the background the chunks `indices` of `array` not mapped nor cached (at
        most READ_AHEAD_SHARE of the size limit's worth)."""
        self._check_process()
        name = array.array_dir.relative_to(self.directory).as_posix()
        budget = len(indices)
        if self.max_bytes is not None:
            budget = max(1, int(self.max_bytes * READ_AHEAD_SHARE) // self.specs[name].nbytes)
        for index in indices[:budget]:
            if not array.is_mapped(index) and not array.chunk_path(index).exists():
                self._submit(name, index)

    # --- fetching -----------------------------------------------------------------------------

    def _submit(self, name: str, index: int) -> Future:
        """This process's fetch of a chunk: running, or started now."""
        with self._guard:
            future = self._inflight.get((name, index))
            if future is None:
                if self._pool is None:
                    self._pool = _FetchThreads(FETCH_THREADS)
                future = self._inflight[(name, index)] = self._pool.submit(self._fetch, name, index)
            return future

    def _fetch(self, name: str, index: int) -> None:
        try:
            spec = self.specs[name]
            with self._record_lock(ARRAYS.index(name) << 32 | index):
                if not (self.directory / spec.key(index)).exists():  # else another process did
                    self._store_chunk(spec, index, self._download(name, index))
        finally:
            with self._guard:
                del self._inflight[(name, index)]

    @contextmanager
    def _record_lock(self, byte: int) -> Iterator[None]:
        """An exclusive fcntl record lock on one byte of `.fetch.lock` (between processes; the
        threads of one process never fetch the same chunk at once, `_submit`)."""
        with self._guard:
            if self._record_lock_fd is None:  # kept open: closing it would drop every lock
                self._record_lock_fd = os.open(
                    self.directory / ".fetch.lock", os.O_RDWR | os.O_CREAT
                )
        fcntl.lockf(self._record_lock_fd, fcntl.LOCK_EX, 1, byte)
        try:
            yield
        finally:
            fcntl.lockf(self._record_lock_fd, fcntl.LOCK_UN, 1, byte)

    def _read(self, path: str, limit: int) -> bytes:
        """Object `path`, at most `limit` bytes (more: ChunkCacheError before they are held),
        with the request timeout and bounded retries (`shared.remote`)."""
        if self._fs is None:
            self._fs = filesystem(self.url, self.storage_options, retried=True)[0]
        try:
            return retrying(lambda: read_bounded(self._fs, path, limit), path)
        except ValueError as error:
            raise ChunkCacheError(f"{error}; not read") from None
        except RemoteUnavailableError as error:
            raise ChunkCacheError(str(error)) from None

    def _download(self, name: str, index: int) -> bytes:
        """Chunk `index` of array `name` as cached (raw + crc32c), verified; ChunkCacheError
        naming the object when the remote one is damaged."""
        spec = self.specs[name]
        path = f"{self.url}/{spec.key(index)}"
        damaged = (
            f"; the store at {self.url} is damaged: `python -m preprocess verify {self.url}` "
            f"lists every damaged chunk; push it again from a good copy"
        )
        if spec.decode:
            try:
                coords = (index, *(0,) * (len(spec.shape) - 1))
                array = self._remote_array(name)
                values = retrying(lambda: array.get_block_selection(coords), path)
            except RemoteUnavailableError as error:
                raise ChunkCacheError(str(error)) from None
            except Exception as error:  # noqa: BLE001 - any decode failure is damage to name
                what = (
                    "checksum mismatch"
                    if is_checksum_error(error)
                    else f"cannot be decoded ({error})"
                )
                raise ChunkCacheError(f"{path} ({spec.where(index)}): {what}{damaged}") from None
            raw = np.full(spec.chunks, spec.fill_value, dtype=spec.dtype)
            raw[: len(values)] = values
            inner = raw.tobytes()
            return inner + np.uint32(google_crc32c.value(inner)).tobytes()
        try:
            data = self._read(path, spec.nbytes)
        except FileNotFoundError:
            raise ChunkCacheError(f"{path} ({spec.where(index)}) is missing{damaged}") from None
        if len(data) != spec.nbytes:
            raise ChunkCacheError(
                f"{path} ({spec.where(index)}): {len(data)} bytes, expected {spec.nbytes}{damaged}"
            )
        crc = google_crc32c.value(data[:-CHECKSUM_BYTES])
        if np.uint32(crc).tobytes() != data[-CHECKSUM_BYTES:]:
            raise ChunkCacheError(f"{path} ({spec.where(index)}): checksum mismatch{damaged}")
        entry = (self.manifest or {}).get(spec.key(index))
        if self.manifest is not None and (entry is None or entry.crc32c != f"{crc:08x}"):
            raise ChunkCacheError(
                f"{path} ({spec.where(index)}): not the chunk the version's {MANIFEST} lists "
                f"(crc32c {crc:08x}, listed {entry.crc32c if entry else 'nothing'}){damaged}"
            )
        return data

    def _remote_array(self, name: str) -> zarr.Array:
        if name not in self._remote:
            self._remote[name] = zarr.open_array(
                f"{self.url}/{name}",
                mode="r",
                storage_options=self.storage_options,
            )
        return self._remote[name]

    def _store_chunk(self, spec: _ArraySpec, index: int, data: bytes) -> None:
        """Write a verified chunk through a temp file (fsync), make room under the limit, and
        rename it in, counting it."""
        path = self.directory / spec.key(index)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.partial")
        try:
            with open(tmp, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            if spec.name not in FRAME_ARRAYS:  # the stats: fetched by prepare(), under `.lock`
                os.replace(tmp, path)
            else:
                with exclusive_lock(self.directory / ".lock"):
                    self._make_room(len(data), keep=(spec.name, index))
                    os.replace(tmp, path)
                    self._write_usage(self._read_usage() + len(data))
        finally:
            with suppress(FileNotFoundError):
                tmp.unlink()
        with self._guard:
            self.fetched += 1

    # --- size limit ---------------------------------------------------------------------------

    def _read_usage(self) -> int:
        try:
            return int((self.directory / ".usage").read_text())
        except (FileNotFoundError, ValueError):
            return self._scan_usage()[0]

    def _write_usage(self, nbytes: int) -> None:
        with atomic_path(self.directory / ".usage") as tmp:
            tmp.write_text(str(nbytes))

    def _scan_usage(self) -> tuple[int, list[tuple[int, int, str, int]]]:
        """Bytes of the frame-array chunk files and each as (mtime_ns, size, array, index);
        removes temp files of killed fetches."""
        total, files, now = 0, [], time.time()
        for name in FRAME_ARRAYS:
            for folder, _, names in os.walk(self.directory / name / "c"):
                for file in names:
                    path = os.path.join(folder, file)
                    with suppress(FileNotFoundError):
                        info = os.stat(path)
                        if file.startswith("."):
                            if now - info.st_mtime > PARTIAL_MAX_AGE_S:
                                os.unlink(path)
                            continue
                        index = int(Path(path).relative_to(self.directory / name / "c").parts[0])
                        total += info.st_size
                        files.append((info.st_mtime_ns, info.st_size, name, index))
        return total, files

    def _make_room(self, nbytes: int, keep: tuple[str, int]) -> None:
        """Under `.lock`: remove least recently used chunk files until `nbytes` more fit under
        LOW_WATER of the limit; this process's mapped chunks go last, oldest map first."""
        if self.max_bytes is None or self._read_usage() + nbytes <= self.max_bytes:
            return
        total, files = self._scan_usage()
        target = max(int(self.max_bytes * LOW_WATER) - nbytes, 0)
        mine = {(name, i) for name, array in self._arrays.items() for i in array.mapped_chunks()}
        others = sorted(f for f in files if (f[2], f[3]) not in mine and (f[2], f[3]) != keep)
        own = [
            (name, i)
            for name, array in self._arrays.items()
            for i in array.mapped_chunks()
            if (name, i) != keep
        ]
        for _, size, name, index in others:
            if total <= target:
                break
            total -= self._evict(name, index, size)
        sizes = {(f[2], f[3]): f[1] for f in files}
        for name, index in own:
            if total <= target:
                break
            self._arrays[name].drop_map(index)
            total -= self._evict(name, index, sizes.get((name, index), 0))
        self._write_usage(total)
        (self.directory / ".evicted").touch()

    def _evict(self, name: str, index: int, size: int) -> int:
        with suppress(FileNotFoundError):
            os.unlink(self.directory / self.specs[name].key(index))
            return size
        return 0

    def _drop_evicted_maps(self) -> None:
        """After another process evicted chunks, drop this process's maps of removed files (a
        map keeps a removed file's space)."""
        seen = _mtime_ns(self.directory / ".evicted")
        if seen == self._seen_evictions:
            return
        self._seen_evictions = seen
        for (name, index), inode in list(self._inodes.items()):
            try:
                same = os.stat(self.directory / self.specs[name].key(index)).st_ino == inode
            except FileNotFoundError:
                same = False
            if not same:
                self._arrays[name].drop_map(index)
                del self._inodes[(name, index)]


def open_cached_store(
    url: str,
    cache_dir: Path | None = None,
    storage_options: dict[str, Any] | None = None,
    max_bytes: int | None = None,
    timeout: float = DEFAULT_TIMEOUT_S,
) -> FeatureStore:
    """The store at `url` read through a local chunk cache in `cache_dir` (default
    `default_cache_dir()`), one directory per fingerprint: metadata now, chunks on first use.

    The URL is resolved once (`shared.remote_layout.resolve`): a published version (its
    manifest's checksums are checked as chunks arrive) or a store at the URL itself."""
    resolved, fingerprint = published(url, storage_options, timeout)
    manifest = None
    if resolved.layout != "legacy":
        manifest = read_manifest(url, fingerprint, storage_options, timeout)
        if manifest is None:
            raise ChunkCacheError(
                f"{resolved.root_url} has no {MANIFEST}: the version is unfinished; publish it "
                f"again with `python -m preprocess push STORE {url}`"
            )
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    cache = ChunkCache(
        resolved.root_url,
        fingerprint,
        cache_dir / f"{fingerprint}{CACHE_SUFFIX}",
        storage_options,
        max_bytes,
        manifest,
        timeout,
    )
    cache.prepare()
    limit = "no size limit" if max_bytes is None else f"at most {max_bytes / 1e9:.3g} GB"
    logger.info("%s: reading through the chunk cache %s (%s)", url, cache.directory, limit)
    return cache.open_store()
