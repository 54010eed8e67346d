"""One build per store at a time: a lock file holding the owner's pid and host.

The lock is created with its content in place (a hard link to a filled temp file), so whoever
finds it can always tell who holds it.

A lock left by a dead process on this host is stale; the build takes it over only when asked
(`--resume`/`--overwrite`), logging that it did. A lock from a live process, or from another
host (whose processes we cannot see), is never taken over.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from pathlib import Path
from types import TracebackType
from typing import Self

from shared.atomic import temp_path_for
from shared.errors import UserError

logger = logging.getLogger(__name__)


class LockError(UserError, RuntimeError):
    """The lock is held (or stale and not to be taken over); the message says what to do."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class BuildLock:
    """Context manager around `path` (the lock file)."""

    def __init__(self, path: Path, take_over_stale: bool) -> None:
        self.path = Path(path)
        self.take_over_stale = take_over_stale
        self.owner = {"pid": os.getpid(), "host": socket.gethostname()}

    def _content(self) -> str:
        return json.dumps(
            {**self.owner, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}, sort_keys=True
        )

    def _try_create(self) -> bool:
        # Write the owner to a temp file, then hard-link it to the lock name: the lock appears
        # with its content in one step (creating it empty and filling it afterwards would let a
        # concurrent build read no owner), and the link fails if the lock exists.
        tmp = temp_path_for(self.path)
        fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        try:
            with os.fdopen(fd, "w") as handle:
                handle.write(self._content())
            os.link(tmp, self.path)
        except FileExistsError:
            return False
        finally:
            tmp.unlink(missing_ok=True)
        return True

    def _read(self) -> tuple[str | None, dict]:
        """(text, holder) of the lock; text is None when there is no lock."""
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return None, {}
        try:
            holder = json.loads(text)
        except json.JSONDecodeError:
            holder = {}
        return text, holder if isinstance(holder, dict) else {}

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            if self._try_create():
                return
            text, holder = self._read()
            if text is None:
                continue  # released between our two calls
            pid, host = holder.get("pid"), holder.get("host")
            described = f"pid {pid} on host {host!r} (since {holder.get('started')})"
            if host != self.owner["host"] or not isinstance(pid, int) or _pid_alive(pid):
                raise LockError(
                    f"another build holds the lock {self.path}: {described}. Wait for it to "
                    f"finish; if you are sure it is gone, delete {self.path}"
                )
            if not self.take_over_stale:
                raise LockError(
                    f"a previous build ({described}) died and left the lock {self.path}; pass "
                    f"--resume to take it over and continue that build (or --overwrite to start "
                    f"over)"
                )
            # Move the stale lock aside atomically, then check it was the one we judged stale.
            aside = self.path.with_name(f"{self.path.name}.stale-{os.getpid()}")
            try:
                os.rename(self.path, aside)
            except FileNotFoundError:
                continue
            if aside.read_text() != text:  # someone else's fresh lock: put it back
                os.rename(aside, self.path)
                continue
            aside.unlink()
            logger.warning("took over the stale lock %s of dead build %s", self.path, described)
        raise LockError(f"could not acquire the lock {self.path}: it keeps changing owner")

    def release(self) -> None:
        _, holder = self._read()
        if holder.get("pid") == self.owner["pid"] and holder.get("host") == self.owner["host"]:
            self.path.unlink()

    def __enter__(self) -> Self:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()
