"""Share a feature store through a URL: `preprocess push/pull/versions` and the trainer's local
copy of a URL (`cached_store`).

Layout at the URL (`shared.remote_layout`): `versions/FP/` holds one immutable store per
fingerprint with its `MANIFEST.json` (every object's size and crc32c), `CURRENT.json` points at
the published one.

Which objects exist is never taken from a listing: the store's own metadata (the schema's groups
and arrays, each array's chunk grid) names them, every key is validated (`check_key`: no `..`,
absolute path or backslash; a local source's files must not be symlinks out of it), shapes and
chunk counts are bounded before anything is allocated, and each object is read with its size
known beforehand (`read_bounded`: never more bytes than the schema or manifest says).

Push (local store -> URL): reads every object once, computes its crc32c (a chunk's must equal the
checksum it stores: a damaged local store is not published), uploads what `versions/FP/` does not
hold yet (in parallel; a killed push resumes), checks the uploaded sizes with one listing, writes
`MANIFEST.json` and then flips the pointer. An identical re-push reads the pointer and the
manifest, compares them with the local checksums and uploads nothing. Publishing another store
needs `overwrite` and never makes the URL unreadable: the old version stays until removed with
`remove_versions`.

Pull (URL -> local directory): resolves the pointer once, reads that version's manifest, and
copies into `DEST.pull/` beside DEST; each object is checked as it arrives (size, the manifest's
crc32c, a chunk's own checksum). Only a verified, complete copy replaces DEST, so a damaged or
unreachable remote leaves a good local copy as it was. A killed pull resumes from `DEST.pull/`
(its `.partial` temp files are removed first); objects of an earlier copy of the same store in
DEST are reused (hard links) when they verify. A URL of the previous layout (one store at the
URL itself, no pointer) is pulled the same way, without a manifest.

With `decompress`, compressed arrays are re-encoded locally as raw chunks (created by
`shared.store.create_store_array`, as the build creates them), which the reader memory-maps; the
fingerprint covers root attributes, table and stats, not codecs, so it is kept.

Nothing here imports h5py: the trainer uses it.
"""

from __future__ import annotations

import base64
import ctypes
import json
import logging
import math
import os
import shutil
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import product
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import google_crc32c
import zarr
from fsspec.implementations.local import LocalFileSystem
from tqdm import tqdm
from zarr.codecs import Crc32cCodec

from shared.atomic import TEMP_SUFFIX, atomic_path, exclusive_lock, temp_path_for
from shared.diskspace import disk_full_error
from shared.errors import InputError
from shared.remote import (
    DEFAULT_TIMEOUT_S,
    READ_ONLY_PROTOCOLS,
    S3_SCHEMES,
    filesystem,
    is_url,
    normalize_location,
    read_bounded,
    remote_options,
    retrying,
)
from shared.remote_layout import (
    MANIFEST,
    POINTER,
    ROOT_METADATA,
    VERSIONS,
    ManifestEntry,
    NothingPublishedError,
    Resolved,
    check_key,
    is_fingerprint,
    manifest_document,
    pointer_document,
    read_manifest,
    resolve,
    version_prefix,
)
from shared.store import (
    ATTR_COMPLETE,
    ATTR_FINGERPRINT,
    FRAME_ARRAYS,
    SEQUENCES_GROUP,
    STATS_GROUP,
    STATS_MEAN,
    STATS_STD,
    StoreError,
    create_store_array,
    encoded_chunk_nbytes,
    has_raw_chunks,
    open_store,
    schema_object_keys,
)

logger = logging.getLogger(__name__)

MARKER = ".nymeria-transfer.json"  # in a pull's staging directory: which store it collects
STAGING_SUFFIX = ".pull"  # DEST.pull/: where a pull collects and verifies its copy
DEFAULT_JOBS = 16  # requests in flight (network latency bound)
CACHE_ENV = "NYMERIA_MVAE_CACHE"
CHECKSUM_BYTES = 4  # a chunk ends with the little-endian CRC-32C of the bytes before it

MAX_METADATA_BYTES = 64 * 1024 * 1024  # a zarr.json (the sequence table lives in one)
MAX_CHUNKS_PER_ARRAY = 1_000_000  # the 39 GB store has ~4,000 per frame array
MAX_CHUNK_BYTES = 1 << 30  # decoded size of one chunk (the default is ~9.6 MB)
COMPRESSED_OVERHEAD_BYTES = 4096  # what zstd may add to an incompressible chunk, and more

SCHEMA_ARRAYS = (*FRAME_ARRAYS, f"{STATS_GROUP}/{STATS_MEAN}", f"{STATS_GROUP}/{STATS_STD}")
METADATA_KEYS = tuple(
    f"{node}/{ROOT_METADATA}".lstrip("/")
    for node in ("", SEQUENCES_GROUP, STATS_GROUP, *SCHEMA_ARRAYS)
)  # every group and array of the schema: known before any metadata is read


