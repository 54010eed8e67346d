"""What a store holds: the names, attributes, records and chunk files every reader and writer of
this project's stores agrees on (the feature store, schema v2; and the root attributes and
sequence table the latent and decoded stores share with it), and the checks a reader makes of
them on open (`check_root_attrs`, `read_table`).

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

Chunk files: every array's codec chain ends with `crc32c` (`CHECKSUM_BYTES` after the encoded
chunk); an uncompressed chunk file is the raw C-order chunk then its checksum
(`has_raw_chunks`, `encoded_chunk_nbytes`).

This module must not import h5py or hdf5plugin: the trainer imports it.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.codecs import BytesCodec, Crc32cCodec
from zarr.core.metadata.v3 import ArrayV3Metadata

from shared.errors import InputError

# --- attributes every store of this project has (or shares with another) ----------------------
ATTR_SCHEMA = "schema"  # {"name": ..., "version": ...}
ATTR_PACKAGE_VERSION = "package_version"  # of the code that wrote the store
ATTR_GIT_REVISION = "git_revision"  # of the code that wrote the store
ATTR_CREATED = "created"  # ISO 8601, UTC
ATTR_COMPLETE = "complete"  # True, written last
ATTR_FPS = "fps"  # rows per second of the store's main arrays (frames/s; latents/s in latents)
ATTR_SPLIT = "split"  # which split (or "all") the sequences or statistics are of
ATTR_WINDOW_FRAMES = "window_frames"  # frames per window (of the statistics, of the latents)

SEQUENCES_GROUP = "sequences"
ATTR_TABLE = "table"  # on SEQUENCES_GROUP: the sequence table, {column: [value per row]}


# The project's store schemas, named here rather than by their writers (`preprocess` never
# imports `train`), so that a store opened as the wrong kind is named for what it is: what each
# is called and the command that describes one.
FEATURE_SCHEMA_NAME = "nymeria-motion-features"
LATENT_SCHEMA_NAME = "nymeria-motion-latents"
DECODED_SCHEMA_NAME = "nymeria-motion-decoded"
STORE_KINDS: dict[str, tuple[str, str]] = {
    FEATURE_SCHEMA_NAME: ("feature store", "python -m preprocess info"),
    LATENT_SCHEMA_NAME: ("latent store", "python -m train info"),
    DECODED_SCHEMA_NAME: ("decoded store", "python -m train info"),
}


class StoreError(InputError):
    """A store that cannot be used as it is; the message says what to do."""


@dataclass(frozen=True)
class Schema:
    """A store's schema name and version, and what to tell the user of another one."""

    name: str
    version: int
    about_version: str
    """What this version holds that others do not, e.g. "v2 added per-chunk checksums"."""
    how_to_write: str
    """The command that writes a store of this schema, e.g. "build one with `...`"."""
    how_to_upgrade: str
    """What to do with a store of another version, e.g. "rebuild it with `...`"."""
    old_versions: Mapping[int, str] = field(default_factory=dict)
    """Why a store of an older version is refused, by version (said after the version)."""

    def attrs(self) -> dict[str, Any]:
        return {ATTR_SCHEMA: {"name": self.name, "version": self.version}}


