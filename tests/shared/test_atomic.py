"""shared.atomic: the target holds the old content or the whole new one, never a temp file left."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.atomic import atomic_path


def test_success_replaces_the_target_and_leaves_only_it(tmp_path: Path) -> None:
    target = tmp_path / "result.clip"
    target.write_bytes(b"old")
    with atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and not tmp.exists()  # exclusive-create writers work
        assert tmp.name.startswith(".") and not tmp.name.endswith(".clip")  # globs skip it
        tmp.write_bytes(b"new")
        assert target.read_bytes() == b"old"  # readers see the old content until the end
    assert target.read_bytes() == b"new"
    assert list(tmp_path.iterdir()) == [target]


def test_failure_keeps_the_old_content_and_removes_the_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "last.pt"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="disk on fire"), atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("disk on fire")
    assert target.read_bytes() == b"old"
    assert list(tmp_path.iterdir()) == [target]


def test_nothing_written_is_an_error_naming_the_target(tmp_path: Path) -> None:
    target = tmp_path / "clip.h5"
    with (
        pytest.raises(FileNotFoundError, match=r"nothing was written to .* \(the temp file for "),
        atomic_path(target),
    ):
        pass
    assert list(tmp_path.iterdir()) == []


def test_concurrent_writers_get_distinct_temp_files(tmp_path: Path) -> None:
    target = tmp_path / "clip.h5"
    with atomic_path(target) as first, atomic_path(target) as second:
        assert first != second
        first.write_bytes(b"first")
        second.write_bytes(b"second")
    assert target.read_bytes() == b"first"  # the outer block finishes last
    assert list(tmp_path.iterdir()) == [target]