class TransferError(InputError):
    """A copy cannot start or did not verify; the message says what to do."""


@dataclass(frozen=True)
class TransferSummary:
    source: str
    destination: str  # for a push, the version's URL
    fingerprint: str
    copied_objects: int  # copied or re-encoded in this run
    kept_objects: int  # already there (an interrupted run, an earlier copy), verified
    copied_bytes: int
    reencoded_arrays: tuple[str, ...]  # compressed at the source, raw chunks at the destination
    outcome: str  # "published", "already published", "pointer moved", "pulled"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _crc_hex(value: int) -> str:
    return f"{value:08x}"


def _content_crc(key: str, data: bytes, chunk: bool) -> str:
    """The manifest's crc32c of an object (see `shared.remote_layout`); for a chunk also checks
    that it matches the checksum the chunk stores, else `TransferError`."""
    if not chunk:
        return _crc_hex(google_crc32c.value(data))
    if len(data) < CHECKSUM_BYTES:
        raise TransferError(f"{key}: {len(data)} bytes, too short for a chunk")
    computed = google_crc32c.value(data[:-CHECKSUM_BYTES])
    if computed != int.from_bytes(data[-CHECKSUM_BYTES:], "little"):
        raise TransferError(f"{key}: checksum mismatch (the bytes changed after they were written)")
    return _crc_hex(computed)


# --- what a store holds, from its own metadata ------------------------------------------------


def _is_chunk(key: str) -> bool:
    return key not in METADATA_KEYS


@dataclass(frozen=True)
class _Plan:
    """Every object of a store: key -> the size the schema fixes (None: metadata, compressed
    chunks), and the limit a read of it may not exceed."""

    sizes: dict[str, int | None]
    limits: dict[str, int]
    compressed: tuple[str, ...]  # arrays whose chunks are not raw


def _plan(group: zarr.Group, where: str) -> _Plan:
    """The objects of the store `group` (metadata already read) with bounds checked before any
    key is enumerated: chunk counts, chunk sizes, the crc32c codec last in every array."""
    compressed = []
    for path in SCHEMA_ARRAYS:
        try:
            array = group[path]
        except KeyError:
            raise TransferError(f"{where}: array {path} is missing") from None
        if not isinstance(array, zarr.Array):
            raise TransferError(f"{where}: {path} is a group, expected an array")
        chunks = math.prod(array.cdata_shape)
        chunk_bytes = math.prod(array.chunks) * array.dtype.itemsize
        if chunks > MAX_CHUNKS_PER_ARRAY or chunk_bytes > MAX_CHUNK_BYTES:
            raise TransferError(
                f"{where}: array {path} declares shape {array.shape} in chunks {array.chunks} "
                f"({chunks} chunks of {chunk_bytes} bytes); at most {MAX_CHUNKS_PER_ARRAY} "
                f"chunks of {MAX_CHUNK_BYTES} bytes are accepted: refused"
            )
        if not isinstance(array.metadata.codecs[-1], Crc32cCodec):
            raise TransferError(f"{where}: array {path} has no crc32c checksums: rebuild it")
        if not has_raw_chunks(array):
            compressed.append(path)
    keys = schema_object_keys(group)
    sizes: dict[str, int | None] = {}
    limits: dict[str, int] = {}
    for key in keys:
        check_key(key, where)
        if key in METADATA_KEYS:
            sizes[key], limits[key] = None, MAX_METADATA_BYTES
            continue
        path = next(p for p in SCHEMA_ARRAYS if key.startswith(f"{p}/"))
        array = group[path]
        raw = math.prod(array.chunks) * array.dtype.itemsize + CHECKSUM_BYTES
        fixed = encoded_chunk_nbytes(array)
        sizes[key] = fixed
        limits[key] = fixed if fixed is not None else raw + COMPRESSED_OVERHEAD_BYTES
    return _Plan(sizes, limits, tuple(compressed))


# --- a place objects are read from or written to ----------------------------------------------