def check_root_attrs(
    attrs: Mapping[str, Any], url: str | Path, schema: Schema, incomplete_hint: str
) -> None:
    """Raise `StoreError` unless `attrs` are the root attributes of a complete store of
    `schema` (name, then version, then `complete`); `incomplete_hint` says what to do with an
    incomplete one."""
    found = attrs.get(ATTR_SCHEMA)
    name = found.get("name") if isinstance(found, Mapping) else None
    if name != schema.name and isinstance(name, str) and name in STORE_KINDS:
        kind, describe = STORE_KINDS[name]
        wanted = STORE_KINDS[schema.name][0] if schema.name in STORE_KINDS else "store"
        raise StoreError(
            f"{url} is a {kind} (schema {name!r}), not a {wanted} ({schema.name!r}); "
            f"`{describe} {url}` describes it"
        )
    if not isinstance(found, Mapping) or found.get("name") != schema.name:
        raise StoreError(
            f"{url} is not a {schema.name!r} store (root attribute {ATTR_SCHEMA!r} is "
            f"{found!r}); {schema.how_to_write}"
        )
    version = found.get("version")
    if version != schema.version:
        why = schema.old_versions.get(version, "") if isinstance(version, int) else ""
        raise StoreError(
            f"store {url} has schema version {version!r}{why}, this code reads version "
            f"{schema.version} ({schema.about_version}); {schema.how_to_upgrade} (or use the code "
            f"version that wrote it: package {attrs.get(ATTR_PACKAGE_VERSION)!r})"
        )
    if attrs.get(ATTR_COMPLETE) is not True:
        raise StoreError(
            f"store {url} is incomplete (the run writing it was interrupted or is still "
            f"running): {incomplete_hint}"
        )


def read_table(
    parent: zarr.Group, columns: Sequence[str], where: str, hint: str
) -> dict[str, list]:
    """The sequence table of `parent`, checked to have `columns`, all of one length; a
    `StoreError` naming `where` and ending with `hint` otherwise."""
    try:
        table = parent[SEQUENCES_GROUP].attrs[ATTR_TABLE]
    except KeyError:
        raise StoreError(f"{where} has no sequence table; {hint}") from None
    if not isinstance(table, Mapping):
        raise StoreError(f"{where}: the sequence table is {type(table).__name__}; {hint}")
    missing = [c for c in columns if c not in table]
    if missing:
        raise StoreError(f"{where}: sequence table lacks columns {missing}; {hint}")
    lengths = {c: len(table[c]) for c in columns}
    if len(set(lengths.values())) != 1:
        raise StoreError(f"{where}: sequence table columns differ in length {lengths}; {hint}")
    return {c: list(table[c]) for c in columns}


# --- the feature store ------------------------------------------------------------------------

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

# --- root attributes (and the ones every store has, above: schema, fps, provenance, complete) -
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

# --- group attributes (and ATTR_WINDOW_FRAMES, ATTR_SPLIT above, on STATS_GROUP) --------------
STATS_ATTR_COUNT = "count"
STATS_ATTR_STRIDE_FRAMES = "stride_frames"
STATS_ATTR_STD_FLOOR = "std_floor"

TABLE_COLUMNS: tuple[str, ...] = ("name", "participant", "start", "length", "split", "source_files")

CHECKSUM_BYTES = 4  # the crc32c codec appends the little-endian CRC-32C of the encoded chunk


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


# --- sequence table <-> JSON (stored by shared.store.write.write_table) -----------------------


def table_to_json(records: Sequence[SequenceRecord]) -> dict[str, list]:
    """Column-wise JSON of the sequence table, as `shared.store.write.write_table` stores it."""
    return {
        "name": [r.name for r in records],
        "participant": [r.participant for r in records],
        "start": [int(r.start) for r in records],
        "length": [int(r.length) for r in records],
        "split": [r.split for r in records],
        "source_files": [list(r.source_files) for r in records],
    }


def describe_schema(info: Mapping[str, Any]) -> str:
    """The `schema` line of `preprocess info` and `train info`: schema, version and provenance,
    from a store's description (keys schema, package_version, git_revision, created)."""
    schema = info["schema"]
    return (
        f"schema       {schema['name']} v{schema['version']} (package "
        f"{info['package_version']}, git {info['git_revision']}, created {info['created']})"
    )


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


# --- chunk files ------------------------------------------------------------------------------


def raw_checksum_bytes(array: zarr.Array | ArrayV3Metadata) -> int | None:
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
    return raw_checksum_bytes(array) is not None


def encoded_chunk_nbytes(array: zarr.Array) -> int | None:
    """Size of every chunk file of `array` when its codecs fix it (raw, crc32c), else None."""
    checksum_bytes = raw_checksum_bytes(array)
    if checksum_bytes is None:
        return None
    return math.prod(array.chunks) * array.dtype.itemsize + checksum_bytes
