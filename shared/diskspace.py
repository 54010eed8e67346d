"""Disk full, said once and clearly: which path, how much space the write needs, how much is free.

A write that runs out of space fails deep inside a library (zarr's store, torch's zip writer,
h5py) with `Errno 28` and no path, or, under a file size limit (`ulimit -f`), with `Errno 27`
(EFBIG). `disk_full_error` recognises both (also when a library wrapped the `OSError` in its
own exception, as torch does) and turns them into one `DiskFullError` whose message names the
path being written, roughly how much free space the operation needs, and what is free now.
The callers (build, checkpoint, latent export) decide what "needed" is and what to do next.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

from shared.errors import UserError

DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EFBIG, errno.EDQUOT})


class DiskFullError(UserError, OSError):
    """A write failed for lack of space (or a file size limit); the message is one line."""

    def __init__(self, message: str, path: Path) -> None:
        super().__init__(errno.ENOSPC, message)
        self.message = message
        self.path = Path(path)

    def __str__(self) -> str:
        return self.message


def format_bytes(count: float) -> str:
    """`1.2 GB`-style (powers of 1000, as `df -H` and disk vendors count)."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(count) < 1000 or unit == "TB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1000
    raise AssertionError("unreachable")


def free_bytes(path: Path) -> int | None:
    """Free bytes on the file system holding `path` (or its nearest existing parent)."""
    path = Path(path).absolute()
    for candidate in (path, *path.parents):
        try:
            return shutil.disk_usage(candidate).free
        except OSError:
            continue
    return None


def disk_full_cause(error: BaseException) -> OSError | None:
    """The disk-full `OSError` behind `error` (itself, or in its cause/context chain)."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in DISK_FULL_ERRNOS:
            return current
        current = current.__cause__ or current.__context__
    return None


def disk_full_error(
    error: BaseException, path: Path, needed_bytes: int | None, what: str, advice: str = ""
) -> DiskFullError | None:
    """A `DiskFullError` for `error` if it is a disk-full error, else None.

    `path`: what was being written (a file or the directory being filled); `needed_bytes`:
    roughly how much free space the whole operation needs there; `what`: the operation, e.g.
    "writing the feature store"; `advice`: what to do once space is freed.
    """
    cause = disk_full_cause(error)
    if cause is None:
        return None
    if isinstance(error, DiskFullError):
        return error
    where = Path(cause.filename) if cause.filename else Path(path)
    reason = (
        "the file size limit (`ulimit -f`) was reached"
        if cause.errno == errno.EFBIG
        else os.strerror(cause.errno).lower()
    )
    free = free_bytes(path)
    needs = f"needs about {format_bytes(needed_bytes)} free" if needed_bytes is not None else ""
    has = f"{format_bytes(free)} free now" if free is not None else ""
    space = "; ".join(part for part in (needs, has) if part)
    message = f"{what}: {reason} writing {where} ({space} on the file system of {path})"
    return DiskFullError(message + (f"; {advice}" if advice else ""), Path(path))