class _Endpoint:
    """A store location (local path or URL): bounded, retried reads and whole-object writes."""

    def __init__(self, location: str, storage_options: dict | None, timeout: float) -> None:
        self.url = location.rstrip("/")
        self.storage_options, self.timeout = storage_options, timeout
        self.options = remote_options(self.url, storage_options, timeout)
        self.fs, root = filesystem(self.url, self.options, retried=True)
        self.root = root.rstrip("/")
        self.local = isinstance(self.fs, LocalFileSystem)

    def path(self, key: str) -> str:
        return f"{self.root}/{key}"

    def where(self, key: str) -> str:
        return f"{self.url}/{key}"

    def read(self, key: str, limit: int) -> bytes:
        data = self.read_optional(key, limit)
        if data is None:
            raise TransferError(f"{self.where(key)} is missing")
        return data

    def read_optional(self, key: str, limit: int) -> bytes | None:
        """Object `key` (None when missing), refused when larger than `limit` bytes."""
        try:
            return retrying(lambda: read_bounded(self.fs, self.path(key), limit), self.where(key))
        except FileNotFoundError:
            return None
        except ValueError as error:
            raise TransferError(f"{self.where(key)}: larger than expected ({error})") from None

    def write(self, key: str, data: bytes) -> None:
        """Write one object whole: locally a temp file and a rename; an object store makes a
        put visible only when complete (S3 also checks the crc32c we send)."""
        if self.local:
            _write_file(Path(self.path(key)), data)
            return
        extra = {}
        if urlparse(self.url).scheme in S3_SCHEMES:
            crc = google_crc32c.value(data).to_bytes(4, "big")
            extra["ChecksumCRC32C"] = base64.b64encode(crc).decode()
        retrying(lambda: self.fs.pipe_file(self.path(key), data, **extra), self.where(key))

    def sizes(self, prefix: str) -> dict[str, int]:
        """Size of every object under `prefix` by key relative to it (one listing): what a push
        finds of an unfinished version, what `versions` reports."""
        root = self.path(prefix).rstrip("/")
        self.fs.invalidate_cache()
        try:
            listing = retrying(lambda: self.fs.find(root, detail=True), self.where(prefix))
        except FileNotFoundError:
            return {}
        start = len(root) + 1
        return {
            path[start:]: int(info["size"])
            for path, info in listing.items()
            if path.startswith(f"{root}/")
            and info.get("type") != "directory"
            and info.get("size") is not None
        }

    def remove(self, prefix: str) -> None:
        try:
            retrying(lambda: self.fs.rm(self.path(prefix), recursive=True), self.where(prefix))
        except FileNotFoundError:
            pass


