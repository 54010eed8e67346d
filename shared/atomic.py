"""Atomic file writes: readers (and a resumed run) see the old file or the whole new one.

The one place that knows the recipe: write to a temp name in the same directory (so the rename
never crosses a file system), fsync it (so a power cut cannot leave a renamed but empty file),
then `os.replace` it over the target. On any error, or an interrupt, the temp file is removed.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

logger = logging.getLogger(__name__)

TEMP_SUFFIX = ".partial"
# What follows `.{name}.` in a temp name: host (absent in names from before hosts were
# recorded), pid, token. A host name keeps only [A-Za-z0-9-] so that it holds no dot.
_TEMP_OWNER = re.compile(r"(?:(?P<host>[A-Za-z0-9-]+)\.)?(?P<pid>\d+)\.[0-9a-f]{8}")


def _host_label() -> str:
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname()) or "host"


def temp_path_for(path: Path) -> Path:
    """A fresh, hidden temp name next to `path`: `.{name}.{host}.{pid}.{token}.partial`.

    Hidden and without `path`'s suffix, so globs such as `*.h5` or `*.clip` never pick up a
    half-written file; host, pid and a random token keep concurrent writers apart and let
    `remove_dead_temp_files` tell a dead writer's leftovers from a live writer's file.
    """
    path = Path(path)
    token = uuid.uuid4().hex[:8]
    return path.with_name(f".{path.name}.{_host_label()}.{os.getpid()}.{token}{TEMP_SUFFIX}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def remove_dead_temp_files(path: Path) -> list[Path]:
    """Remove the temp files of `path` that processes of this host which are no longer running
    left behind (a kill during a write); returns them.

    A temp file can be a hard link to a complete old file (`os.link` then rename), so leftovers
    can cost a whole file each. Files of live processes, and of other hosts (a shared file
    system), are kept; a name without a host (older code) counts as this host's.
    """
    path = Path(path)
    prefix, host, removed = f".{path.name}.", _host_label(), []
    try:
        candidates = list(path.parent.iterdir())
    except FileNotFoundError:
        return []
    for candidate in candidates:
        name = candidate.name
        if not (name.startswith(prefix) and name.endswith(TEMP_SUFFIX)):
            continue
        owner = _TEMP_OWNER.fullmatch(name[len(prefix) : -len(TEMP_SUFFIX)])
        if owner is None or owner["host"] not in (None, host) or _pid_alive(int(owner["pid"])):
            continue
        candidate.unlink(missing_ok=True)
        removed.append(candidate)
    if removed:
        logger.info("removed %d temp files of %s left by dead processes", len(removed), path)
    return removed


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temp path to write `path`'s new content to; it replaces `path` on success.

    The temp file does not exist yet (so exclusive-create writers such as `h5py.File(p, "x")`
    work) and gets the caller's usual permissions (umask applies). The parent directory must
    exist. The caller must have closed the file when the block ends.
    """
    path = Path(path)
    tmp = temp_path_for(path)
    try:
        yield tmp
        if not tmp.is_file():
            raise FileNotFoundError(f"nothing was written to {tmp} (the temp file for {path})")
        _fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def exclusive_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive flock on `path` (created if missing): a new open file each time, so
    threads of one process exclude each other too, as do processes and DDP ranks of a node."""
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
