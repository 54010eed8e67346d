"""The versioned layout's untrusted inputs: object keys, the pointer and the manifest are
validated before anything is read or written through them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shared.remote_layout import (
    POINTER,
    LayoutError,
    ManifestEntry,
    check_key,
    manifest_document,
    parse_manifest,
    parse_pointer,
    pointer_document,
    read_manifest,
    resolve,
    version_prefix,
)

FP = "0123456789abcdef" * 4


@pytest.mark.parametrize(
    "key",
    ["../x", "a/../../x", "/etc/passwd", "a\\..\\x", "a//b", "./a", "a/", "", "a/\x00b", 7],
)
def test_keys_that_leave_their_root_are_refused(key):
    with pytest.raises(LayoutError, match="refused|not a non-empty string"):
        check_key(key, "manifest")


def test_plain_keys_pass():
    for key in ("zarr.json", "features/c/12/0", "stats/mean/c/0"):
        assert check_key(key, "manifest") == key


def test_pointer_round_trip_and_tampering():
    pointer = pointer_document(FP, "2026-01-01T00:00:00+00:00")
    assert parse_pointer(json.dumps(pointer).encode(), "p") == FP
    changes = [
        {"version": "versions/../../etc"},
        {"version": f"/{version_prefix(FP)}"},
        {"fingerprint": "../x"},
        {"fingerprint": FP.upper()},
        {"format": "other/1"},
    ]
    for change in changes:
        with pytest.raises(LayoutError):
            parse_pointer(json.dumps({**pointer, **change}).encode(), "p")
    for garbage in (b"", b"[1]", b"\xff\xfe", b"[" * 100_000):
        with pytest.raises(LayoutError):
            parse_pointer(garbage, "p")


def test_manifest_round_trip_and_tampering():
    objects = {
        "zarr.json": ManifestEntry(10, "0a0b0c0d"),
        "features/c/0/0": ManifestEntry(8, "ffffffff"),
    }
    document = manifest_document(FP, objects, "now")
    assert parse_manifest(json.dumps(document).encode(), FP, "m") == objects
    with pytest.raises(LayoutError, match="fingerprint"):
        parse_manifest(json.dumps(document).encode(), "f" * 64, "m")
    for key, entry in (
        ("../../x", {"size": 1, "crc32c": "00000000"}),
        ("zarr.json", {"size": -1, "crc32c": "00000000"}),
        ("zarr.json", {"size": 1.5, "crc32c": "00000000"}),
        ("zarr.json", {"size": 1, "crc32c": "xyz"}),
    ):
        bad = {**document, "objects": {**document["objects"], key: entry}}
        with pytest.raises(LayoutError):
            parse_manifest(json.dumps(bad).encode(), FP, "m")


def test_resolve_reads_the_pointer_the_previous_layout_or_says_nothing_is_there(tmp_path: Path):
    with pytest.raises(LayoutError, match="nothing is published"):
        resolve(str(tmp_path))
    (tmp_path / "zarr.json").write_text("{}")
    assert resolve(str(tmp_path)).layout == "legacy"
    (tmp_path / POINTER).write_text(json.dumps(pointer_document(FP, "now")))
    resolved = resolve(str(tmp_path))
    assert (resolved.layout, resolved.fingerprint) == ("versioned", FP)
    assert resolved.root_url == f"{tmp_path}/{version_prefix(FP)}"
    assert read_manifest(str(tmp_path), FP) is None  # an unfinished version
    (tmp_path / POINTER).write_bytes(b" " * (1 << 20))  # larger than any pointer
    with pytest.raises(LayoutError, match="larger than"):
        resolve(str(tmp_path))
