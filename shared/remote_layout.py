"""How a shared store is laid out at a URL: immutable versions and a pointer (issue 19).

    URL/CURRENT.json                 the pointer: {"format": POINTER_FORMAT, "fingerprint": FP,
                                     "version": "versions/FP", "published": ISO time}
    URL/versions/FP/                 one immutable store, exactly as built (zarr.json, arrays...)
    URL/versions/FP/MANIFEST.json    every object of that version: key -> size and crc32c

A push writes `versions/FP/` (objects, then MANIFEST.json last) and only then replaces the
pointer, so a reader who resolves the pointer once always reads one complete version. A URL with
`zarr.json` at its root and no pointer is the previous layout (one store at the URL itself).

The manifest's `crc32c` of an object is the CRC-32C of its content (8 hex digits); a chunk ends
with the CRC-32C of the bytes before it (zarr's `crc32c` codec), so for a chunk it is the checksum
of those bytes, the value the chunk itself stores (the CRC-32C of a whole chunk is the same
constant for every chunk and says nothing).

This module owns the names and the reader's resolution; `shared.transfer` writes the layout and
`shared.chunk_cache` reads through it. Everything read here is untrusted: sizes are bounded
before reading, keys and fingerprints are validated.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from shared.remote import DEFAULT_TIMEOUT_S, filesystem, read_bounded, remote_options, retrying
from shared.store import StoreError

POINTER = "CURRENT.json"
POINTER_FORMAT = "nymeria-store-pointer/1"
VERSIONS = "versions"
MANIFEST = "MANIFEST.json"
MANIFEST_FORMAT = "nymeria-store-manifest/1"
ROOT_METADATA = "zarr.json"  # Zarr v3 metadata of the root group: the previous layout's mark

MAX_POINTER_BYTES = 64 * 1024
MAX_MANIFEST_BYTES = 256 * 1024 * 1024  # ~1.5 million objects; the 39 GB store has ~12,000
_FINGERPRINT = re.compile(r"[0-9a-f]{64}")  # sha256 hex digest (shared.store.compute_fingerprint)
_CRC32C = re.compile(r"[0-9a-f]{8}")


class LayoutError(StoreError):
    """Nothing usable is published at a URL, or its pointer or manifest is malformed."""


class NothingPublishedError(LayoutError):
    """A URL holds neither a pointer nor a store of the previous layout."""


@dataclass(frozen=True)
class Resolved:
    """What a URL publishes: the store to read and how it was found."""

    root_url: str  # the store itself: URL/versions/FP (versioned) or the URL (legacy)
    fingerprint: str | None  # from the pointer; None for the previous layout (read the store)
    layout: str  # "versioned" or "legacy"


@dataclass(frozen=True)
class ManifestEntry:
    size: int
    crc32c: str  # 8 lowercase hex digits (see the module docstring)


def version_prefix(fingerprint: str) -> str:
    """The key prefix (relative to the URL) of the version with this fingerprint."""
    return f"{VERSIONS}/{fingerprint}"


def is_fingerprint(value: object) -> bool:
    return isinstance(value, str) and _FINGERPRINT.fullmatch(value) is not None


def check_key(key: object, where: str) -> str:
    """`key` when it is a relative object key that stays below its root: no empty, `.` or `..`
    part, no leading `/`, no backslash, no control character; else `LayoutError`."""
    if not isinstance(key, str) or not key or len(key) > 1024:
        raise LayoutError(f"{where}: object key {key!r} is not a non-empty string")
    parts = key.split("/")
    if (
        "\\" in key
        or any(part in ("", ".", "..") for part in parts)
        or any(ord(c) < 32 for c in key)
    ):
        raise LayoutError(
            f"{where}: object key {key!r} is not a plain relative path (no `..`, `.`, empty "
            f"parts, leading `/` or backslash): refused"
        )
    return key


def pointer_document(fingerprint: str, published: str) -> dict[str, str]:
    """The pointer's content for a version (what `parse_pointer` accepts)."""
    return {
        "format": POINTER_FORMAT,
        "fingerprint": fingerprint,
        "version": version_prefix(fingerprint),
        "published": published,
    }


def parse_pointer(data: bytes, where: str) -> str:
    """The fingerprint a pointer names, after checking its format, fingerprint and version key."""
    try:
        pointer = json.loads(data)
    except (ValueError, RecursionError):
        raise LayoutError(f"{where} is not JSON: the pointer is damaged") from None
    if not isinstance(pointer, dict) or pointer.get("format") != POINTER_FORMAT:
        found = pointer.get("format") if isinstance(pointer, dict) else type(pointer).__name__
        raise LayoutError(f"{where}: format {found!r}, expected {POINTER_FORMAT!r}")
    fingerprint = pointer.get("fingerprint")
    if not is_fingerprint(fingerprint):
        raise LayoutError(f"{where}: fingerprint {fingerprint!r} is not a sha256 hex digest")
    if pointer.get("version") != version_prefix(fingerprint):
        raise LayoutError(
            f"{where}: version {pointer.get('version')!r} is not {version_prefix(fingerprint)!r}"
        )
    return fingerprint


