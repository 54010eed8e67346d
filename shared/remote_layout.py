"""How a shared store is laid out at a URL: immutable versions and a pointer (issue 19).

    URL/CURRENT.json                 the pointer: {"format": POINTER_FORMAT, "fingerprint": FP,
                                     "version": "versions/FP", "published": ISO time}
    URL/versions/FP/                 one immutable store, exactly as built (zarr.json, arrays...)
    URL/versions/FP/MANIFEST.json    every object of that version: key -> size and crc32c

A push writes `versions/FP/` (objects, then MANIFEST.json last) and only then replaces the
pointer, so a reader who resolves the pointer once always reads one complete version. A URL with
`zarr.json` at its root and no pointer is the previous layout (one store at the URL itself).

This module owns the names and the reader's resolution; `shared.transfer` writes the layout and
`shared.chunk_cache` reads through it.
"""

from __future__ import annotations

POINTER = "CURRENT.json"
POINTER_FORMAT = "nymeria-store-pointer/1"
VERSIONS = "versions"
MANIFEST = "MANIFEST.json"


def version_prefix(fingerprint: str) -> str:
    """The key prefix (relative to the URL) of the version with this fingerprint."""
    return f"{VERSIONS}/{fingerprint}"
