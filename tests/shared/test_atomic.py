"""shared.atomic: the target holds the old content or the whole new one, never a temp file left."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from shared.atomic import atomic_path, remove_dead_temp_files


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


def _dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    child = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(child.stdout)


def test_temp_files_of_dead_processes_are_removed_others_kept(tmp_path: Path) -> None:
    target = tmp_path / "last.pt"
    target.write_bytes(b"checkpoint")
    with atomic_path(target) as live:  # this process: alive, its name carries host and pid
        live.write_bytes(b"being written")
        host = live.name.split(".")[3]
        dead = _dead_pid()
        leftovers = [
            tmp_path / f".last.pt.{host}.{dead}.0123abcd.partial",
            tmp_path / f".last.pt.{dead}.89abcdef.partial",  # named before hosts were recorded
        ]
        os.link(target, leftovers[0])  # a hard link holding a whole old checkpoint
        leftovers[1].write_bytes(b"half")
        kept = [
            live,
            tmp_path / f".last.pt.other-host.{dead}.0123abcd.partial",  # a shared file system
            tmp_path / f".best.pt.{host}.{dead}.0123abcd.partial",  # another target
            tmp_path / f".last.pt.{host}.{dead}.notatoken.partial",  # not a temp name of ours
        ]
        for path in kept[1:]:
            path.write_bytes(b"x")
        assert sorted(remove_dead_temp_files(target)) == sorted(leftovers)
        assert all(path.exists() for path in kept)
    assert target.read_bytes() == b"being written"
    assert remove_dead_temp_files(tmp_path / "missing" / "last.pt") == []