def manifest_document(
    fingerprint: str, objects: dict[str, ManifestEntry], created: str
) -> dict[str, Any]:
    """The manifest's content (what `parse_manifest` accepts), keys sorted."""
    return {
        "format": MANIFEST_FORMAT,
        "fingerprint": fingerprint,
        "created": created,
        "objects": {
            key: {"size": e.size, "crc32c": e.crc32c} for key, e in sorted(objects.items())
        },
    }


def parse_manifest(data: bytes, fingerprint: str, where: str) -> dict[str, ManifestEntry]:
    """Every object of a version by key, after checking the manifest's format, fingerprint,
    keys, sizes and checksums."""
    try:
        manifest = json.loads(data)
    except (ValueError, RecursionError):
        raise LayoutError(f"{where} is not JSON: the manifest is damaged") from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise LayoutError(f"{where}: not a manifest of format {MANIFEST_FORMAT!r}")
    if manifest.get("fingerprint") != fingerprint:
        raise LayoutError(
            f"{where}: fingerprint {manifest.get('fingerprint')!r}, expected {fingerprint}"
        )
    objects = manifest.get("objects")
    if not isinstance(objects, dict):
        raise LayoutError(f"{where}: `objects` is not a JSON object")
    entries = {}
    for key, entry in objects.items():
        check_key(key, where)
        size = entry.get("size") if isinstance(entry, dict) else None
        crc = entry.get("crc32c") if isinstance(entry, dict) else None
        if (
            type(size) is not int
            or size < 0
            or not (isinstance(crc, str) and _CRC32C.fullmatch(crc))
        ):
            raise LayoutError(
                f"{where}: object {key!r} has {entry!r}, expected a size and 8 hex digits of crc32c"
            )
        entries[key] = ManifestEntry(size, crc)
    return entries


def _read_optional(fs: Any, path: str, limit: int, url: str) -> bytes | None:
    """Object `path` (`url` for humans), None when it does not exist; one bounded read."""
    try:
        return retrying(lambda: read_bounded(fs, path, limit), url)
    except FileNotFoundError:
        return None
    except ValueError:
        raise LayoutError(f"{url} is larger than {limit} bytes: refused") from None


def resolve(
    url: str, storage_options: dict | None = None, timeout: float = DEFAULT_TIMEOUT_S
) -> Resolved:
    """What `url` publishes: the version its pointer names (validated), else the previous
    layout's store at the URL itself, else `NothingPublishedError`.
    Reads the pointer once (and, without one, checks for the root `zarr.json`)."""
    url = url.rstrip("/")
    fs, root = filesystem(url, remote_options(url, storage_options, timeout), retried=True)
    root = root.rstrip("/")
    pointer = _read_optional(fs, f"{root}/{POINTER}", MAX_POINTER_BYTES, f"{url}/{POINTER}")
    if pointer is not None:
        fingerprint = parse_pointer(pointer, f"{url}/{POINTER}")
        return Resolved(f"{url}/{version_prefix(fingerprint)}", fingerprint, "versioned")
    if retrying(lambda: fs.exists(f"{root}/{ROOT_METADATA}"), f"{url}/{ROOT_METADATA}"):
        return Resolved(url, None, "legacy")
    raise NothingPublishedError(
        f"nothing is published at {url} (no {POINTER} and no {ROOT_METADATA}); publish a store "
        f"with `python -m preprocess push STORE {url}`"
    )


def read_manifest(
    url: str,
    fingerprint: str,
    storage_options: dict | None = None,
    timeout: float = DEFAULT_TIMEOUT_S,
) -> dict[str, ManifestEntry] | None:
    """The manifest of version `fingerprint` at `url` (the URL given to `resolve`, not the
    version's), or None while that version is unfinished (no manifest yet)."""
    url = url.rstrip("/")
    fs, root = filesystem(url, remote_options(url, storage_options, timeout), retried=True)
    where = f"{url}/{version_prefix(fingerprint)}/{MANIFEST}"
    path = f"{root.rstrip('/')}/{version_prefix(fingerprint)}/{MANIFEST}"
    data = _read_optional(fs, path, MAX_MANIFEST_BYTES, where)
    return None if data is None else parse_manifest(data, fingerprint, where)