def _write_file(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def _write_staged(path: Path, data: bytes) -> None:
    """Write one object of a pull's staging directory: a temp file renamed into place, not
    synced (`_flush_to_disk` syncs the whole copy once before it replaces DEST; an fsync per
    object cost a third of a pull's time). A full disk is a `DiskFullError`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path_for(path)
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except BaseException as error:
        tmp.unlink(missing_ok=True)
        full = disk_full_error(error, path.parent, None, f"pulling into {path.parent}")
        if full is not None:
            raise full from error
        raise


def _flush_to_disk(directory: Path) -> None:
    """Make every file written under `directory` durable: one syncfs(2) of its file system
    (Linux), else sync(2)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        syncfs = getattr(ctypes.CDLL(None, use_errno=True), "syncfs", None)
        if syncfs is None or syncfs(fd) != 0:
            os.sync()
    finally:
        os.close(fd)


def _in_parallel(
    work: Callable[[str], Any], keys: list[str], jobs: int, bar: tqdm, weight: dict[str, int]
) -> dict[str, Any]:
    """`work(key)` for every key, `jobs` at a time; results by key."""
    results = {}
    with ThreadPoolExecutor(jobs) as pool:
        for key, result in zip(keys, pool.map(work, keys), strict=True):
            results[key] = result
            bar.update(weight.get(key, 0))
    return results


# --- push -------------------------------------------------------------------------------------


def _local_object(source: Path, key: str) -> Path:
    """The file of `key` in the local store `source`: a regular file inside it (a symlink that
    leads out of the store is refused)."""
    path = source / key
    real = Path(os.path.realpath(path))
    if not real.is_relative_to(source) or not real.is_file():
        raise TransferError(
            f"{path} is not a regular file inside {source} (a symlink out of the store?): refused"
        )
    return path


def _root_attributes(data: bytes | None) -> dict:
    """The attributes of a root `zarr.json`, {} when it is missing or malformed."""
    try:
        attrs = json.loads(data)["attributes"] if data is not None else {}
    except (ValueError, TypeError, KeyError, IndexError, RecursionError):
        return {}
    return attrs if isinstance(attrs, dict) else {}


def _unfinished(url: str) -> TransferError:
    return TransferError(
        f"the store at {url} is incomplete (a copy to it did not finish): run the push again, "
        f"`python -m preprocess push STORE {url}`"
    )


def _published_fingerprint(endpoint: _Endpoint) -> str | None:
    """The fingerprint of what the URL publishes now, None for nothing (what a push may replace
    only with --overwrite)."""
    try:
        return published(endpoint.url, endpoint.storage_options, endpoint.timeout)[1]
    except NothingPublishedError:
        return None
    except TransferError:
        return "an unfinished or unreadable store of the previous layout"


def published(
    url: str, storage_options: dict | None = None, timeout: float = DEFAULT_TIMEOUT_S
) -> tuple[Resolved, str]:
    """What `url` publishes and its fingerprint, reading only the pointer (the root metadata for
    the previous layout, whose unfinished copy says to run the push again)."""
    resolved = resolve(url, storage_options, timeout)
    if resolved.fingerprint is not None:
        return resolved, resolved.fingerprint
    endpoint = _Endpoint(url, storage_options, timeout)
    attrs = _root_attributes(endpoint.read(ROOT_METADATA, MAX_METADATA_BYTES))
    if attrs.get(ATTR_COMPLETE) is not True:
        raise _unfinished(url)
    fingerprint = attrs.get(ATTR_FINGERPRINT)
    if not is_fingerprint(fingerprint):
        raise TransferError(f"{url}/{ROOT_METADATA} records no valid fingerprint: {fingerprint!r}")
    return resolved, fingerprint


def _summary(
    source: str,
    destination: str,
    fingerprint: str,
    outcomes: dict[str, int | None],
    reencoded: tuple[str, ...],
    outcome: str,
) -> TransferSummary:
    """`outcomes`: key -> bytes copied in this run, None for an object kept: each counted once."""
    copied = [n for n in outcomes.values() if n is not None]
    return TransferSummary(
        source,
        destination,
        fingerprint,
        len(copied),
        len(outcomes) - len(copied),
        sum(copied),
        reencoded,
        outcome,
    )


def _local_manifest(
    files: dict[str, Path], plan: _Plan, jobs: int, progress: bool, upload: Callable | None = None
) -> tuple[dict[str, ManifestEntry], dict[str, int | None]]:
    """Read every object of a local store once: its manifest entry (size and crc32c, a chunk's
    checked against the checksum it stores) and, with `upload(key, data, entry)` returning the
    bytes it copied or None, the outcome of handing it on."""
    total = sum(path.stat().st_size for path in files.values())
    weight = {key: path.stat().st_size for key, path in files.items()}

    def one(key: str) -> tuple[ManifestEntry, int | None]:
        data = files[key].read_bytes()
        if plan.sizes[key] is not None and len(data) != plan.sizes[key]:
            raise TransferError(f"{files[key]}: {len(data)} bytes, expected {plan.sizes[key]}")
        entry = ManifestEntry(len(data), _content_crc(str(files[key]), data, _is_chunk(key)))
        return entry, upload(key, data, entry) if upload else None

    desc = "upload" if upload else "checksum"
    with tqdm(total=total, unit="B", unit_scale=True, desc=desc, disable=not progress) as bar:
        results = _in_parallel(one, sorted(files), jobs, bar, weight)
    return {k: r[0] for k, r in results.items()}, {k: r[1] for k, r in results.items()}


def push(
    store: str | Path,
    url: str | Path,
    *,
    storage_options: dict[str, Any] | None = None,
    overwrite: bool = False,
    jobs: int = DEFAULT_JOBS,
    timeout: float = DEFAULT_TIMEOUT_S,
    progress: bool = True,
) -> TransferSummary:
    """Publish the complete local store `store` at `url` as version `versions/FP/` and point
    `CURRENT.json` at it (see the module docstring); resumable, a no-op when already published."""
    source, url = Path(normalize_location(store)), normalize_location(url)
    if is_url(url) and urlparse(url).scheme in READ_ONLY_PROTOCOLS:
        raise TransferError(
            f"{url}: http(s) locations are read-only; push to s3://, gs:// or a path"
        )
    fingerprint = open_store(source, memory_map=False).fingerprint
    plan = _plan(zarr.open_group(source, mode="r"), str(source))
    files = {key: _local_object(source, key) for key in plan.sizes}
    endpoint = _Endpoint(url, storage_options, timeout)
    current = _published_fingerprint(endpoint)
    _check_publishable(endpoint, url, current, fingerprint, overwrite)
    version_url = endpoint.where(version_prefix(fingerprint))
    manifest_there = read_manifest(url, fingerprint, storage_options, timeout)
    if manifest_there is not None:
        local, _ = _local_manifest(files, plan, jobs, progress)
        _check_same_form(manifest_there, local, url, version_url, current, fingerprint)
        outcome = "already published" if current == fingerprint else "pointer moved"
        if current != fingerprint:
            _write_pointer(endpoint, fingerprint)
        return _summary(str(source), version_url, fingerprint, dict.fromkeys(local), (), outcome)
    outcomes = _upload_version(endpoint, fingerprint, files, plan, jobs, progress)
    _write_pointer(endpoint, fingerprint)
    return _summary(str(source), version_url, fingerprint, outcomes, (), "published")


def _check_publishable(
    endpoint: _Endpoint, url: str, current: str | None, fingerprint: str, overwrite: bool
) -> None:
    """Refuse, unless `overwrite`, a URL that publishes another store or holds other objects."""
    if current not in (None, fingerprint) and not overwrite:
        raise TransferError(
            f"{url} publishes {current}, not this store ({fingerprint}); pass --overwrite to "
            f"publish this one as a new version (the current one stays until `python -m "
            f"preprocess versions {url} --remove FP`)"
        )
    if current is None and not overwrite:
        foreign = [k for k in endpoint.sizes("") if not k.startswith(f"{VERSIONS}/")]
        if foreign:
            raise TransferError(
                f"{url} holds {len(foreign)} objects that are not a published store (e.g. "
                f"{foreign[0]}); pass --overwrite to publish beside them, or choose another URL"
            )


def _check_same_form(
    there: dict[str, ManifestEntry],
    local: dict[str, ManifestEntry],
    url: str,
    version_url: str,
    current: str | None,
    fingerprint: str,
) -> None:
    """Refuse a version already at the URL whose manifest differs from the local store's."""
    if there == local:
        return
    remedy = (
        "pull it from there, or publish this form at another URL"
        if current == fingerprint
        else f"remove it with `python -m preprocess versions {url} --remove "
        f"{fingerprint}` and push again"
    )
    raise TransferError(
        f"{version_url} holds this store's content in another form (codecs or chunking: its "
        f"{MANIFEST} differs); {remedy}"
    )


def _upload_version(
    endpoint: _Endpoint,
    fingerprint: str,
    files: dict[str, Path],
    plan: _Plan,
    jobs: int,
    progress: bool,
) -> dict[str, int | None]:
    """Upload the objects of version `fingerprint` missing at `endpoint` (of an interrupted push
    too), check every size, then write its manifest; bytes uploaded per object."""
    version = version_prefix(fingerprint)
    present = endpoint.sizes(version)

    def upload(key: str, data: bytes, entry: ManifestEntry) -> int | None:
        if present.get(key) == entry.size:
            return None  # from an interrupted push (object puts are all or nothing)
        endpoint.write(f"{version}/{key}", data)
        return entry.size

    manifest, outcomes = _local_manifest(files, plan, jobs, progress, upload)
    uploaded = endpoint.sizes(version)
    wrong = [k for k, e in manifest.items() if uploaded.get(k) != e.size]
    if wrong:
        raise TransferError(
            f"{len(wrong)} objects of {endpoint.where(version)} are missing or of the wrong size "
            f"after the upload (e.g. {wrong[0]}: {uploaded.get(wrong[0])} bytes, expected "
            f"{manifest[wrong[0]].size}); run the push again"
        )
    document = manifest_document(fingerprint, manifest, _now())
    endpoint.write(f"{version}/{MANIFEST}", json.dumps(document, indent=1).encode())
    return outcomes


def _write_pointer(endpoint: _Endpoint, fingerprint: str) -> None:
    endpoint.write(POINTER, json.dumps(pointer_document(fingerprint, _now()), indent=1).encode())


# --- pull -------------------------------------------------------------------------------------


def _remove_temp_files(directory: Path) -> None:
    """Remove the temp files (`.NAME.PID.TOKEN.partial`) a killed run left in `directory`."""
    for path in directory.rglob(f".*{TEMP_SUFFIX}"):
        if path.is_file() and not path.is_symlink():
            path.unlink(missing_ok=True)


def _read_local(path: Path, limit: int) -> bytes | None:
    """The bytes of a regular file (not a symlink) of at most `limit` bytes, else None."""
    try:
        if not path.is_file() or path.is_symlink() or path.stat().st_size > limit:
            return None
        return path.read_bytes()
    except OSError:
        return None


def _store_fingerprint(directory: Path) -> str | None:
    """The fingerprint a local store's root metadata records (None when there is none)."""
    return _root_attributes(_read_local(directory / ROOT_METADATA, MAX_METADATA_BYTES)).get(
        ATTR_FINGERPRINT
    )


class _Pull:
    """One pull of the store at `source` into `staging`, reusing verified objects of `staging`
    (an interrupted run) and of `dest` (an earlier copy of the same store)."""

    def __init__(
        self, source: _Endpoint, staging: Path, manifest: dict | None, jobs: int, progress: bool
    ) -> None:
        self.source, self.staging, self.manifest = source, staging, manifest
        self.jobs, self.progress = jobs, progress
        self.reuse: Path | None = None  # dest, once it is known to hold the same store
        self.outcomes: dict[str, int | None] = {}

    def _check(self, key: str, data: bytes, size: int | None) -> None:
        """`TransferError` unless `data` is object `key` as published."""
        if size is not None and len(data) != size:
            raise TransferError(f"{self.source.where(key)}: {len(data)} bytes, expected {size}")
        crc = _content_crc(self.source.where(key), data, _is_chunk(key))
        if self.manifest is not None and crc != self.manifest[key].crc32c:
            raise TransferError(
                f"{self.source.where(key)}: crc32c {crc}, the manifest says "
                f"{self.manifest[key].crc32c} (the object changed after it was published)"
            )

    def _kept(self, key: str, size: int | None, limit: int) -> bool:
        """Whether a verified copy of `key` is in staging (or linked there from dest)."""
        if self.manifest is None and not _is_chunk(key):
            return False  # metadata of the previous layout: nothing to check it against
        for base in (self.staging, self.reuse):
            data = _read_local(base / key, limit) if base is not None else None
            if data is None:
                continue
            try:
                self._check(key, data, size)
            except TransferError:
                continue
            if base != self.staging:
                target = self.staging / key
                target.parent.mkdir(parents=True, exist_ok=True)
                target.unlink(missing_ok=True)
                try:
                    os.link(base / key, target)
                except OSError:
                    _write_staged(target, data)
            return True
        return False

    def fetch(self, keys: list[str], sizes: dict[str, int | None], limits: dict[str, int]) -> None:
        """Copy `keys` into staging, each checked as it arrives (a damaged read is tried once
        more); objects already there and verified are kept."""
        if self.manifest is not None:
            sizes = {k: self.manifest[k].size for k in keys}
            limits = {k: min(limits[k], sizes[k]) for k in keys}

        def one(key: str) -> int | None:
            if self._kept(key, sizes[key], limits[key]):
                return None
            for attempt in range(2):
                data = self.source.read(key, limits[key])
                try:
                    self._check(key, data, sizes[key])
                    break
                except TransferError:
                    if attempt:
                        raise
            _write_staged(self.staging / key, data)
            return len(data)

        weight = {k: sizes[k] or 0 for k in keys}
        with tqdm(
            total=sum(weight.values()),
            unit="B",
            unit_scale=True,
            desc="download",
            disable=not self.progress or len(keys) < 50,
        ) as bar:
            self.outcomes.update(_in_parallel(one, keys, self.jobs, bar, weight))


def _prepare_staging(staging: Path, dest: Path, source: str) -> None:
    """Make `staging` this pull's: kept when an interrupted pull of the same source left it
    (minus its temp files), else emptied."""
    marker = _read_local(staging / MARKER, MAX_METADATA_BYTES)
    try:
        same = marker is not None and json.loads(marker).get("source") == source
    except ValueError:
        same = False
    if staging.exists() and not same:
        shutil.rmtree(staging)
    staging.mkdir(parents=True, exist_ok=True)
    for directory in (staging, dest):
        if directory.is_dir():
            _remove_temp_files(directory)
    shutil.rmtree(staging / REENCODED, ignore_errors=True)
    _write_file(staging / MARKER, json.dumps({"source": source, "started": _now()}).encode())


REENCODED = ".raw"  # in staging: the store with compressed arrays re-encoded as raw chunks


def _reencode(staging: Path, plan: _Plan, jobs: int) -> Path:
    """The store of `staging` with `plan.compressed` arrays as raw chunks, in `staging/.raw`
    (the other objects hard-linked); each source chunk's checksum is checked as it is decoded."""
    raw = staging / REENCODED
    owned = tuple(f"{path}/" for path in plan.compressed)
    for key in plan.sizes:
        if not key.startswith(owned):
            (raw / key).parent.mkdir(parents=True, exist_ok=True)
            os.link(staging / key, raw / key)
    source_group = zarr.open_group(staging, mode="r")
    target_group = zarr.open_group(raw, mode="r+")
    for path in plan.compressed:
        source = source_group[path]
        parent_path, _, name = path.rpartition("/")
        parent = target_group[parent_path] if parent_path else target_group
        target = create_store_array(
            parent,
            name,
            shape=source.shape,
            chunks=source.chunks,
            dtype=source.dtype,
            dimension_names=source.metadata.dimension_names,
            fill_value=source.metadata.fill_value,
            overwrite=True,
        )
        target.attrs.update(source.attrs.asdict())
        coords = list(product(*(range(n) for n in source.cdata_shape)))

        def write(chunk: tuple[int, ...], source=source, target=target) -> None:
            target.set_block_selection(chunk, source.get_block_selection(chunk))

        with ThreadPoolExecutor(jobs) as pool:
            list(pool.map(write, coords))
    return raw


def _replace(final: Path, dest: Path) -> None:
    """Put the verified copy `final` at `dest`, the previous content of `dest` removed after."""
    if dest.exists():
        old = dest.with_name(f".{dest.name}.replaced-{os.getpid()}")
        os.rename(dest, old)
        os.rename(final, dest)
        shutil.rmtree(old)
    else:
        os.rename(final, dest)


def pull(
    url: str | Path,
    dest: str | Path,
    *,
    storage_options: dict[str, Any] | None = None,
    decompress: bool = True,
    overwrite: bool = False,
    jobs: int = DEFAULT_JOBS,
    timeout: float = DEFAULT_TIMEOUT_S,
    progress: bool = True,
) -> TransferSummary:
    """Copy the store published at `url` into the local directory `dest` (see the module
    docstring); `dest` changes only once the copy is complete and verified."""
    url = normalize_location(url)
    return _pull(
        url,
        resolve(url, storage_options, timeout),
        dest,
        storage_options,
        decompress,
        overwrite,
        jobs,
        timeout,
        progress,
    )


def _pull(
    url: str,
    resolved: Resolved,
    dest: str | Path,
    storage_options: dict | None,
    decompress: bool,
    overwrite: bool,
    jobs: int,
    timeout: float,
    progress: bool,
) -> TransferSummary:
    manifest = _pull_manifest(url, resolved, storage_options, timeout)
    dest = Path(normalize_location(dest))
    staging = dest.with_name(f"{dest.name}{STAGING_SUFFIX}")
    source = _Endpoint(resolved.root_url, storage_options, timeout)
    _prepare_staging(staging, dest, source.url)
    copy = _Pull(source, staging, manifest, jobs, progress)

    limits = dict.fromkeys(METADATA_KEYS, MAX_METADATA_BYTES)
    copy.fetch(list(METADATA_KEYS), dict.fromkeys(METADATA_KEYS), limits)
    fingerprint = _staged_fingerprint(url, resolved, source, staging)
    found = _store_fingerprint(dest) if dest.exists() else None
    if dest.exists() and any(dest.iterdir()) and found != fingerprint and not overwrite:
        shutil.rmtree(staging)  # nothing to resume: this destination is refused
        what = f"a store with fingerprint {found}" if found else "other files"
        raise TransferError(
            f"{dest} already holds {what}, not this store ({fingerprint}); pass --overwrite to "
            f"replace it (only once the new copy is verified), or choose another destination"
        )
    copy.reuse = dest if found == fingerprint else None
    plan = _staged_plan(staging, resolved.root_url, manifest)
    copy.fetch([k for k in plan.sizes if _is_chunk(k)], plan.sizes, plan.limits)
    final = _reencode(staging, plan, jobs) if decompress and plan.compressed else staging
    try:
        copied = open_store(final, memory_map=False)
    except StoreError as error:
        raise TransferError(f"the copy of {url} does not open: {error}") from None
    if copied.fingerprint != fingerprint:
        raise TransferError(f"the copy of {url} has fingerprint {copied.fingerprint}")
    (final / MARKER).unlink(missing_ok=True)
    _flush_to_disk(final)
    _replace(final, dest)
    shutil.rmtree(staging, ignore_errors=True)
    reencoded = plan.compressed if final != staging else ()
    return _summary(url, str(dest), fingerprint, copy.outcomes, reencoded, "pulled")


def _pull_manifest(
    url: str, resolved: Resolved, storage_options: dict | None, timeout: float
) -> dict[str, ManifestEntry] | None:
    """The manifest of a published version (None for a store of the previous layout); one
    without the metadata objects is refused."""
    if resolved.layout != "versioned":
        return None
    manifest = read_manifest(url, resolved.fingerprint, storage_options, timeout)
    if manifest is None:
        raise TransferError(
            f"{resolved.root_url} has no {MANIFEST}: its push did not finish; run the push again"
        )
    missing = [k for k in METADATA_KEYS if k not in manifest]
    if missing:
        raise TransferError(f"{resolved.root_url}/{MANIFEST} lacks {missing[0]}")
    return manifest


def _staged_fingerprint(url: str, resolved: Resolved, source: _Endpoint, staging: Path) -> str:
    """The fingerprint of the complete store whose metadata is in `staging`: the pointer's."""
    attrs = _root_attributes(_read_local(staging / ROOT_METADATA, MAX_METADATA_BYTES))
    fingerprint = attrs.get(ATTR_FINGERPRINT)
    if attrs.get(ATTR_COMPLETE) is not True:
        raise _unfinished(url)
    if not is_fingerprint(fingerprint) or fingerprint != (resolved.fingerprint or fingerprint):
        raise TransferError(
            f"{source.where(ROOT_METADATA)} records fingerprint {fingerprint!r}, the pointer "
            f"{resolved.fingerprint}: the published version is damaged"
        )
    return fingerprint


def _staged_plan(staging: Path, root_url: str, manifest: dict[str, ManifestEntry] | None) -> _Plan:
    """The objects of the store whose metadata is in `staging`, checked against `manifest`."""
    try:
        plan = _plan(zarr.open_group(staging, mode="r"), root_url)
    except (ValueError, TypeError, KeyError, zarr.errors.BaseZarrError) as error:
        if isinstance(error, TransferError):
            raise
        raise TransferError(f"{root_url}: malformed metadata ({error})") from None
    if manifest is not None:
        wrong = [
            k
            for k, size in plan.sizes.items()
            if k not in manifest
            or (size is not None and manifest[k].size != size)
            or manifest[k].size > plan.limits[k]
        ]
        if wrong:
            raise TransferError(
                f"{root_url}/{MANIFEST} does not match the store's metadata: "
                f"{wrong[0]} is {'missing' if wrong[0] not in manifest else 'of another size'}"
            )
    return plan


# --- versions ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class VersionInfo:
    fingerprint: str
    current: bool  # the pointer names it
    complete: bool  # its manifest is there
    objects: int
    nbytes: int
    created: str | None  # from the manifest


def list_versions(
    url: str | Path, storage_options: dict | None = None, timeout: float = DEFAULT_TIMEOUT_S
) -> list[VersionInfo]:
    """Every version under `url/versions/`, oldest first (unfinished ones last)."""
    endpoint = _Endpoint(normalize_location(url), storage_options, timeout)
    current = _published_fingerprint(endpoint)
    by_version: dict[str, list[int]] = {}
    for key, size in endpoint.sizes(VERSIONS).items():
        by_version.setdefault(key.split("/", 1)[0], []).append(size)
    infos = []
    for fingerprint, sizes in by_version.items():
        if not is_fingerprint(fingerprint):
            continue
        data = endpoint.read_optional(
            f"{version_prefix(fingerprint)}/{MANIFEST}", MAX_METADATA_BYTES
        )
        created = None
        if data is not None:
            try:
                created = json.loads(data).get("created")
            except ValueError:
                data = None
        infos.append(
            VersionInfo(
                fingerprint,
                fingerprint == current,
                data is not None,
                len(sizes),
                sum(sizes),
                created,
            )
        )
    return sorted(infos, key=lambda v: (not v.complete, v.created or ""))


def remove_versions(
    url: str | Path,
    fingerprints: list[str],
    storage_options: dict | None = None,
    timeout: float = DEFAULT_TIMEOUT_S,
) -> None:
    """Delete versions of `url` (manifest first, so a half-removed version reads as
    unfinished); the current one is refused."""
    endpoint = _Endpoint(normalize_location(url), storage_options, timeout)
    current = _published_fingerprint(endpoint)
    for fingerprint in fingerprints:
        if fingerprint == current:
            raise TransferError(
                f"{fingerprint} is the version {endpoint.where(POINTER)} points at; publish "
                f"another one first"
            )
        if not is_fingerprint(fingerprint):
            raise TransferError(f"{fingerprint!r} is not a fingerprint (64 hex digits)")
    for fingerprint in fingerprints:
        prefix = version_prefix(fingerprint)
        endpoint.remove(f"{prefix}/{MANIFEST}")
        endpoint.remove(prefix)


# --- the trainer's cache ----------------------------------------------------------------------


def default_cache_dir() -> Path:
    """$NYMERIA_MVAE_CACHE, else $XDG_CACHE_HOME/nymeria-mvae/stores (~/.cache by default)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser()
    return base / "nymeria-mvae" / "stores"


def cached_store(
    path_or_url: str | Path,
    cache_dir: Path | None = None,
    storage_options: dict[str, Any] | None = None,
    progress: bool = True,
    timeout: float = DEFAULT_TIMEOUT_S,
) -> str | Path:
    """A local copy of a remote store to memory-map, pulled once into `cache_dir` under the
    store's fingerprint and reused while it opens cleanly (fingerprint, every chunk file's
    size); a local path is returned as it is. A URL whose copy is cached costs one read of its
    pointer (of its root metadata for the previous layout)."""
    if not is_url(path_or_url):
        return path_or_url
    url = str(path_or_url).rstrip("/")
    resolved, fingerprint = published(url, storage_options, timeout)
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    cache_dir.mkdir(parents=True, exist_ok=True)
    target = cache_dir / f"{fingerprint}.zarr"
    with exclusive_lock(cache_dir / f"{fingerprint}.lock"):
        if target.exists():
            try:
                if open_store(target).fingerprint == fingerprint:
                    logger.info("%s: using the local copy %s", url, target)
                    return target
            except StoreError as error:
                logger.warning("local copy of %s is not usable (%s); copying again", url, error)
        logger.info("%s: copying into the local cache %s", url, target)
        _pull(url, resolved, target, storage_options, True, True, DEFAULT_JOBS, timeout, progress)
    return target
