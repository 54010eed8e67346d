"""Copy a feature store between places: `preprocess push/pull` and the trainer's local cache of a
remote store (`cached_store`).

The copy does not depend on the store's layout: every object under the source is copied byte
for byte, in parallel, data objects first, then the metadata, and the root metadata (holding
`complete`) last. Before any data, the destination gets a marker naming the source's
fingerprint and the root metadata with `complete` false, so an interrupted copy is never taken
for a store and a rerun knows the objects there are its own: an object already present with the
source's size and last 4 bytes (the crc32c of a chunk) is kept. At the end every chunk of the
destination is verified (`check_chunks(deep=True)`: checksums and finite values; damaged ones
are copied again once), then the fingerprint.

With `decompress`, compressed arrays are not copied but re-encoded chunk by chunk as raw chunks
(created by `shared.store.create_store_array`, as the build creates them), which the reader
memory-maps. The fingerprint covers root attributes, table and stats, not codecs, so it is kept.

Nothing here imports h5py: the trainer uses it.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import product
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import fsspec
import zarr
from fsspec.implementations.local import LocalFileSystem
from tqdm import tqdm

from shared.atomic import atomic_path
from shared.remote import READ_ONLY_PROTOCOLS, filesystem, is_url, local_path, url_options
from shared.store import (
    ARRAY_CONFIG,
    ATTR_FINGERPRINT,
    StoreError,
    check_chunks,
    create_store_array,
    encoded_chunk_nbytes,
    has_raw_chunks,
    open_store,
    schema_object_keys,
)
from shared.zarr_output import ATTR_COMPLETE

logger = logging.getLogger(__name__)

ROOT_METADATA = "zarr.json"  # Zarr v3 metadata file of the root group (and of every node)
MARKER = ".nymeria-transfer.json"  # at a destination while a copy into it is unfinished
DEFAULT_JOBS = 8  # objects in flight (network latency bound)
TAIL_BYTES = 4  # compared to tell a finished copy of an object: a chunk's crc32c
CACHE_ENV = "NYMERIA_MVAE_CACHE"


class TransferError(ValueError):
    """A copy cannot start or did not verify; the message says what to do."""


@dataclass(frozen=True)
class TransferSummary:
    source: str
    destination: str
    fingerprint: str
    copied_objects: int  # copied or re-encoded in this run
    kept_objects: int  # already at the destination from an interrupted run
    copied_bytes: int
    reencoded_arrays: tuple[str, ...]  # compressed at the source, raw chunks at the destination


def _location(path_or_url: str | Path) -> str:
    return str(path_or_url) if is_url(path_or_url) else str(local_path(path_or_url).resolve())


def _list_objects(fs: fsspec.AbstractFileSystem, root: str) -> dict[str, int]:
    """Size of every object under `root` by key (relative path), hidden names left out (the
    marker, temp files). A server that lists no sizes (HTTP) is asked once per object."""
    fs.invalidate_cache()  # listings are cached per instance; objects were written since
    root = root.rstrip("/")
    try:
        listing = fs.find(root, detail=True)
    except FileNotFoundError:
        return {}
    prefix, sizes, unknown = f"{root}/", {}, []
    for path, info in listing.items():
        key = path[len(prefix) :] if path.startswith(prefix) else None
        if not key or info.get("type") == "directory" or key.rsplit("/", 1)[-1].startswith("."):
            continue
        if info.get("size") is None:
            unknown.append(key)
        else:
            sizes[key] = int(info["size"])
    return {**sizes, **_object_sizes(fs, root, unknown)}


def _object_sizes(fs: fsspec.AbstractFileSystem, root: str, keys: list[str]) -> dict[str, int]:
    def size_of(key: str) -> int:
        try:
            return int(fs.size(f"{root}/{key}"))
        except FileNotFoundError:
            raise TransferError(f"{root}/{key} is missing: the store is damaged") from None

    with ThreadPoolExecutor(DEFAULT_JOBS) as pool:
        return dict(zip(keys, pool.map(size_of, keys), strict=True))


def _read_json(fs: fsspec.AbstractFileSystem, path: str) -> dict | None:
    try:
        value = json.loads(fs.cat_file(path))
    except (FileNotFoundError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _write_object(fs: fsspec.AbstractFileSystem, path: str, data: bytes) -> None:
    """Write one object whole: locally through a temp file and a rename (a kill leaves no
    truncated object); object stores make a put visible only when it is complete."""
    if isinstance(fs, LocalFileSystem):
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(target) as tmp:
            tmp.write_bytes(data)
    else:
        fs.pipe_file(path, data)


def _tail(fs: fsspec.AbstractFileSystem, path: str, size: int) -> bytes:
    return fs.cat_file(path, start=max(size - TAIL_BYTES, 0), end=size)


class _Copy:
    """One copy from `source` to `destination` (see the module docstring)."""

    def __init__(
        self,
        source: str,
        destination: str,
        source_options: dict | None,
        destination_options: dict | None,
        jobs: int,
        progress: bool,
    ) -> None:
        self.source, self.destination = source, destination
        self.source_options, self.destination_options = source_options, destination_options
        self.src_fs, self.src_root = filesystem(source, source_options)
        self.dst_fs, self.dst_root = filesystem(destination, destination_options)
        self.src_root, self.dst_root = self.src_root.rstrip("/"), self.dst_root.rstrip("/")
        self.jobs, self.progress = jobs, progress
        self.copied = self.kept = self.copied_bytes = 0

    def claim(self, fingerprint: str, overwrite: bool) -> None:
        """Refuse (or with `overwrite` empty) a destination holding anything but this store or
        an unfinished copy of it, then mark it as this copy's."""
        existing = _list_objects(self.dst_fs, self.dst_root)
        marker = _read_json(self.dst_fs, f"{self.dst_root}/{MARKER}") or {}
        root = _read_json(self.dst_fs, f"{self.dst_root}/{ROOT_METADATA}") or {}
        found = marker.get("fingerprint") or (root.get("attributes") or {}).get(ATTR_FINGERPRINT)
        if (existing or marker) and found != fingerprint:
            if not overwrite:
                what = f"a store with fingerprint {found}" if found else f"{len(existing)} files"
                raise TransferError(
                    f"{self.destination} already holds {what}, not this store ({fingerprint}); "
                    f"pass --overwrite to replace it, or choose another destination"
                )
            logger.info("removing %s (--overwrite)", self.destination)
            self.dst_fs.rm(self.dst_root, recursive=True)
        marker = {
            "fingerprint": fingerprint,
            "source": self.source,
            "started": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        _write_object(self.dst_fs, f"{self.dst_root}/{MARKER}", json.dumps(marker).encode())

    def copy_objects(self, keys: dict[str, int], bar: tqdm, keep_present: bool = True) -> None:
        """Copy `keys` (key -> source size), in parallel; with `keep_present` not those the
        destination already holds (same size and last bytes)."""
        present = _list_objects(self.dst_fs, self.dst_root) if keep_present else {}

        def copy_one(key: str) -> int | None:
            size, src, dst = keys[key], f"{self.src_root}/{key}", f"{self.dst_root}/{key}"
            if present.get(key) == size and _tail(self.src_fs, src, size) == _tail(
                self.dst_fs, dst, size
            ):
                return None
            data = self.src_fs.cat_file(src)
            if len(data) != size:
                raise TransferError(f"{src}: read {len(data)} bytes, the listing said {size}")
            _write_object(self.dst_fs, dst, data)
            return size

        with ThreadPoolExecutor(self.jobs) as pool:
            for key, copied in zip(keys, pool.map(copy_one, keys), strict=True):
                if copied is None:
                    self.kept += 1
                else:
                    self.copied += 1
                    self.copied_bytes += copied
                bar.update(keys[key])

    def reencode(self, path: str, source: zarr.Array, source_nbytes: int, bar: tqdm) -> None:
        """Write array `path` at the destination as raw chunks, chunk by chunk (resumable: a
        chunk file of the raw size is kept; the final deep check reads it)."""
        group = zarr.open_group(
            self.destination, mode="r+", storage_options=self.destination_options
        )
        parent_path, _, name = path.rpartition("/")
        parent = group.require_group(parent_path) if parent_path else group
        target = parent.get(name)
        same = (
            isinstance(target, zarr.Array)
            and has_raw_chunks(target)
            and (target.shape, target.chunks, target.dtype)
            == (source.shape, source.chunks, source.dtype)
        )
        if same:  # array config is not stored: reopen it to write every chunk, even all-zero ones
            target = target.with_config(ARRAY_CONFIG)
        else:
            target = create_store_array(
                parent, name, shape=source.shape, chunks=source.chunks, dtype=source.dtype,
                dimension_names=source.metadata.dimension_names,
                fill_value=source.metadata.fill_value, overwrite=True,
            )  # fmt: skip
            target.attrs.update(source.attrs.asdict())
        raw_nbytes = encoded_chunk_nbytes(target)
        present = _list_objects(self.dst_fs, f"{self.dst_root}/{path}")
        coords = list(product(*(range(n) for n in source.cdata_shape)))
        step = source_nbytes // max(len(coords), 1)

        def write_one(chunk: tuple[int, ...]) -> bool:
            if present.get(target.metadata.encode_chunk_key(chunk)) == raw_nbytes:
                return False
            target.set_block_selection(chunk, source.get_block_selection(chunk))
            return True

        with ThreadPoolExecutor(self.jobs) as pool:
            for written in pool.map(write_one, coords):
                if written:
                    self.copied += 1
                    self.copied_bytes += raw_nbytes or 0
                else:
                    self.kept += 1
                bar.update(step)

    def verify(self) -> list[str]:
        self.dst_fs.invalidate_cache()
        return check_chunks(
            self.destination, deep=True, progress=self.progress,
            storage_options=self.destination_options,
        )  # fmt: skip

    def remove(self, keys: list[str]) -> None:
        for key in keys:
            try:
                self.dst_fs.rm_file(f"{self.dst_root}/{key}")
            except FileNotFoundError:
                pass  # a missing chunk is reported like a damaged one


_PROBLEM_FILE = re.compile(r"\(file ([^,)]+)")  # how check_chunks names a chunk file


def transfer(
    source: str | Path,
    destination: str | Path,
    *,
    source_options: dict[str, Any] | None = None,
    destination_options: dict[str, Any] | None = None,
    decompress: bool = False,
    overwrite: bool = False,
    jobs: int = DEFAULT_JOBS,
    progress: bool = True,
) -> TransferSummary:
    """Copy the complete store `source` to `destination` (paths or fsspec URLs), resumably;
    with `decompress`, compressed arrays arrive as raw, memory-mappable chunks."""
    source, destination = _location(source), _location(destination)
    if is_url(destination) and urlparse(destination).scheme in READ_ONLY_PROTOCOLS:
        raise TransferError(
            f"{destination}: http(s) locations are read-only; push to s3://, gs:// or a path"
        )
    fingerprint = open_store(
        source, memory_map=False, storage_options=source_options, check_chunk_files=False
    ).fingerprint
    group = zarr.open_group(source, mode="r", storage_options=url_options(source, source_options))
    copy = _Copy(source, destination, source_options, destination_options, jobs, progress)
    objects = _list_objects(copy.src_fs, copy.src_root)
    if ROOT_METADATA not in objects:  # a server that does not list: the schema names the objects
        objects = _object_sizes(copy.src_fs, copy.src_root, schema_object_keys(group))
    copy.claim(fingerprint, overwrite)

    # The root metadata first with `complete` false: the destination opens as an unfinished store.
    root_bytes = copy.src_fs.cat_file(f"{copy.src_root}/{ROOT_METADATA}")
    unfinished = json.loads(root_bytes)
    unfinished.setdefault("attributes", {})[ATTR_COMPLETE] = False
    _write_object(copy.dst_fs, f"{copy.dst_root}/{ROOT_METADATA}", json.dumps(unfinished).encode())

    reencoded: dict[str, zarr.Array] = {}
    if decompress:
        for key in objects:
            path = key.removesuffix(f"/{ROOT_METADATA}")
            if (
                key.endswith(f"/{ROOT_METADATA}")
                and isinstance(node := group[path], zarr.Array)
                and not has_raw_chunks(node)
            ):
                reencoded[path] = node
    owned = tuple(f"{path}/" for path in reencoded)  # objects the re-encoding writes instead
    verbatim = {k: s for k, s in objects.items() if k != ROOT_METADATA and not k.startswith(owned)}
    metadata = {k: s for k, s in verbatim.items() if k.endswith(f"/{ROOT_METADATA}")}
    data = {k: s for k, s in verbatim.items() if k not in metadata}

    def copy_all(show: bool) -> None:
        total = sum(objects.values()) - objects[ROOT_METADATA]
        with tqdm(total=total, unit="B", unit_scale=True, desc="copy", disable=not show) as bar:
            copy.copy_objects(data, bar)
            for path, array in reencoded.items():
                nbytes = sum(s for k, s in objects.items() if k.startswith(f"{path}/"))
                copy.reencode(path, array, nbytes, bar)
            copy.copy_objects(metadata, bar, keep_present=False)

    copy_all(progress)
    present = _list_objects(copy.dst_fs, copy.dst_root)
    stale = [k for k in present if k not in objects and not k.startswith(owned)]
    copy.remove(stale)  # e.g. chunks of an earlier copy of the same content with other chunking
    problems = copy.verify()
    damaged = [m.group(1) for p in problems if (m := _PROBLEM_FILE.search(p))]
    if damaged and len(damaged) == len(problems):
        logger.warning("%d chunks at %s are damaged; copying them again", len(damaged), destination)
        copy.remove(damaged)
        copy_all(False)
        problems = copy.verify()
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise TransferError(
            f"the copy at {destination} did not verify: {'; '.join(problems[:3])}{more}; "
            f"check the source with `python -m preprocess verify {source}`, then run again"
        )
    _write_object(copy.dst_fs, f"{copy.dst_root}/{ROOT_METADATA}", root_bytes)  # complete: last
    copied = open_store(destination, memory_map=False, storage_options=destination_options)
    if copied.fingerprint != fingerprint:
        raise TransferError(
            f"the copy at {destination} has fingerprint {copied.fingerprint}, the source "
            f"{fingerprint}; run again with --overwrite"
        )
    copy.dst_fs.rm_file(f"{copy.dst_root}/{MARKER}")
    return TransferSummary(
        source, destination, fingerprint, copy.copied, copy.kept, copy.copied_bytes,
        tuple(reencoded),
    )  # fmt: skip


# --- the trainer's cache ----------------------------------------------------------------------


def default_cache_dir() -> Path:
    """$NYMERIA_MVAE_CACHE, else $XDG_CACHE_HOME/nymeria-mvae/stores (~/.cache by default)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser()
    return base / "nymeria-mvae" / "stores"


@contextmanager
def _exclusive(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on `path` (torchrun ranks share one cache entry)."""
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def cached_store(
    path_or_url: str | Path,
    cache_dir: Path | None = None,
    storage_options: dict[str, Any] | None = None,
    progress: bool = True,
) -> str | Path:
    """A local copy of a remote store to memory-map, pulled once into `cache_dir` under the
    store's fingerprint and reused while it opens cleanly (fingerprint, every chunk file's
    size); a local path is returned as it is. Only the root metadata is read from a URL whose
    copy is cached."""
    if not is_url(path_or_url):
        return path_or_url
    url = str(path_or_url)
    try:
        attrs = zarr.open_group(url, mode="r", storage_options=storage_options).attrs.asdict()
    except FileNotFoundError:
        attrs = {}
    fingerprint = attrs.get(ATTR_FINGERPRINT)
    if attrs.get(ATTR_COMPLETE) is not True or not isinstance(fingerprint, str):
        fingerprint = open_store(url, memory_map=False, storage_options=storage_options).fingerprint
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    cache_dir.mkdir(parents=True, exist_ok=True)
    target = cache_dir / f"{fingerprint}.zarr"
    with _exclusive(cache_dir / f"{fingerprint}.lock"):
        if target.exists():
            try:
                if open_store(target).fingerprint == fingerprint:
                    logger.info("%s: using the local copy %s", url, target)
                    return target
            except StoreError as error:
                logger.warning("local copy of %s is not usable (%s); copying again", url, error)
        logger.info("%s: copying into the local cache %s", url, target)
        transfer(url, target, source_options=storage_options, decompress=True, progress=progress)
    return target
