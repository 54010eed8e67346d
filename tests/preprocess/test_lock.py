"""BuildLock: whoever finds the lock can tell who holds it, even right as it is being taken."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from preprocess.lock import BuildLock, LockError


def test_lock_being_taken_is_never_seen_without_its_owner(tmp_path: Path) -> None:
    """A second build trying the lock while the first is writing its owner record must either
    get the lock or be told who holds it (creating the lock empty and filling it afterwards made
    it fail with "keeps changing owner")."""
    path = tmp_path / "store.zarr.lock"
    contender = BuildLock(path, take_over_stale=True)
    contender_outcome = []

    class InterruptedWhileWriting(BuildLock):
        def _content(self) -> str:
            try:
                contender.acquire()
                contender_outcome.append("acquired")
            except LockError as error:
                contender_outcome.append(str(error))
            return super()._content()

    host = socket.gethostname()
    with pytest.raises(LockError) as refused:
        InterruptedWhileWriting(path, take_over_stale=True).acquire()
    assert f"another build holds the lock {path}: pid {os.getpid()} on host {host!r}" in str(
        refused.value
    )
    # The lock did not exist yet while its owner was being written, so the contender took it.
    assert contender_outcome == ["acquired"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no temp file left
    contender.release()
    assert not path.exists()


def test_empty_lock_is_reported_as_held_not_as_changing_owner(tmp_path: Path) -> None:
    path = tmp_path / "store.zarr.lock"
    path.touch()
    with pytest.raises(LockError, match=f"another build holds the lock {path}: pid None"):
        BuildLock(path, take_over_stale=True).acquire()
    assert path.exists()


def test_lock_holds_owner_and_is_released(tmp_path: Path) -> None:
    path = tmp_path / "store.zarr.lock"
    with BuildLock(path, take_over_stale=False) as lock:
        assert f'"pid": {os.getpid()}' in path.read_text()
        with pytest.raises(LockError, match=f"pid {os.getpid()} on host"):
            BuildLock(path, take_over_stale=True).acquire()
        assert lock.path == path
    assert list(tmp_path.iterdir()) == []
