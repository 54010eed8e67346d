"""Atomic file writes: readers (and a resumed run) see the old file or the whole new one.

The one place that knows the recipe: write to a temp name in the same directory (so the rename
never crosses a file system), fsync it (so a power cut cannot leave a renamed but empty file),
then `os.replace` it over the target. On any error, or an interrupt, the temp file is removed.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

TEMP_SUFFIX = ".partial"


def temp_path_for(path: Path) -> Path:
    """A fresh, hidden temp name next to `path`.

    Hidden and without `path`'s suffix, so globs such as `*.h5` or `*.clip` never pick up a
    half-written file; pid and a random token keep concurrent writers apart.
    """
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}{TEMP_SUFFIX}")


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
